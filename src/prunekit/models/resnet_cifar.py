"""CIFAR ResNets (He et al. 2016, "Deep Residual Learning", section 4.2): 6n+2 layers, widths 16-32-64."""

from __future__ import annotations

import torch
from torch import nn

from prunekit.models.common import basic_block, check_int, init_kaiming
from prunekit.models.registry import register

_BLOCKS = {20: 3, 32: 5, 44: 7, 56: 9, 110: 18}


class CifarResNet(nn.Module):
    """Stem 3x3 conv 16 -> layer1 (16) -> layer2 (32, stride 2) -> layer3 (64, stride 2) -> avgpool -> fc."""

    layer1: nn.Sequential
    layer2: nn.Sequential
    layer3: nn.Sequential
    input_shape: tuple[int, int, int]

    def __init__(self, blocks_per_stage: int, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        c = 16
        for i, width in enumerate((16, 32, 64)):
            blocks = []
            for j in range(blocks_per_stage):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(basic_block(c, width, stride))
                c = width
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.avgpool(x)))


def _build(depth: int, num_classes: int, in_channels: int) -> nn.Module:
    model = CifarResNet(_BLOCKS[depth], check_int("num_classes", num_classes),
                        check_int("in_channels", in_channels))
    init_kaiming(model, linear_std=None)
    model.input_shape = (in_channels, 32, 32)
    return model


_DOC = """ResNet-{depth} for CIFAR (He et al. 2016, section 4.2): a 3x3 conv stem, three stages of {n} basic
    blocks with 16, 32 and 64 channels (the first block of stages 2 and 3 has stride 2), global average
    pooling and a 64 -> ``num_classes`` linear layer. {params:,} parameters and {macs:,} MACs (conv + linear)
    at 32x32, 10 classes.

    Shortcuts: identity inside a stage and a projection (1x1 conv + BN, the paper's "option B") at the two
    stage transitions. The paper's CIFAR nets use option A (stride-2 subsampling plus zero-padded channels,
    no parameters): {params_a:,} parameters, {macs_a:,} MACs. Option B costs 2,752 parameters and 262,144
    MACs more, but a channel removed from a stage's output can be removed from the projection as well, so
    channel pruning stays exact (a zero-padding shortcut would pin the padded channel layout).
    Every block follows :class:`prunekit.models.common.ResidualBlock`'s protocol. Init: Kaiming normal
    (fan_out), BN weight 1 / bias 0, PyTorch's default for the linear layer.
    """

# Exact counts (checked by tests/models/test_zoo.py); option A = option B minus the two projections.
_COUNTS = {20: (272_474, 40_813_184), 32: (466_906, 69_124_736), 44: (661_338, 97_436_288),
           56: (855_770, 125_747_840), 110: (1_730_714, 253_149_824)}


def _register(depth: int) -> None:
    def factory(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
        return _build(depth, num_classes, in_channels)

    params, macs = _COUNTS[depth]
    factory.__name__ = factory.__qualname__ = f"resnet{depth}"
    factory.__doc__ = _DOC.format(depth=depth, n=_BLOCKS[depth], params=params, macs=macs,
                                  params_a=params - 2752, macs_a=macs - 262_144)
    register(f"resnet{depth}")(factory)


for _depth in _BLOCKS:
    _register(_depth)
