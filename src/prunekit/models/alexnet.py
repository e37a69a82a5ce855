"""AlexNet (Krizhevsky et al. 2012) in torchvision's single-tower form (the "one weird trick" variant)."""

from __future__ import annotations

import torch
from torch import nn

from prunekit.models.common import check_int, check_prob, init_kaiming
from prunekit.models.registry import register


class AlexNet(nn.Module):
    """``features`` (5 convs, 3 max-pools), adaptive 6x6 average pool, ``classifier`` (3 linear layers)."""

    input_shape: tuple[int, int, int]

    def __init__(self, num_classes: int, in_channels: int, dropout: float) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 64, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, stride=2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, stride=2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(6)
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(),
            nn.Dropout(dropout), nn.Linear(4096, 4096), nn.ReLU(),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.avgpool(self.features(x))))


@register("alexnet")
def alexnet(num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5) -> nn.Module:
    """AlexNet for ImageNet (Krizhevsky et al. 2012) as in torchvision: the single-tower variant of
    Krizhevsky 2014 ("One weird trick") with 64-192-384-256-256 convs and 4096-4096 fully connected layers.
    61,100,840 parameters and 714,188,480 MACs (conv + linear) at 224x224, 1000 classes (torchvision:
    61.1M, 0.71 GFLOPs). Works from 63x63 up (smaller inputs vanish in the pooling).

    ReLUs are separate, non-inplace modules so forward hooks see the activations. Init: Kaiming normal
    (fan_out) convs, linear N(0, 0.01), bias 0 (the paper used N(0, 0.01) with some biases set to 1).
    """
    model = AlexNet(check_int("num_classes", num_classes), check_int("in_channels", in_channels),
                    check_prob("dropout", dropout))
    init_kaiming(model)
    model.input_shape = (in_channels, 224, 224)
    return model
