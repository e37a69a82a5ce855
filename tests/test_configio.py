"""The one YAML + ``--set`` loader: bounded work on hostile files, duplicate keys, short error messages."""

from __future__ import annotations

import subprocess
import sys

import pytest

from prunekit import configio
from prunekit.errors import PrunekitError


def _bomb(levels: int = 9) -> str:
    """A "billion laughs" document: each level lists the previous one nine times (9**levels leaves)."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels):
        refs = ", ".join([f"*a{i - 1}"] * 9)
        lines.append(f"a{i}: &a{i} [{refs}]")
    lines.append(f"method: {{name: iht, keep: *a{levels - 1}}}")
    return "\n".join(lines) + "\n"


def test_alias_bomb_is_refused_before_it_is_built(tmp_path):
    p = tmp_path / "bomb.yaml"
    p.write_text(_bomb())
    assert p.stat().st_size < 1000
    with pytest.raises(PrunekitError, match="more than 100,000 values once its aliases are expanded") as exc:
        configio.read_yaml(p)
    assert len(str(exc.value)) < 300


def test_alias_bomb_through_the_cli_is_one_short_line(tmp_path):
    p = tmp_path / "bomb.yaml"
    p.write_text(_bomb())
    for argv in (["prune", str(p)], ["compare", str(p)]):
        r = subprocess.run([sys.executable, "-m", "prunekit.cli", *argv], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 2, r.stderr
        assert r.stderr.count("\n") == 1 and len(r.stderr) < 400, r.stderr
        assert "aliases are expanded" in r.stderr


def test_small_aliases_are_fine():
    assert configio.parse_yaml("a: &x [1, 2]\nb: *x\n") == {"a": [1, 2], "b": [1, 2]}
    base = "d: &d {lr: 0.1, momentum: 0.9}\noptim:\n  <<: *d\n  lr: 0.05\n"
    assert configio.parse_yaml(base)["optim"] == {"lr": 0.05, "momentum": 0.9}


def test_recursive_alias_is_refused():
    with pytest.raises(configio.YamlLimitError, match="recursive"):
        configio.parse_yaml("a: &a [1, *a]\n")


@pytest.mark.parametrize("opener, closer", [("[", "]"), ("{a: ", "}")])
def test_deep_nesting_is_one_line_not_a_recursion_error(tmp_path, opener, closer):
    p = tmp_path / "deep.yaml"
    p.write_text("x: " + opener * 100_000 + closer * 100_000 + "\n")
    with pytest.raises(PrunekitError, match="nesting deeper than 32 levels"):
        configio.read_yaml(p)
    r = subprocess.run([sys.executable, "-m", "prunekit.cli", "train", str(p)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr[:2000]


def test_duplicate_keys_are_refused(tmp_path):
    p = tmp_path / "dup.yaml"
    p.write_text("optim:\n  lr: 0.1\n  lr: 0.5\n")
    with pytest.raises(PrunekitError, match=r"not valid YAML at line 3 \(duplicate key 'lr'"):
        configio.read_yaml(p)
    p.write_text("seed: 1\nseed: 2\n")
    with pytest.raises(PrunekitError, match="duplicate key 'seed'"):
        configio.read_yaml(p)


def test_document_size_is_bounded(tmp_path):
    p = tmp_path / "big.yaml"
    p.write_text("seed: 0\n" + "#" * configio.MAX_BYTES + "\n")
    with pytest.raises(PrunekitError, match="at most 1,048,576"):
        configio.read_yaml(p)
    with pytest.raises(PrunekitError, match="longer than"):
        configio.apply_override({}, "seed=" + "1" * 20_000)


def test_a_huge_value_is_never_formatted_into_a_message(tmp_path):
    from prunekit import config

    huge = "x" * 500_000
    with pytest.raises(PrunekitError) as exc:
        config.load_config(None, [f"optim.lr={huge}"])
    assert len(str(exc.value)) < 400 and "..." in str(exc.value)
    p = tmp_path / "c.yaml"
    p.write_text("optim: {lr: [" + ", ".join(["1"] * 50_000) + "]}\n")
    with pytest.raises(PrunekitError) as exc:
        config.load_config(p)
    assert len(str(exc.value)) < 400


def test_short_is_bounded():
    assert len(configio.short(list(range(10**6)))) < 100
    assert len(configio.short({"a": {"b": {"c": {"d": [1] * 1000}}}})) < 100
    assert len(configio.short("y" * 10**6)) < 100


def test_overrides_create_sections_and_refuse_paths_through_values():
    tree: dict = {"optim": {"lr": 0.1}}
    configio.apply_override(tree, "base.train.batch_size=64")
    configio.apply_override(tree, "optim.milestones=[30, 60]")
    assert tree == {"optim": {"lr": 0.1, "milestones": [30, 60]}, "base": {"train": {"batch_size": 64}}}
    with pytest.raises(PrunekitError, match="'optim.lr' is 0.1, not a section"):
        configio.apply_override(tree, "optim.lr.x=1")
    with pytest.raises(PrunekitError, match="key=value"):
        configio.apply_override(tree, "optim.lr")
    assert configio.parse_value("5e-4") == 5e-4 and configio.parse_value("'x") == "'x"


def test_one_loader_for_both_configs():
    """compare reads its files through the same loader (no private config helpers)."""
    import inspect

    from prunekit.compare import config as compare_config

    src = inspect.getsource(compare_config)
    assert "pconfig._" not in src and "configio.read_yaml" in src
