"""benchmarks/surgery.py runs end to end as a real process: the 50% surgery on ResNet-56 and VGG-16, both timed
beside their dense networks in every runtime (eager, deployed, ONNX Runtime), and its JSON. No timed assertion:
the figures live in README.md."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import run_benchmark


@pytest.mark.slow
def test_structured_section_times_dense_and_pruned_in_every_runtime(tmp_path: Path) -> None:
    out = tmp_path / "surgery.json"
    res = run_benchmark("surgery.py", "--runs", "1", "--batch", "2", "--threads", "1", "--sections", "structured",
                        "--out", str(out))
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    rows = {r["model"]: r for r in json.loads(out.read_text())["structured"]}
    assert set(rows) == {"resnet56", "vgg16"}
    for r in rows.values():
        assert r["params_check"] and r["macs_pruned"] < r["macs_dense"] / 3.5  # half the channels: ~4x fewer MACs
        assert set(r["latency"]) == {"eager", "deployed", "onnxruntime"}
        for v in r["latency"].values():
            assert v["dense_ms"] > 0 and v["pruned_ms"] > 0
            assert v["speedup"] == pytest.approx(v["dense_ms"] / v["pruned_ms"])
    assert "onnxruntime" in res.stdout and "resnet56" in res.stdout
