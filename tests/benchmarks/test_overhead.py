"""benchmarks/overhead.py: its --smoke variant runs end to end as a real process (every method attached as the
Trainer attaches it, interleaved timing, the side-by-side table and the JSON); bad options are one line, exit 2.
No timed assertion: the figures themselves live in README.md."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT, run_benchmark

SCRIPT = ROOT / "benchmarks" / "overhead.py"


def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return run_benchmark("overhead.py", *args, timeout=timeout)


@pytest.mark.slow
def test_smoke_run_times_every_method_beside_a_plain_step(tmp_path: Path) -> None:
    out = tmp_path / "overhead.json"
    res = _run("--smoke", "--out", str(out))
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    doc = json.loads(out.read_text())
    rows = {r["variant"]: r for r in doc["rows"]}
    assert list(rows) == ["plain", "iht", "sght", "sss", "trimming", "plain inference", "trimming APoZ pass"]
    for r in rows.values():
        assert r["cpu_ms"] > 0 and r["wall_ms"] > 0
        assert r["overhead_cpu"] > -1.0 and r["overhead_wall"] > -1.0
    assert rows["plain"]["overhead_cpu"] == 0.0
    for name in ("plain", "iht", "sght", "sss", "trimming"):  # a step = forward + backward, then the update
        assert rows[name]["fwd_bwd_ms"] > 0 and rows[name]["update_ms"] > 0
    assert all(len(t["cpu"]) == doc["rounds"] for t in doc["times"].values())  # every variant, every round
    assert doc["apoz"]["groups"] > 0 and doc["apoz"]["points"] >= doc["apoz"]["groups"]
    table = [line for line in res.stdout.splitlines() if line.startswith("| ")]
    assert len(table) == 2 + len(rows)  # header, rule, one line per row
    assert res.stdout.startswith("# python benchmarks/overhead.py --smoke")  # the command, recipe and seed first
    assert "seed 0" in res.stdout and "sparse1" in res.stdout  # IHT timed in its sparse phase


def test_bad_options_are_one_line_and_exit_2(capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location("overhead_bench", SCRIPT)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "overhead_bench", bench)  # its dataclasses look their module up
    spec.loader.exec_module(bench)
    with pytest.raises(SystemExit) as exc:
        bench.parse(["--smoke", "--only", "iht,nope"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "overhead.py: error: --only: unknown nope; choose from iht, sght, sss, trimming, apoz"]
    args = bench.parse(["--smoke"])  # the smoke sizes
    assert (args.arch, args.batch, args.image, args.rounds) == ("resnet18", 2, 32, 2)
