"""The comparison harness: grid planning at the same budget, the run / skip / resume cycle, files, report."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from prunekit import compare, metrics, models
from prunekit.cli import main
from prunekit.errors import PrunekitError
from prunekit.methods import get as get_method
from prunekit.methods.iht import prunable_layers
from tests.helpers import TINY_RUN, digits_lenet, write_yaml


def _write(tmp_path: Path, **over) -> Path:
    cfg = {"name": "tiny", "seeds": [0], "base": TINY_RUN, "dense_epochs": 1, "budget_epochs": 2,
           "targets": [{"macs": 0.4}, {"params": 0.25}], "latency_rounds": 1, "latency_batch": 8,
           "methods": {"dense": {}, "sght": {}, "torch-global": {}, "random-filter": {},
                       "trimming": {"iterations": 2}}}
    return write_yaml(tmp_path / "cmp.yaml", {**cfg, **over})


def test_plan_gives_every_row_the_same_total_budget_and_maps_targets(tmp_path):
    cfg = compare.load(_write(tmp_path, dense_epochs=3, budget_epochs=6, seeds=[0, 1], methods={
        "dense": {}, "iht": {}, "magnitude": {}, "sght": {}, "l1-filter": {}, "slimming": {}, "trimming": {},
        "sss": {"sweep": {"gamma_channel": [0.01, 0.03]}}, "sfp": {"kinds": ["params"]}}))
    rows = compare.plan(cfg, dense_model=lambda seed: digits_lenet())
    by = {(r.label, r.seed): r for r in rows}
    # same total training for every row: dense start + budget, or all of it from scratch
    assert {r.epochs for r in rows} == {9}
    for r in rows:
        if r.method == "dense":
            continue
        m = get_method(r.method)({k: v for k, v in r.cfg["method"].items() if k != "name"})
        fitted = sum(s.epochs for s in m.stages(r.cfg["train"]["epochs"]))
        assert fitted + (3 if r.start == "dense" else 0) == 9, r.label
    # who starts where: the papers' own protocol
    assert by[("sght@macs=0.4", 0)].start == "scratch" and by[("sss[gamma_channel=0.03]", 1)].start == "scratch"
    assert by[("iht@params=0.25", 0)].start == "dense" and by[("trimming", 0)].start == "dense"
    assert by[("trimming", 0)].cfg["method"]["initial_epochs"] == 0
    # targets become each method's own knob; unsupported kinds are not run
    assert by[("sght@macs=0.4", 0)].cfg["method"]["macs_budget"] == 0.4
    assert by[("sght@params=0.25", 0)].cfg["method"]["params_budget"] == 0.25
    assert by[("slimming@macs=0.4", 0)].cfg["method"]["target_macs"] == 0.4
    # Slimming trains from scratch and still fine-tunes after its prune (a quarter of its 9 epochs)
    assert by[("slimming@macs=0.4", 0)].start == "scratch"
    assert by[("slimming@macs=0.4", 0)].cfg["method"]["finetune_epochs"] == 2
    assert ("slimming@params=0.25", 0) not in by and ("iht@macs=0.4", 0) not in by
    assert ("sfp@params=0.25", 0) in by and ("sfp@macs=0.4", 0) not in by
    # the unstructured keep is solved so that the non-zeros of the whole network meet the target
    keep = by[("iht@params=0.25", 0)].cfg["method"]["keep"]
    net = digits_lenet()
    layers = prunable_layers(net)
    total = sum(p.numel() for p in net.parameters())
    weights = sum(m.weight.numel() for m in layers.values())
    assert keep < 0.25
    assert abs((keep * weights + total - weights) / total - 0.25) < 1e-4
    # seeds share the folder of their row, one sub-folder each; the row hash ignores the seed
    assert by[("sght@macs=0.4", 0)].dir.parent == by[("sght@macs=0.4", 1)].dir.parent
    assert len({r.dir for r in rows}) == len(rows)


@pytest.mark.parametrize("bad, needle", [
    ({"targets": [{"macs": 1.5}]}, "0 < f < 1"),
    ({"targets": [{"flops": 0.5}]}, "expected {macs: f}"),
    ({"methods": {"nonsense": {}}}, "unknown method"),
    ({"methods": {"trimming": {"kinds": ["macs"]}}}, "cannot be set to a macs target"),
    ({"seeds": []}, "seeds"),
    ({"budget_epochs": 0}, "budget_epochs"),
    ({"base": {**TINY_RUN, "method": {"name": "sght"}}}, "must not set a method"),
    ({"methods": {"sght": {"keep_ratio": 2.0}}}, "keep_ratio"),
    ({"typo_key": 1}, "unknown key"),
    ({"targets": [{"params": 0.2}], "methods": {"slimming": {}}}, "runs at macs targets only"),
    # the typed schema (#17.3) and its upper bounds (#19.11): refused at load, not after the grid trained
    ({"latency_batch": 10**9}, "latency_batch must be an integer in [1, 4096], got 1000000000"),
    ({"latency": 1}, "latency must be true or false"),
    ({"dense_epochs": True}, "dense_epochs must be an integer in [1, 100000], got True"),
    ({"tolerance": float("inf")}, "tolerance must be a number in (0, 1), got inf"),
    ({"targets": [{"macs": 0.5, "params": 0.1}]}, "expected {macs: f}"),
    ({"seeds": [0, 0]}, "seeds must be distinct"),
    ({"base": {**TINY_RUN, "optim": {"lr": 1e308}}}, "compare config: base: optim.lr must be a number in (0, 10]"),
    ({"base": {**TINY_RUN, "train": {"epoch": 3}}}, "unknown config key 'train.epoch'"),
])
def test_bad_configs_are_rejected_before_training(tmp_path, bad, needle):
    with pytest.raises(PrunekitError, match=None) as err:
        cfg = compare.load(_write(tmp_path, **bad))
        compare.plan(cfg, dense_model=lambda seed: digits_lenet())
    assert needle in str(err.value)


def test_unreachable_unstructured_target_is_rejected(tmp_path):
    cfg = compare.load(_write(tmp_path, targets=[{"params": 0.0001}], methods={"iht": {}}))
    with pytest.raises(PrunekitError, match="unreachable"):
        compare.plan(cfg, dense_model=lambda seed: digits_lenet())


def test_pareto_front():
    pts = [(10, 90.0), (5, 80.0), (20, 85.0), (5, 70.0), (30, 95.0), (12, 91.0)]
    assert compare.pareto(pts) == [(5, 80.0), (10, 90.0), (12, 91.0), (30, 95.0)]


def test_grid_runs_skips_finished_resumes_and_reports(tmp_path, capsys):
    torch.set_num_threads(1)
    cfg_path = _write(tmp_path)
    out = tmp_path / "out"
    assert main(["compare", str(cfg_path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| dense" in printed and "sght@macs=0.4" in printed
    # files: CSV with the fixed schema, JSON lines, summary, plots in two formats
    with open(out / "results.csv") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == compare.CSV_COLUMNS
        recs = list(reader)
    labels = sorted(r["label"] for r in recs)
    assert labels == sorted(["dense", "sght@macs=0.4", "sght@params=0.25", "torch-global@params=0.25",
                             "random-filter@macs=0.4", "random-filter@params=0.25", "trimming"])
    rows = compare.read_results(out)
    by = {r["label"]: r for r in rows}
    dense = by["dense"]
    assert dense["macs_frac"] == pytest.approx(1.0) and dense["train_epochs"] == 3
    # structured rows reach their MACs / params budget (solver tolerance 1%), unstructured its non-zeros
    for label, key, target in [("sght@macs=0.4", "macs_frac", 0.4), ("random-filter@macs=0.4", "macs_frac", 0.4),
                               ("sght@params=0.25", "params_frac", 0.25),
                               ("torch-global@params=0.25", "nonzero_frac", 0.25)]:
        assert by[label][key] == pytest.approx(target, rel=0.05), label
        assert by[label]["matched"] is True
    assert by["trimming"]["matched"] is False  # no target knob: its own point
    assert by["torch-global@params=0.25"]["sparse_file"] is True
    # the figures are the saved models' own: recount one from its file
    sght_model = compare.load_model(out / by["sght@macs=0.4"]["run"] / "model.safetensors")
    assert metrics.count(sght_model, torch.zeros(1, 1, 8, 8)).macs == by["sght@macs=0.4"]["macs"]
    assert all(r["latency_ms_b1"] > 0 and r["latency_ms_batch"] > 0 and r["latency_batch"] == 8 for r in rows)
    for stem in ("accuracy_vs_macs", "accuracy_vs_params", "latency_vs_macs", "layers"):
        for ext in ("png", "svg"):
            assert (out / f"{stem}.{ext}").stat().st_size > 1000
    assert "| sght@macs=0.4 | 1 |" in (out / "summary.md").read_text()

    # a second invocation repeats nothing
    stamp = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/seed*/model.safetensors")}
    assert main(["compare", str(cfg_path), "--out", str(out)]) == 0
    assert capsys.readouterr().out.count("finished earlier, not repeated") == len(rows)
    assert stamp == {p: p.stat().st_mtime_ns for p in out.glob("runs/*/seed*/model.safetensors")}

    # a run killed before it finished (its result files gone, its checkpoint kept) resumes to the same result
    victim = out / by["sght@macs=0.4"]["run"]
    (victim / "compare_row.json").unlink()
    (victim / "report.json").unlink()
    assert main(["compare", str(cfg_path), "--out", str(out)]) == 0
    again = {r["label"]: r for r in compare.read_results(out)}
    assert again["sght@macs=0.4"]["top1"] == by["sght@macs=0.4"]["top1"]
    assert again["sght@macs=0.4"]["macs"] == by["sght@macs=0.4"]["macs"]

    # the report is rebuilt from the CSV alone
    for p in out.glob("*.png"):
        p.unlink()
    (out / "summary.md").unlink()
    (out / "results.jsonl").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "summary.md").is_file() and (out / "accuracy_vs_macs.png").is_file()
    assert not (out / "layers.png").exists()  # per-layer data lives in results.jsonl only


def test_report_rejects_a_malformed_results_file(tmp_path, capsys):
    d = tmp_path / "cmp"
    d.mkdir()
    (d / "results.csv").write_text("label,method,seed,macs,top1\nx,y,notanumber,1,2\n")
    assert main(["report", str(d)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "malformed results file" in err[0]
    (d / "results.csv").write_text("a,b\n1,2\n")
    assert main(["report", str(d)]) == 2
    assert "missing columns" in capsys.readouterr().err


def test_shipped_compare_recipes_plan(tmp_path):
    """Every recipe under configs/compare is valid and plans a grid with the same budget on every row."""
    root = Path(__file__).resolve().parents[2] / "configs" / "compare"
    recipes = sorted(root.glob("*.yaml"))
    assert len(recipes) >= 4
    for path in recipes:
        cfg = compare.load(path)
        gray = ("lenet5", 1, 28)  # the (Fashion-)MNIST recipes
        arch = gray if path.stem.startswith(("mnist-", "fashion-")) else (cfg["base"]["model"]["name"], 3, 32)
        rows = compare.plan(cfg, dense_model=lambda s, a=arch: models.create(a[0], in_channels=a[1], input_size=a[2])
                            if a[0] == "lenet5" else models.create(a[0]))
        assert len({r.epochs for r in rows}) == 1, path.name
        if "latency" in path.stem:  # MACs- against latency-targeted rows of the filter methods (#20)
            assert {r.target_kind for r in rows} == {None, "macs", "latency"}, path.name
            continue
        assert {r.method for r in rows} >= {"dense", "iht", "trimming", "sss", "sght"}, path.name


def test_smoke_flag_shrinks_a_grid(tmp_path, capsys):
    src = json.loads(json.dumps(TINY_RUN))
    src["train"].pop("max_steps_per_epoch")
    cfg_path = _write(tmp_path, base=src, dense_epochs=30, budget_epochs=40, methods={"dense": {}, "sght": {}},
                      targets=[{"macs": 0.5}], latency=False, seeds=[3, 4, 5])
    out = tmp_path / "smoke"
    assert main(["compare", str(cfg_path), "--out", str(out), "--smoke"]) == 0
    rows = compare.read_results(out)
    assert {r["train_epochs"] for r in rows} == {7}  # 1 dense + min(budget, 6)
    assert {r["seed"] for r in rows} == {3}  # the first seed only
    saved = yaml.safe_load((out / "compare.yaml").read_text())
    assert saved["base"]["train"]["max_steps_per_epoch"] == 2
    shutil.rmtree(out)


def test_compare_runs_unchanged_under_torchrun(tmp_path):
    """``torchrun -m prunekit.cli compare``: every rank trains, rank 0 alone writes, the grid is the same."""
    import os
    import subprocess
    import sys

    cfg_path = _write(tmp_path, methods={"dense": {}, "sght": {}}, targets=[{"macs": 0.4}], latency=False)
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "prunekit.cli", "compare", str(cfg_path), "--out", str(out)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("| sght@macs=0.4 |") == 1  # one table, from rank 0
    rows = {r["label"]: r for r in compare.read_results(out)}
    assert set(rows) == {"dense", "sght@macs=0.4"}
    assert rows["sght@macs=0.4"]["macs_frac"] == pytest.approx(0.4, rel=0.05)


def test_a_sweep_multiplies_the_target_points(tmp_path):
    cfg = compare.load(_write(tmp_path, dense_epochs=2, budget_epochs=4, targets=[{"macs": 0.4}, {"params": 0.2}],
                              methods={"sght": {"kinds": ["macs"], "sweep": {"ramp_epochs": [0, 2]}}}))
    rows = compare.plan(cfg, dense_model=lambda seed: digits_lenet())
    got = {r.label: r.cfg["method"] for r in rows}
    assert set(got) == {"sght@macs=0.4[ramp_epochs=0]", "sght@macs=0.4[ramp_epochs=2]"}
    assert got["sght@macs=0.4[ramp_epochs=2]"]["ramp_epochs"] == 2
    assert all(m["macs_budget"] == 0.4 for m in got.values())
    assert len({r.dir for r in rows}) == 2
