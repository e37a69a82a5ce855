"""Evaluation metrics (prunekit.metrics.evaluation): latency, top-k accuracy, file size."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit import metrics
from prunekit.errors import PrunekitError


def test_latency_positive_and_restores_threads(small_model: nn.Sequential) -> None:
    model = small_model
    before = torch.get_num_threads()
    r = metrics.latency(model, torch.zeros(1, 3, 8, 8), repeats=5, warmup=1, threads=1)
    assert torch.get_num_threads() == before
    assert r["threads"] == 1 and r["repeats"] == 5 and r["batch_size"] == 1 and r["device"] == "cpu"
    assert 0 < r["min_ms"] <= r["p10_ms"] <= r["median_ms"] <= r["p90_ms"]
    r = metrics.latency(model, torch.zeros(4, 3, 8, 8), repeats=3, warmup=0)
    assert r["threads"] == before and r["batch_size"] == 4 and r["median_ms"] > 0
    assert model.training  # mode restored
    with pytest.raises(ValueError):
        metrics.latency(model, torch.zeros(1, 3, 8, 8), repeats=0)


def test_accuracy_top1_top5() -> None:
    # the "model" passes logits through, so the answer is known by hand
    logits = torch.tensor([
        [9.0, 1, 2, 3, 4, 5, 0],  # label 0: top-1
        [9.0, 8, 7, 6, 5, 4, 0],  # label 4: 5th -> top-5 only
        [9.0, 8, 7, 6, 5, 4, 0],  # label 6: last -> neither
        [0.0, 1, 2, 3, 4, 5, 9],  # label 5: 2nd -> top-5 only
    ])
    labels = torch.tensor([0, 4, 6, 5])
    model = nn.Sequential(nn.Identity(), nn.Dropout(0.9)).train()
    batches = [(logits[:3], labels[:3]), (logits[3:], labels[3:])]
    acc = metrics.accuracy(model, batches)
    assert acc == {"top1": 0.25, "top5": 0.75, "samples": 4}
    assert model.training
    assert metrics.accuracy(model, batches, topk=(1, 2, 10)) == {"top1": 0.25, "top2": 0.5, "top10": 1.0,
                                                                "samples": 4}
    with pytest.raises(PrunekitError, match="no samples"):
        metrics.accuracy(model, [])


def test_file_size(tmp_path) -> None:
    f = tmp_path / "a.bin"
    f.write_bytes(b"x" * 123)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.bin").write_bytes(b"y" * 7)
    assert metrics.file_size(f) == 123
    assert metrics.file_size(tmp_path) == 130
    with pytest.raises(PrunekitError, match="no such file"):
        metrics.file_size(tmp_path / "missing")
