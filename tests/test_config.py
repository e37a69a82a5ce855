"""Experiment configs: defaults, overrides, strict validation, and the shipped recipes."""

from __future__ import annotations

from pathlib import Path

import pytest

from prunekit import config
from prunekit.errors import PrunekitError

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_and_overrides():
    cfg = config.load_config(None, ["optim.lr=0.05", "optim.milestones=[30, 60]", "model.kwargs.width=2",
                                    "train.quiet=true"])
    assert cfg["optim"]["lr"] == 0.05
    assert cfg["optim"]["milestones"] == [30, 60]
    assert cfg["model"]["kwargs"] == {"width": 2}
    assert cfg["train"]["quiet"] is True


def test_unknown_key_lists_valid_keys(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("optim:\n  lrate: 0.1\n")
    with pytest.raises(PrunekitError, match=r"unknown config key 'optim.lrate'.*lr.*momentum"):
        config.load_config(p)
    with pytest.raises(PrunekitError, match="unknown key 'lrate'.*valid keys"):
        config.load_config(None, ["optim.lrate=0.1"])
    with pytest.raises(PrunekitError, match="key=value"):
        config.load_config(None, ["optim.lr"])


def test_bad_yaml_and_types(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("optim: [1, 2\n")
    with pytest.raises(PrunekitError, match="not valid YAML at line"):
        config.load_config(p)
    p.write_text("- a list\n")
    with pytest.raises(PrunekitError, match="mapping"):
        config.load_config(p)
    with pytest.raises(PrunekitError, match="optim.lr"):
        config.load_config(None, ["optim.lr=-1"])
    with pytest.raises(PrunekitError, match="schedule"):
        config.load_config(None, ["optim.schedule=warp"])
    with pytest.raises(PrunekitError, match="not found"):
        config.load_config(tmp_path / "missing.yaml")


def test_unknown_method_rejected():
    with pytest.raises(PrunekitError, match="unknown method 'nope'.*iht"):
        config.load_config(None, ["method.name=nope"])


def test_every_shipped_recipe_validates():
    recipes = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if p.parent.name != "compare")
    assert len(recipes) >= 20
    for path in recipes:
        config.load_config(path)
    # configs/compare holds comparison grids, a schema of their own (checked in test_compare.py)


def test_exponent_floats_without_a_dot():
    cfg = config.load_config(None, ["optim.weight_decay=5e-4", "optim.lr=1e-1"])
    assert cfg["optim"]["weight_decay"] == 5e-4 and cfg["optim"]["lr"] == 0.1


def test_yaml_never_builds_python_objects(tmp_path):
    p = tmp_path / "evil.yaml"
    p.write_text("seed: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(PrunekitError, match="YAML"):
        config.load_config(p)


@pytest.mark.parametrize("name, option", [
    ("tp-bnscale", {"reg": float("nan")}), ("sght", {"finetune_lr": float("inf")}),
    ("l1-filter", {"finetune_lr": float("inf")}), ("tp-magnitude", {"finetune_lr": float("inf")}),
    ("iht", {"keep": float("nan")}), ("slimming", {"finetune_lr": float("inf")})])
def test_non_finite_method_options_are_rejected(name, option):
    from prunekit.methods import get

    with pytest.raises(PrunekitError, match=next(iter(option))):
        get(name)(option)
