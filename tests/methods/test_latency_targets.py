"""Latency targets as a budget kind everywhere a target is accepted (#20.2-3): the schema of a latency target
(experiment config and compare config, with bounds), the filter methods' ``latency`` knob, and a comparison
grid with a latency target run end to end (``--smoke``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from prunekit import compare, config, methods
from prunekit.cli import main
from prunekit.errors import PrunekitError
from tests.helpers import TINY_RUN, digits_lenet, one_line, write_yaml

FILTER_METHODS = ("sght", "l1-filter", "sfp", "tp-magnitude", "random-filter")


def test_latency_target_schema_fills_defaults_and_bounds_every_key():
    t = config.latency_target(0.5)
    assert t["latency"] == 0.5 and t["batch"] == 1 and t["threads"] == 1 and t["round_to"] is None
    assert t["runtime"] == config.default_latency_runtime() in ("onnxruntime", "eager")
    t = config.latency_target({"latency": 0.33, "runtime": "eager", "batch": 64, "threads": 2, "round_to": 4})
    assert (t["runtime"], t["batch"], t["threads"], t["round_to"]) == ("eager", 64, 2, 4)
    for bad, needle in [({"latency": 0}, "latency must be a number in (0, 1]"),
                        ({"latency": 1.5}, "latency must be a number in (0, 1]"),
                        ({"latency": 0.5, "runtime": "tvm"}, "runtime must be one of"),
                        ({"latency": 0.5, "batch": 0}, "batch must be an integer in [1, 65536]"),
                        ({"latency": 0.5, "threads": True}, "threads"),
                        ({"latency": 0.5, "round_to": 0}, "round_to"),
                        ({"latency": 0.5, "speed": 2}, "unknown config key 'speed'"),
                        ({"runtime": "eager"}, "latency"),
                        ("fast", "a latency target is a fraction or a mapping")]:
        with pytest.raises(PrunekitError) as err:
            config.latency_target(bad, "method 'sght': latency")
        assert needle in str(err.value) and "\n" not in str(err.value), (bad, str(err.value))


@pytest.mark.parametrize("name", FILTER_METHODS)
def test_every_filter_method_takes_a_latency_target(name):
    cls = methods.get(name)
    assert cls.budget_knobs["latency"] == "latency"
    opts = cls.target_options("latency", 0.5, None, {})
    assert opts["latency"]["latency"] == 0.5 and opts["latency"]["runtime"] == config.default_latency_runtime()
    assert cls.target_options("latency", 0.5, None, {"round_to": 16})["latency"]["round_to"] == 16  # given: kept
    m = cls(latency={"latency": 0.4, "runtime": "eager", "batch": 8})
    assert m.config.latency["batch"] == 8 and m.config.latency["threads"] == 1
    assert cls(latency=0.4).config.latency["latency"] == 0.4
    with pytest.raises(PrunekitError, match="not both"):
        cls(latency=0.5, macs_budget=0.5)
    with pytest.raises(PrunekitError, match="batch must be"):
        cls(latency={"latency": 0.5, "batch": -1})


def test_methods_without_a_latency_knob_refuse_the_kind():
    with pytest.raises(PrunekitError, match="has no latency budget"):
        methods.get("iht").target_options("latency", 0.5, None, {})


def test_experiment_config_accepts_and_bounds_a_latency_target():
    cfg = config.normalize({"method": {"name": "l1-filter", "latency": {"latency": 0.5, "runtime": "eager"}}})
    assert cfg["method"]["latency"] == {"latency": 0.5, "runtime": "eager"}  # as written; the method fills in
    for bad, needle in [({"latency": 2.0}, "latency must be a number in (0, 1]"),
                        ({"latency": 0.5, "batch": 10**9}, "out of range"),
                        ({"latency": 0.5, "runtime": "tensorrt"}, "runtime must be one of")]:
        with pytest.raises(PrunekitError) as err:
            config.normalize({"method": {"name": "sght", "latency": bad}})
        assert needle in str(err.value), str(err.value)


def test_latency_target_beside_a_budget_is_refused_on_the_command_line(tmp_path, capsys):
    p = tmp_path / "exp.yaml"
    p.write_text(yaml.safe_dump({**TINY_RUN, "method": {"name": "sght", "macs_budget": 0.5, "latency": 0.5}}))
    one_line(capsys, main(["prune", str(p), "--out", str(tmp_path / "run")]), "not both")


def _compare_cfg(tmp_path: Path, **over) -> Path:
    cfg = {"name": "lat", "seeds": [0], "base": TINY_RUN, "dense_epochs": 1, "budget_epochs": 2, "latency_rounds": 2,
           "latency_batch": 4, "latency_runtime": "eager",
           "targets": [{"macs": 0.5}, {"latency": 0.7, "runtime": "eager", "batch": 1, "tol": 0.5}],
           "methods": {"dense": {}, "sght": {}, "l1-filter": {}}}
    return write_yaml(tmp_path / "cmp.yaml", {**cfg, **over})


def test_compare_plans_latency_rows_beside_macs_rows(tmp_path):
    cfg = compare.load(_compare_cfg(tmp_path))
    rows = {r.label: r for r in compare.plan(cfg, dense_model=lambda s: digits_lenet())}
    lat = rows["sght@latency=0.7[eager,b1,tol0.5]"]
    assert lat.target_kind == "latency" and lat.target == 0.7
    assert lat.cfg["method"]["latency"]["runtime"] == "eager" and lat.cfg["method"]["latency"]["tol"] == 0.5
    assert "macs_budget" not in lat.cfg["method"] or lat.cfg["method"]["macs_budget"] is None
    assert rows["l1-filter@macs=0.5"].cfg["method"]["macs_budget"] == 0.5
    assert rows["l1-filter@latency=0.7[eager,b1,tol0.5]"].epochs == rows["l1-filter@macs=0.5"].epochs


@pytest.mark.parametrize("target, needle", [
    ({"latency": 1.0}, "expected {macs: f}, {params: f} or {latency: f"),
    ({"latency": 0.5, "runtime": "tvm"}, "runtime must be one of"),
    ({"latency": 0.5, "batch": 0}, "batch must be an integer"),
    ({"latency": 0.5, "speed": 2}, "unknown key(s) speed in a latency target"),
    ({"macs": 0.5, "latency": 0.5}, "unknown key(s) macs"),
])
def test_compare_config_rejects_bad_latency_targets(tmp_path, target, needle):
    with pytest.raises(PrunekitError) as err:
        compare.load(_compare_cfg(tmp_path, targets=[target]))
    assert needle in str(err.value) and str(err.value).startswith("compare config:"), str(err.value)


def test_compare_refuses_a_latency_target_for_a_method_without_the_knob(tmp_path):
    with pytest.raises(PrunekitError, match="cannot be set to a latency target"):
        compare.load(_compare_cfg(tmp_path, methods={"iht": {"kinds": ["latency"]}}))


@pytest.fixture(scope="module")
def tables(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")  # LeNet-5's eager tables, measured once for this file's grids


def test_smoke_grid_with_a_latency_target_runs_and_reports(tmp_path, monkeypatch, tables):
    """The whole path: latency target -> method knob -> measured solve -> row timed in the runtime -> table,
    results columns and the accuracy-vs-latency plot."""
    torch.set_num_threads(1)
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tables))
    out = tmp_path / "out"
    assert main(["compare", str(_compare_cfg(tmp_path)), "--out", str(out), "--smoke"]) == 0
    rows = compare.read_results(out)
    lat = [r for r in rows if r["target_kind"] == "latency"]
    assert {r["method"] for r in lat} == {"sght", "l1-filter"}
    dense = next(r for r in rows if r["method"] == "dense")
    for r in rows:
        assert r["latency_runtime"] == "eager" and r["latency_ms_b1"] > 0 and r["latency_frac_b1"] > 0
    for r in lat:  # thinner than dense: fewer MACs than the dense row
        assert r["macs"] < dense["macs"] and r["target"] == 0.7
    assert (out / "accuracy_vs_latency.png").stat().st_size > 0
    summary = (out / "summary.md").read_text()
    assert "latency b1 / dense" in summary and "at equal measured latency" in summary
    timing = json.loads((out / "latency.json").read_text())
    assert timing["runtime"] == "eager" and "__dense__@b1" in timing["median_ms"]
    # the latency solve left its tables in the cache (measured once, reused by the next row)
    assert list((tables / "latency").glob("eager-b1-t1-*.json"))


def test_latency_rows_are_compared_with_macs_rows_at_equal_measured_latency():
    from prunekit.reports.compare import latency_vs_macs

    def row(label: str, kind: str, ms: float, top1: float) -> dict:
        return {"label": label, "method": "sght", "target_kind": kind, "target": 0.5, "latency_ms_b1": ms,
                "top1": top1}

    summary = [row("sght@macs=0.5", "macs", 0.04, 90.0), row("sght@macs=0.33", "macs", 0.02, 80.0),
               row("sght@latency=0.5", "latency", 0.03, 86.0), row("sght@latency=0.1", "latency", 0.01, 70.0)]
    text = latency_vs_macs(summary, "latency_ms_b1")
    lines = {ln.split(" | ")[0].strip("| "): ln for ln in text.splitlines()[2:]}
    assert "| 85.00 | +1.00 |" in lines["sght@latency=0.5"] and lines["sght@latency=0.5"].endswith("| yes |")
    assert "outside the MACs rows' measured range" in lines["sght@latency=0.1"]  # no claim outside the range
    assert latency_vs_macs([row("sght@macs=0.5", "macs", 0.04, 90.0)]) == ""


def test_latency_rows_are_compared_seed_by_seed_as_well():
    """With the per-seed results each seed's latency row meets that seed's MACs rows (paired differences),
    so a seed-mean difference can be told from the seed spread."""
    from prunekit.compare.results import summarize
    from prunekit.reports.compare import latency_vs_macs

    def res(label: str, kind: str, seed: int, ms: float, top1: float) -> dict:
        return {"label": label, "method": "sght", "seed": seed, "target_kind": kind, "target": 0.5,
                "latency_ms_b1": ms, "top1": top1, "macs": 1, "matched": True}

    results = [res("sght@macs=0.5", "macs", 0, 0.04, 90.0), res("sght@macs=0.33", "macs", 0, 0.02, 80.0),
               res("sght@latency=0.5", "latency", 0, 0.03, 87.0),  # seed 0: +2 over its MACs rows (85)
               res("sght@macs=0.5", "macs", 1, 0.04, 94.0), res("sght@macs=0.33", "macs", 1, 0.02, 84.0),
               res("sght@latency=0.5", "latency", 1, 0.035, 90.0)]  # seed 1: 91.5 there, so -1.5
    text = latency_vs_macs(summarize(results), "latency_ms_b1", results)
    assert "per seed (paired)" in text.splitlines()[0]
    line = next(ln for ln in text.splitlines() if ln.startswith("| sght@latency=0.5 "))
    assert "+2.00 / -1.50 (mean +0.25 ± 2.47)" in line and line.endswith("| 1 of 2 |")


def test_a_latency_row_out_of_reach_is_reported_and_the_grid_goes_on(tmp_path, monkeypatch, capsys, tables):
    """One unreachable latency target must not stop a long grid: its row is named as not run (printed and in
    summary.md), every other row runs and is reported."""
    torch.set_num_threads(1)
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tables))
    cfg = _compare_cfg(tmp_path, methods={"dense": {}, "l1-filter": {}}, budget_epochs=1, latency_rounds=1,
                       targets=[{"latency": 0.01, "runtime": "eager", "batch": 1, "tol": 0.05}])
    out = tmp_path / "out"
    assert main(["compare", str(cfg), "--out", str(out)]) == 0
    assert [r["method"] for r in compare.read_results(out)] == ["dense"]
    summary = (out / "summary.md").read_text()
    assert "Not run (latency target not reached" in summary and "l1-filter@latency=0.01" in summary
    assert "latency target 0.01 (eager, batch 1" in capsys.readouterr().out
