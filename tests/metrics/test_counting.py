"""Counting (prunekit.metrics.counting): hand-computed MACs, parameter and sparsity counts, layer tables."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit import metrics, models

# Hand counts for one 3x8x8 sample of the small_model fixture (tests/metrics/conftest.py).
HAND = {
    "Conv2d": 8 * 8 * 8 * (3 * 9) + 8 * 8 * 8 * (8 // 4 * 9),  # 13,824 + 9,216
    "BatchNorm2d": 8 * 8 * 8,                                    # one per element
    "MaxPool2d": 8 * 4 * 4 * 4,                                  # kernel area per output
    "AvgPool2d": 8 * 3 * 3 * 4,
    "AdaptiveAvgPool2d": 8 * 3 * 3,                              # global pool reads every input once
    "Linear": 5 * 8,
}
HAND_PARAMS = (3 * 9 * 8 + 8) + 2 * 8 + (8 // 4 * 9 * 8) + (8 * 5 + 5)


@pytest.mark.parametrize("batch", [1, 4])
def test_hand_computed_macs(batch: int, small_model: nn.Sequential) -> None:
    c = metrics.count(small_model, torch.randn(batch, 3, 8, 8))
    assert c.macs_by_type == HAND
    assert c.macs == sum(HAND.values()) == 24_464
    assert c.flops == 2 * c.macs
    assert c.macs_of("Conv2d", "Linear") == 13_824 + 9_216 + 40
    assert c.params == HAND_PARAMS == 429


def test_adaptive_pool_uneven_windows() -> None:
    # 5 -> 3 windows along each axis are [0,2), [1,4), [3,5): 2 + 3 + 2 = 7 reads, so 49 per map
    c = metrics.count(nn.AdaptiveAvgPool2d(3), torch.zeros(2, 4, 5, 5))
    assert c.macs == 4 * 49
    c = metrics.count(nn.AdaptiveMaxPool2d((2, 1)), torch.zeros(1, 1, 4, 6))
    assert c.macs == (2 + 2) * 6


def test_other_layer_types() -> None:
    c = metrics.count(nn.ConvTranspose2d(4, 2, 3), torch.zeros(1, 4, 3, 3))
    assert c.macs == 4 * 3 * 3 * 2 * 9  # per input element: out_channels x kernel area
    c = metrics.count(nn.Conv1d(4, 6, 3, groups=2), torch.zeros(1, 4, 10))
    assert c.macs == 6 * 8 * (2 * 3)
    c = metrics.count(nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3)), torch.zeros(2, 7, 4))
    assert c.macs_by_type == {"Linear": 7 * 3 * 4, "LayerNorm": 7 * 3}


def test_custom_module_with_tuple_inputs_and_shared_layer() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return self.fc(self.fc(a) + b)

    c = metrics.count(Twice(), (torch.zeros(3, 4), torch.zeros(3, 4)))
    assert c.params == 20 and c.macs == 2 * 16


def test_nonzero_params_after_zeroing(small_model: nn.Sequential) -> None:
    model = small_model
    with torch.no_grad():
        model[0].weight[:4] = 0  # 4 of 8 filters, 27 weights each
        model[8].bias.zero_()
    c = metrics.count(model, torch.zeros(1, 3, 8, 8))
    assert c.params == HAND_PARAMS
    assert c.nonzero_params == HAND_PARAMS - 4 * 27 - 5 - 8  # BN bias starts at zero too
    sp = metrics.sparsity(model)
    assert sp["0.weight"] == 0.5 and sp["8.bias"] == 1.0 and sp["8.weight"] == 0.0
    assert sp["global"] == pytest.approx((4 * 27 + 5 + 8) / HAND_PARAMS)


def test_count_restores_modes_and_works_on_meta(small_model: nn.Sequential) -> None:
    model = small_model.train()
    model[1].eval()
    before = model[1].running_mean.clone()
    metrics.count(model, torch.randn(2, 3, 8, 8))
    assert model.training and not model[1].training and model[2].training
    assert torch.equal(model[1].running_mean, before)
    with torch.device("meta"):
        meta = models.create("resnet20")
    c = metrics.count(meta, torch.zeros(1, 3, 32, 32))  # inputs follow the model to the meta device
    assert c.params == c.nonzero_params == 272_474


def test_layer_table_rows(small_model: nn.Sequential) -> None:
    model = small_model
    with torch.no_grad():
        model[3].weight[:2] = 0
    x = torch.zeros(1, 3, 8, 8)
    rows = metrics.layer_table(model, x)
    assert [r["name"] for r in rows] == [str(i) for i in range(9)]
    assert [r["type"] for r in rows] == [type(m).__name__ for m in model]
    assert rows[0]["output_shape"] == (1, 8, 8, 8) and rows[6]["output_shape"] == (1, 8, 1, 1)
    assert rows[8]["output_shape"] == (1, 5)
    assert rows[3]["macs"] == 9_216 and rows[3]["params"] == 144 and rows[3]["sparsity"] == 0.25
    assert rows[2]["macs"] == 0 and rows[2]["params"] == 0
    c = metrics.count(model, x)
    assert sum(r["params"] for r in rows) == c.params
    assert sum(r["macs"] for r in rows) == c.macs
    assert sum(r["nonzero_params"] for r in rows) == c.nonzero_params


def test_layer_table_nested_model() -> None:
    model = models.create("resnet20")
    rows = metrics.layer_table(model, torch.zeros(1, 3, 32, 32))
    names = {r["name"] for r in rows}
    assert "layer2.0.shortcut.conv" in names and "layer1.0.branch.relu1" in names
    assert "layer1.0" not in names  # containers without own parameters are not rows
    assert sum(r["params"] for r in rows) == 272_474
