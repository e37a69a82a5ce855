"""Network in Network for CIFAR (Lin, Chen & Yan 2013), the network of the IHT paper (Jin et al. 2016)."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from prunekit.models.common import check_int, check_prob, init_kaiming
from prunekit.models.registry import register


class NIN(nn.Module):
    """Three mlpconv stages (a spatial conv and two 1x1 "cccp" convs each) and global average pooling."""

    input_shape: tuple[int, int, int]

    def __init__(self, num_classes: int, in_channels: int, dropout: float) -> None:
        super().__init__()
        layers: list[tuple[str, nn.Module]] = [
            ("conv1", nn.Conv2d(in_channels, 192, 5, padding=2)), ("relu1", nn.ReLU()),
            ("cccp1", nn.Conv2d(192, 160, 1)), ("relu_cccp1", nn.ReLU()),
            ("cccp2", nn.Conv2d(160, 96, 1)), ("relu_cccp2", nn.ReLU()),
            ("pool1", nn.MaxPool2d(3, stride=2, ceil_mode=True)), ("drop1", nn.Dropout(dropout)),
            ("conv2", nn.Conv2d(96, 192, 5, padding=2)), ("relu2", nn.ReLU()),
            ("cccp3", nn.Conv2d(192, 192, 1)), ("relu_cccp3", nn.ReLU()),
            ("cccp4", nn.Conv2d(192, 192, 1)), ("relu_cccp4", nn.ReLU()),
            ("pool2", nn.AvgPool2d(3, stride=2, ceil_mode=True)), ("drop2", nn.Dropout(dropout)),
            ("conv3", nn.Conv2d(192, 192, 3, padding=1)), ("relu3", nn.ReLU()),
            ("cccp5", nn.Conv2d(192, 192, 1)), ("relu_cccp5", nn.ReLU()),
            ("cccp6", nn.Conv2d(192, num_classes, 1)), ("relu_cccp6", nn.ReLU()),
        ]
        self.features = nn.Sequential(OrderedDict(layers))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.flatten(self.avgpool(self.features(x)))


@register("nin")
def nin(num_classes: int = 10, in_channels: int = 3, dropout: float = 0.5) -> nn.Module:
    """Network in Network for CIFAR-10 (Lin et al. 2013; the Caffe model-zoo definition used by the IHT
    paper, Jin et al. 2016): mlpconv stages 192-160-96 (5x5 conv, 1x1, 1x1; 3x3/2 max-pool, dropout),
    192-192-192 (5x5, 1x1, 1x1; 3x3/2 average pool, dropout) and 192-192-``num_classes`` (3x3, 1x1, 1x1),
    then global average pooling. 966,986 parameters and 222,486,528 MACs (conv) at 32x32, 10 classes.

    As in Caffe, pooling rounds up (``ceil_mode``: 32 -> 16 -> 8) and the last 1x1 conv is followed by a
    ReLU. Init: Kaiming normal (fan_in), bias 0; the Caffe model used hand-tuned Gaussian stds instead.
    Layers sit in ``features`` under their Caffe names (conv1, cccp1, ..., relu_cccp6, pool1, drop1, ...).
    """
    model = NIN(check_int("num_classes", num_classes), check_int("in_channels", in_channels),
                check_prob("dropout", dropout))
    init_kaiming(model, mode="fan_in")
    model.input_shape = (in_channels, 32, 32)
    return model
