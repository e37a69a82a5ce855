"""Layer tables as text (prunekit.metrics.table): columns, number formats, alignment."""

from __future__ import annotations

import torch
from torch import nn

from prunekit import metrics


def test_format_table(small_model: nn.Sequential) -> None:
    rows = [{"name": "conv", "params": 1234, "sparsity": 0.5, "output_shape": (1, 8, 4, 4)},
            {"name": "fc", "params": 5, "sparsity": 0.0, "output_shape": None}]
    text = metrics.format_table(rows)
    lines = text.splitlines()
    assert lines[0].split() == ["name", "params", "sparsity", "output_shape"]
    assert set(lines[1]) <= {"-", " "}
    assert "1,234" in lines[2] and "1x8x4x4" in lines[2] and lines[3].split()[-1] == "-"
    # numbers right-aligned: the params column ends at the same place on every line
    end = lines[2].index("1,234") + 5
    assert lines[3][end - 2: end] == " 5"
    only = metrics.format_table(rows, columns=["params", "name"])
    assert only.splitlines()[0].split() == ["params", "name"]
    assert metrics.format_table(metrics.layer_table(small_model, torch.zeros(1, 3, 8, 8)))
