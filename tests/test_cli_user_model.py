"""`prunekit prune CONFIG --model package.module:factory`: a HF transformers classifier (returning a ModelOutput)
trained and pruned from the command line, unwrapped; the saved file reloads into a fresh instance (and
`prunekit eval --model`) as the pruned network; a bad factory is one line, exit 2."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from prunekit import cli, io

pytest.importorskip("transformers")

MODULE = "prunekit_test_hf_net"
SOURCE = '''
import transformers

def build():
    return transformers.ResNetForImageClassification(transformers.ResNetConfig(
        num_channels=1, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=10))
'''
CONFIG = """seed: 0
data: {name: digits, subset: 256, test_subset: 64}
train: {epochs: 2, batch_size: 64, max_steps_per_epoch: 2, quiet: true}
optim: {lr: 0.05}
method: {name: sght, keep_ratio: 0.5, hybrid_batch: false}
"""


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    (tmp_path / f"{MODULE}.py").write_text(SOURCE)
    (tmp_path / "run.yaml").write_text(CONFIG)
    monkeypatch.chdir(tmp_path)  # the factory's module is found in the current folder, as `python -m` does
    yield tmp_path
    sys.modules.pop(MODULE, None)


def test_prune_a_hf_classifier_given_by_its_factory_and_reload_it(user_module: Path, capsys) -> None:
    out = user_module / "out"
    spec = f"{MODULE}:build"
    assert cli.main(["prune", "run.yaml", "--model", spec, "--out", str(out)]) == 0
    figs = json.loads((out / "report.json").read_text())["figures"]
    build = sys.modules[MODULE].build
    dense = sum(p.numel() for p in build().parameters())
    assert figs["model"] == spec and figs["params"] < dense  # smaller: SGHT's zero filters removed for real
    small = io.load(out / "model.safetensors", model=build())  # the pruned shapes rebuilt on a fresh instance
    assert type(small).__name__ == "ResNetForImageClassification"
    assert sum(p.numel() for p in small.parameters()) == figs["params"]
    with torch.no_grad():
        assert small.eval()(torch.zeros(2, 1, 8, 8)).logits.shape == (2, 10)
    capsys.readouterr()
    assert cli.main(["eval", str(out / "model.safetensors"), "--data", "digits", "--model", spec]) == 0
    assert "top-1" in capsys.readouterr().out


def test_a_bad_factory_is_one_line_and_exit_2(user_module: Path, capsys) -> None:
    assert cli.main(["prune", "run.yaml", "--model", f"{MODULE}:nope", "--out", "o"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"prunekit: error: --model {MODULE}:nope: {MODULE} has no callable 'nope'"]
    assert not (user_module / "o").exists()  # refused before anything was written
