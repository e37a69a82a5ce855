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
    with pytest.raises(PrunekitError, match=r"unknown config key .optim.lrate.; valid keys here: gamma, lr"):
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
    # configs/compare holds comparison grids, a schema of their own (prunekit.compare.config;
    # tests/compare/test_harness.py)


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


# ------------------------------------------------------------------------------------ typed schema (pydantic)
@pytest.mark.parametrize("override, message", [
    ("train.epochs=true", r"train.epochs must be an integer in \[0, 100000\], got True"),
    ("train.batch_size=1.0", r"train.batch_size must be an integer in \[1, 65536\], got 1.0"),
    ("optim.lr='0.1'", r"optim.lr must be a number in \(0, 10\], got '0.1'"),
    ("optim.nesterov=1", r"optim.nesterov must be true or false, got 1"),
    ("optim.lr=.inf", r"optim.lr must be a number in \(0, 10\], got inf"),
    ("optim.weight_decay=.nan", r"optim.weight_decay must be a number in \[0, 1\], got nan"),
    ("seed=false", r"seed must be an integer in \[0, 2\*\*63\)"),
])
def test_strict_types_no_bool_for_int_finite_numbers(override, message):
    with pytest.raises(PrunekitError, match=message):
        config.load_config(None, [override])


@pytest.mark.parametrize("overrides, message", [
    (["train.epochs=1000000000"], r"train.epochs must be an integer in \[0, 100000\], got 1000000000"),
    (["train.batch_size=1000000000"], r"train.batch_size must be an integer in \[1, 65536\]"),
    (["optim.lr=1e308"], r"optim.lr must be a number in \(0, 10\], got 1e\+308"),
    (["model.kwargs.num_classes=100000000"], r"num_classes must be an integer in \[1, 100000\]"),
    (["model.kwargs.input_size=100000"], r"input_size must be an integer in \[1, 4096\]"),
    (["method.name=trimming", "method.iterations=1000000000"], r"method.iterations: 1000000000 is out of range"),
    (["method.name=sss", "method.gamma_channel=1e308"], r"method.gamma_channel: 1e\+308 must be a finite number"),
    (["method.name=sght", "method.finetune_lr=1e308"], r"method.finetune_lr: 1e\+308 must be a finite number of at "
                                                       r"most 10"),
])
def test_upper_bounds(overrides, message):
    """#19.11: a typo such as 10**9 iterations or lr 1e308 fails here, not after gigabytes or at step 1."""
    with pytest.raises(PrunekitError, match=message):
        config.load_config(None, overrides)


def test_cross_field_rules():
    with pytest.raises(PrunekitError, match="method options keep given but method.name is none"):
        config.load_config(None, ["method.keep=0.1"])
    with pytest.raises(PrunekitError, match=r"data.subset=1 is smaller than one batch \(train.batch_size=128\)"):
        config.load_config(None, ["data.subset=1"])
    assert config.load_config(None, ["data.subset=128"])["data"]["subset"] == 128


def test_several_mistakes_make_one_line():
    with pytest.raises(PrunekitError) as exc:
        config.load_config(None, ["optim.lr=-1", "train.epochs=x", "seed=-3", "optim.gamma=7", "data.subset=-1"])
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith("config: ") and "(and 2 more)" in msg, msg


def test_engine_fields_are_config_keys_and_reach_the_engine():
    """train / optim are derived from TrainerConfig / OptimConfig: no field is copied by hand, none dropped."""
    import dataclasses

    from prunekit.engine import OptimConfig, TrainerConfig

    assert set(config.DEFAULTS["train"]) == {f.name for f in dataclasses.fields(TrainerConfig)} - {"seed"} | {"epochs"}
    assert set(config.DEFAULTS["optim"]) == {f.name for f in dataclasses.fields(OptimConfig)}
    cfg = config.load_config(None, ["seed=7", "train.batch_size=33", "train.eval_batch_size=44",
                                    "train.checkpoint_every_steps=5", "train.eval_every=3", "train.quiet=true",
                                    "train.max_steps_per_epoch=9", "train.amp=off", "train.channels_last=on",
                                    "train.device=cpu", "optim.lr=0.2", "optim.warmup_epochs=1.5"])
    tc, oc = config.trainer_config(cfg), config.optim_config(cfg)
    assert dataclasses.asdict(tc) == {**{k: cfg["train"][k] for k in dataclasses.asdict(tc) if k != "seed"},
                                      "seed": 7}
    assert tc.batch_size == 33 and tc.max_steps_per_epoch == 9 and tc.amp == "off" and tc.channels_last == "on"
    assert dataclasses.asdict(oc) == cfg["optim"]

    @dataclasses.dataclass
    class Newer(TrainerConfig):
        grad_clip: float = 0.0  # a field the engine gains later: a typed config key at once

    section = config.section_from(Newer, "T", {}, skip=("seed",))
    assert section(grad_clip=1.5).grad_clip == 1.5
    with pytest.raises(Exception, match="grad_clip"):
        section(grad_clip="x")


def test_method_options_are_still_checked_by_the_method():
    with pytest.raises(PrunekitError, match="method 'sght' has no option 'kep'; valid options"):
        config.load_config(None, ["method.name=sght", "method.kep=0.5"])
    with pytest.raises(PrunekitError, match="nu"):
        config.load_config(None, ["method.name=sght", "method.nu=2.0"])


def test_schema_command_prints_json_schemas(capsys):
    import json

    from prunekit import cli, methods

    assert cli.main(["schema"]) == 0
    exp = json.loads(capsys.readouterr().out)
    assert set(exp["properties"]) == set(config.DEFAULTS)
    assert exp["additionalProperties"] is False
    train = exp["$defs"]["TrainSection"]
    assert train["properties"]["batch_size"]["maximum"] == 65536 and train["additionalProperties"] is False
    variants = {v["properties"]["name"]["const"]: v for v in exp["$defs"]["MethodSection"]["oneOf"]}
    assert set(variants) == {"none", *methods.names()}
    for name in methods.names():
        assert set(variants[name]["properties"]) == {"name", *methods.get(name).config_keys()}, name
    assert cli.main(["schema", "compare"]) == 0
    cmp = json.loads(capsys.readouterr().out)
    assert cmp["properties"]["latency_batch"]["maximum"] == 4096
    assert "train" in cmp["$defs"]["ExperimentBase"]["properties"]
    assert "method" not in cmp["$defs"]["ExperimentBase"]["properties"]
