"""benchmarks/gpu.py: its --smoke variant runs end to end on a CPU as a real process (workers in parallel
processes, training through the library, latency, the summary), and set-up problems are one line, exit 2."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest
import torch

from tests.helpers import ROOT, run_benchmark

SCRIPT = ROOT / "benchmarks" / "gpu.py"


def _run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return run_benchmark("gpu.py", *args, timeout=timeout)


@pytest.mark.slow
def test_smoke_run_trains_every_method_and_writes_the_summary(tmp_path: Path) -> None:
    res = _run("--smoke", "--out", str(tmp_path))
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == {n: "done" for n in ("dense", "sght", "l1-filter", "sfp", "tp-magnitude")}
    figs = {n: r["figures"] for n, r in summary["results"].items()}
    for name in ("sght", "l1-filter", "sfp", "tp-magnitude"):  # the paper's budget, met by real removal
        assert figs[name]["macs"] / figs["dense"]["macs"] == pytest.approx(0.37, abs=0.02)
        assert figs[name]["params"] < figs["dense"]["params"]
        assert 0.0 <= figs[name]["top1"] <= 100.0
        assert (tmp_path / name / "model.safetensors").is_file()
    assert set(summary["latency_ms"]) == set(figs) and all(len(v) == 2 for v in summary["latency_ms"].values())
    md = (tmp_path / "summary.md").read_text()
    assert "92.40" in md and md.count("| done |") == 5


def test_the_epochs_shrink_to_fit_the_time_budget() -> None:
    """The timed probe (a few real training steps in-process) caps the epochs so the runs end in time."""
    spec = importlib.util.spec_from_file_location("gpu_bench", SCRIPT)
    assert spec is not None and spec.loader is not None
    gpu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu)
    args = gpu.parse(["--smoke", "--epochs", "50", "--only", "dense,sght"])
    epochs, why = gpu.fit_epochs(args, time_left=12.0)
    assert 1 <= epochs < 50 and "reduced to fit the budget" in why
    epochs, why = gpu.fit_epochs(args, time_left=1e7)
    assert epochs == 50 and "reduced" not in why


def test_setup_problems_are_one_line_and_exit_2(tmp_path: Path) -> None:
    res = _run("--smoke", "--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"), timeout=120)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        f"gpu.py: error: no CIFAR-10 found in {tmp_path / 'nowhere'}; pass --data-dir (the folder holding cifar10/)"]
    if not torch.cuda.is_available():
        res = _run("--out", str(tmp_path / "o"), timeout=120)
        assert res.returncode == 2
        err = res.stderr.strip().splitlines()
        assert len(err) == 1 and "no CUDA device" in err[0]
