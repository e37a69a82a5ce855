"""Latency targets: tables cached on disk, the solver fed by them, the real network measured, every filter
method routed through the hook. Tiny models; no assertion on how fast anything is."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from prunekit import methods, metrics, models
from prunekit.errors import PrunekitError
from prunekit.methods.budget import filter_groups, groups_and_keep, keep_hook, solve_keep
from prunekit.metrics import latency_model as L

X = torch.randn(1, 1, 28, 28)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("latency-tables")  # LeNet-5's tables, measured once for this file


def _target(cache: Path, **kw: object) -> dict[str, object]:
    return {"latency": 0.5, "runtime": "onnxruntime", "batch": 1, "threads": 1, "rounds": 3, "corrections": 2,
            "cache": str(cache), **kw}


def test_tables_are_measured_once_and_cached(tmp_path: Path) -> None:
    spec = {"op": "conv2d", "in": 16, "out": 12, "kernel": [3, 3], "stride": [1, 1], "padding": [1, 1],
            "dilation": [1, 1], "hw": [8, 8]}
    t = L.layer_table(spec, "onnxruntime", batch=1, threads=1, thin_in=True, thin_out=True,
                      directory=tmp_path, rounds=1)
    assert t.ins == [1, 8, 16] and t.outs == [1, 8, 12]
    assert np.asarray(t.ms).shape == (3, 3) and (np.asarray(t.ms) >= 0).all()
    files = list(tmp_path.glob("onnxruntime-b1-t1-*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["key"]["in"] == 16
    files[0].write_text(json.dumps({**json.loads(files[0].read_text()), "ms": [[7.0] * 3] * 3}))
    again = L.layer_table(spec, "onnxruntime", batch=1, threads=1, thin_in=True, thin_out=True,
                          directory=tmp_path, rounds=1)
    assert again.ms == [[7.0] * 3] * 3  # read from the cache, not measured again
    assert float(again.at(np.array([10.0]), np.array([4.0]))[0]) == pytest.approx(7.0)
    files[0].write_text("{damaged")
    assert L.layer_table(spec, "onnxruntime", batch=1, threads=1, thin_in=True, thin_out=True,
                         directory=tmp_path, rounds=1).ins == [1, 8, 16]


def test_the_model_feeds_the_budget_solver(cache: Path) -> None:
    model = models.create("lenet5").eval()
    groups = filter_groups(model, X)
    t = L.LatencyTarget.parse(_target(cache))
    lm = L.LatencyModel.build(model, X, groups, t, dense_ms=1.0)
    full = [g.size for g in groups]
    assert lm.cost(full) == pytest.approx(1.0)  # calibrated to the measured dense latency
    floor = lm.cost([8, 8, 8])
    assert floor < lm.cost(full)
    keep = solve_keep(lm, (floor + 1.0) / 2, "latency", round_to=8, tol=0.05)
    assert all(k % 8 == 0 or k == g.size for k, g in zip(keep, groups, strict=True))
    assert np.allclose(lm.batch_cost(np.array([keep, full])), [lm.cost(keep), 1.0])


def test_solve_latency_measures_the_real_network(cache: Path) -> None:
    model = models.create("lenet5").eval()
    groups = filter_groups(model, X)
    report: dict[str, object] = {}
    try:
        keep = L.solve_latency(model, X, groups, _target(cache, tol=0.5), report=report)
    except PrunekitError as exc:  # a loaded machine may make even a loose target unreachable: say so clearly
        assert "latency target" in str(exc)
        return
    assert len(keep) == len(groups) and all(1 <= k <= g.size for k, g in zip(keep, groups, strict=True))
    assert report["keep"] == keep and report["history"]
    thin = L.thinned(model, X, groups, keep)
    assert [thin.get_submodule(g.name).out_channels if hasattr(thin.get_submodule(g.name), "out_channels")
            else thin.get_submodule(g.name).out_features for g in groups] == keep
    assert metrics.count(thin, X).macs < metrics.count(model, X).macs or keep == [g.size for g in groups]


def test_every_filter_method_takes_its_widths_from_the_hook() -> None:
    model_keep = [8, 16, 120]
    for name in ("l1-filter", "random-filter", "tp-magnitude"):
        if name not in methods.names():
            continue
        model = models.create("lenet5").eval()
        method = methods.get(name)()
        with keep_hook(lambda m, x, groups: model_keep):
            method.prune(model, X)
        assert [model.conv1.out_channels, model.conv2.out_channels] == model_keep[:2]
    with keep_hook(lambda m, x, groups: [0, 1, 2]), pytest.raises(PrunekitError, match="keep hook"):
        methods.get("l1-filter")().prune(models.create("lenet5").eval(), X)


def test_bad_targets_are_one_line_errors() -> None:
    for spec, words in (({"latency": 1.5}, "fraction"), ({"latency": 0.5, "runtime": "tvm"}, "runtime"),
                        ({"latency": 0.5, "batch": 0}, "batch"), ({"latency": 0.5, "speed": 2}, "unknown key"),
                        ({"runtime": "onnxruntime"}, "latency"), ({"latency": 0.5, "clock": "sun"}, "clock")):
        with pytest.raises(PrunekitError, match=words):
            L.LatencyTarget.parse(spec)
    assert L.LatencyTarget.parse({"latency": 0.5}).snap == L.PREFERRED_MULTIPLE["onnxruntime"]
    assert L.LatencyTarget.parse({"latency": 0.5, "round_to": 1}).snap == 1


def test_a_second_bind_reuses_the_solved_widths(cache: Path) -> None:
    """A method binding again (resume, surgery) must not re-measure and get other widths mid-training."""
    model = models.create("lenet5")  # in training mode, as a trainer holds it
    config = methods.get("sght")().config
    with L.latency_target(_target(cache, tol=0.5)) as report:
        try:
            _, _, first = groups_and_keep(model, X, config, "SGHT")
        except PrunekitError as exc:  # a loaded machine may make even a loose target unreachable
            assert "latency target" in str(exc)
            return
        measured = list(report["history"])
        _, _, again = groups_and_keep(model, X, config, "SGHT")
    assert again == first and report["history"] == measured
    assert model.training  # the model handed in is not changed
    _, _, plain = groups_and_keep(model, X, config, "SGHT")  # outside the block: the method's own ratio
    assert plain == [int(0.6 * g.size) for g in filter_groups(model, X)]


def test_the_budget_goes_where_channels_are_cheap() -> None:
    """With conv1's channels dear and conv2's / fc1's nearly free in the (hand-written) tables, the latency
    budget is spent on conv2 and fc1: more MACs kept than the uniform start at no more predicted latency."""
    from prunekit.methods.budget import CostModel

    model = models.create("lenet5").eval()
    groups = filter_groups(model, X)
    cost = CostModel.build(model, X, groups)
    per_channel = {"conv1": 1.0, "conv2": 0.001, "fc1": 0.0001}  # ms per output channel
    layers = []
    for i, t in enumerate(cost.terms):
        if t.name in per_channel:
            m = model.get_submodule(t.name)
            cin, cout = (m.in_features, m.out_features) if isinstance(m, torch.nn.Linear) else (m.in_channels,
                                                                                                 m.out_channels)
            ins = sorted({1, cin})
            table = L.LayerTable({}, ins, [1, cout], [[per_channel[t.name] * c for c in (1, cout)]] * len(ins))
            layers.append((i, table, cin, cout))
    lm = L.LatencyModel(cost, layers, dense_ms=25.0)
    start = [16, 24, 248]
    limit = lm.cost(start) + 0.5  # room for the cheap channels, not for 4 more of conv1's
    keep = L.more_macs(lm, start, snap=8, floor=[8, 8, 8], limit=limit)
    assert lm.cost(keep) <= limit + 1e-9
    assert cost.macs(keep) > cost.macs(start)
    assert keep[0] == 16 and keep[1] == 50 and keep[2] == 500  # conv1 stays; the cheap groups fill up
    assert L.more_macs(lm, [19, 24, 248], snap=8, floor=[8, 8, 8], limit=limit) == [19, 24, 248]  # off the ladder


def test_an_unreachable_target_is_searched_again_at_half_the_multiple(cache: Path) -> None:
    """Below the floor of 8-channel widths the search runs again at multiples of 4 (no round_to given), and
    says so; a round_to the user gave is kept."""
    model = models.create("lenet5").eval()
    groups = filter_groups(model, X)
    with pytest.raises(PrunekitError, match=r"latency target 0.02 .*multiples of 8, 4\)"):
        L.solve_latency(model, X, groups, _target(cache, latency=0.02, corrections=1))
    with pytest.raises(PrunekitError, match=r"multiples of 8\)"):
        L.solve_latency(model, X, groups, _target(cache, latency=0.02, corrections=1, round_to=8))
