"""Adding a method touches its own file and one registry line: the toy method of docs/CONTRIBUTING.md,
registered here, runs through the Trainer, the experiment config check and compare's planner."""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from prunekit import compare, config, data, methods, metrics, models
from prunekit.engine import OptimConfig, Trainer, TrainerConfig, seed_everything
from prunekit.errors import PrunekitError

DOC = Path(__file__).resolve().parents[2] / "docs" / "CONTRIBUTING.md"


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[type]:
    """The CONTRIBUTING.md toy method: its file written out verbatim, imported, and registered by name."""
    code = re.search(r"```python\n(# src/prunekit/methods/peers/l2_once\.py\n.*?)```", DOC.read_text(), re.S)
    assert code is not None
    folder = tmp_path_factory.mktemp("toy")
    (folder / "l2_once_toy.py").write_text(code.group(1))
    sys.path.insert(0, str(folder))
    try:
        cls = methods.register(importlib.import_module("l2_once_toy").L2Once)
        yield cls
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop("l2_once_toy", None)
        methods.unregister(cls.name)


def test_the_toy_method_trains_and_prunes_through_the_trainer(toy):
    train = data.load("synthetic", "train", n=64, shape=(1, 8, 8), num_classes=4, seed=0)
    test = data.load("synthetic", "test", n=32, shape=(1, 8, 8), num_classes=4, seed=0)
    seed_everything(0)
    model = models.create("lenet5", in_channels=1, num_classes=4, input_size=8)
    method = methods.get("l2-once")(macs_budget=0.5)
    assert isinstance(method, toy) and "l2-once" in methods.names()
    tr = Trainer(model, train, test, optim=OptimConfig(lr=0.05), config=TrainerConfig(batch_size=32, quiet=True),
                 callbacks=[method])
    tr.fit(method.stages(2))
    dense = metrics.count(tr.raw_model, tr.example_inputs)
    result = method.finalize(tr.raw_model, tr.example_inputs)
    after = metrics.count(result.model, tr.example_inputs)
    assert 0.45 <= after.macs / dense.macs <= 0.55  # the shared budget solver met the MACs budget
    assert result.model(torch.zeros(2, 1, 8, 8)).shape == (2, 4)
    with pytest.raises(PrunekitError, match="macs_budget"):
        toy(toy.Config(macs_budget=3.0))  # its validate() runs for a config object too


def test_the_toy_method_is_known_to_configs_and_compare(toy, tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model: {name: lenet5}\ndata: {name: digits}\nmethod: {name: l2-once, keep_ratio: 0.4}\n")
    assert config.load_config(path)["method"]["keep_ratio"] == 0.4
    with pytest.raises(PrunekitError, match="no option 'nope'"):
        config.load_config(path, ["method.nope=1"])
    cfg = compare.DEFAULTS | {"name": "toy", "targets": [{"macs": 0.5}, {"params": 0.3}],
                              "methods": {"l2-once": {}}, "base": {"model": {"name": "lenet5"},
                                                                   "data": {"name": "digits"}}}
    rows = compare.plan(cfg, dense_model=lambda seed: models.create("lenet5", in_channels=1, input_size=8))
    assert {(r.label, r.start) for r in rows} == {("l2-once@macs=0.5", "dense"), ("l2-once@params=0.3", "dense")}
    assert {r.cfg["method"].get("macs_budget") or r.cfg["method"].get("params_budget") for r in rows} == {0.5, 0.3}
