"""Fixtures of the metrics tests."""

import pytest
from torch import nn


@pytest.fixture
def small_model() -> nn.Sequential:
    """Every layer type the counters know, for 3x8x8 inputs; the hand counts are in test_counting.py."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),           # 0: 8x8x8 out
        nn.BatchNorm2d(8),                       # 1
        nn.ReLU(),                               # 2
        nn.Conv2d(8, 8, 3, padding=1, groups=4, bias=False),  # 3: grouped
        nn.MaxPool2d(2),                         # 4: 8x4x4 out
        nn.AvgPool2d(2, stride=1),               # 5: 8x3x3 out
        nn.AdaptiveAvgPool2d(1),                 # 6: 8x1x1 out
        nn.Flatten(),                            # 7
        nn.Linear(8, 5),                         # 8
    )
