"""ImageNet ResNets (He et al. 2016), written natively with torchvision's layout and parameter counts."""

from __future__ import annotations

import torch
from torch import nn

from prunekit.models.common import basic_block, bottleneck_block, check_int, init_kaiming
from prunekit.models.registry import register


class ResNet(nn.Module):
    """Stem (7x7/2 conv, BN, ReLU, 3x3/2 max-pool), four stages ``layer1..layer4``, avgpool, ``fc``."""

    layer1: nn.Sequential
    layer2: nn.Sequential
    layer3: nn.Sequential
    layer4: nn.Sequential
    input_shape: tuple[int, int, int]

    def __init__(self, bottleneck: bool, layers: list[int], num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        c = 64
        for i, (width, n) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                if bottleneck:
                    blocks.append(bottleneck_block(c, width, width * 4, stride))
                    c = width * 4
                else:
                    blocks.append(basic_block(c, width, stride))
                    c = width
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.flatten(self.avgpool(x)))


def _build(bottleneck: bool, layers: list[int], num_classes: int, in_channels: int) -> nn.Module:
    model = ResNet(bottleneck, layers, check_int("num_classes", num_classes),
                   check_int("in_channels", in_channels))
    init_kaiming(model, linear_std=None)
    model.input_shape = (in_channels, 224, 224)
    return model


@register("resnet18")
def resnet18(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    """ResNet-18 for ImageNet (He et al. 2016, table 1), torchvision's layout: basic blocks [2, 2, 2, 2],
    projection shortcuts (1x1 conv + BN) where the shape changes. 11,689,512 parameters and 1,814,073,344
    MACs (conv + linear) at 224x224, 1000 classes (torchvision: 11.69M, 1.81 GFLOPs). Residual blocks
    follow :class:`prunekit.models.common.ResidualBlock`. Init: Kaiming normal (fan_out), BN 1 / 0.
    """
    return _build(False, [2, 2, 2, 2], num_classes, in_channels)


@register("resnet50")
def resnet50(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    """ResNet-50 for ImageNet (He et al. 2016, table 1), torchvision's layout: bottleneck blocks
    [3, 4, 6, 3] with the stride on the 3x3 conv ("v1.5"), projection shortcuts (1x1 conv + BN) where the
    shape changes. 25,557,032 parameters and 4,089,184,256 MACs (conv + linear) at 224x224, 1000 classes
    (torchvision: 25.56M, 4.09 GFLOPs; the paper's v1, stride on the first 1x1, has 3.9G). Residual blocks
    follow :class:`prunekit.models.common.ResidualBlock`. Init: Kaiming normal (fan_out), BN 1 / 0.
    """
    return _build(True, [3, 4, 6, 3], num_classes, in_channels)
