"""VGG with BatchNorm for CIFAR (the variant of Network Slimming and of Li et al.'s filter pruning)."""

from __future__ import annotations

import torch
from torch import nn

from prunekit.models.common import check_int, init_kaiming
from prunekit.models.registry import register

_CFGS: dict[int, list[int | str]] = {
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512],
}


def _features(cfg: list[int | str], in_channels: int, batch_norm: bool) -> tuple[list[nn.Module], int]:
    """3x3 convs (conv-BN-ReLU without conv bias, or conv-ReLU with bias) and 2x2 max-pools ("M")."""
    layers: list[nn.Module] = []
    c = in_channels
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            assert isinstance(v, int)
            if batch_norm:
                layers += [nn.Conv2d(c, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU()]
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU()]
            c = v
    return layers, c


class CifarVGG(nn.Module):
    """``features`` (3x3 conv-BN-ReLU, 2x2 max-pools), global average pool, one linear classifier."""

    input_shape: tuple[int, int, int]

    def __init__(self, cfg: list[int | str], num_classes: int, in_channels: int) -> None:
        super().__init__()
        layers, c = _features(cfg, in_channels, batch_norm=True)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.avgpool(self.features(x))))


def _build(depth: int, num_classes: int, in_channels: int) -> nn.Module:
    model = CifarVGG(_CFGS[depth], check_int("num_classes", num_classes), check_int("in_channels", in_channels))
    init_kaiming(model)
    model.input_shape = (in_channels, 32, 32)
    return model


@register("vgg16")
def vgg16(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """VGG-16 with BatchNorm for CIFAR, as in Network Slimming (Liu et al. 2017, their ``vgg`` with depth 16)
    and close to Li et al. 2017 ("Pruning Filters for Efficient ConvNets"): 13 bias-free 3x3 conv-BN-ReLU
    layers (64, 64, M, 128, 128, M, 256 x3, M, 512 x3, M, 512 x3), global average pooling of the 2x2 map
    and one linear 512 -> ``num_classes`` classifier.

    14,724,042 parameters and 313,201,664 MACs (conv + linear) at 32x32, 10 classes. Li et al. report
    1.5e7 parameters and 3.13e8 FLOPs: their classifier has an extra 512x512 linear layer (+262,656
    parameters), which Network Slimming and this zoo leave out. Network Slimming pools with
    ``AvgPool2d(2)``; the adaptive pool here is the same at 32x32 and also accepts other sizes.
    Init: Kaiming normal (fan_out), BN weight 1 / bias 0, linear N(0, 0.01).
    """
    return _build(16, num_classes, in_channels)


@register("vgg19")
def vgg19(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """VGG-19 with BatchNorm for CIFAR, the network of Network Slimming (Liu et al. 2017, "VGGNet",
    20.04M parameters): 16 conv-BN-ReLU layers and a 512 -> ``num_classes`` classifier; see ``vgg16``.
    20,035,018 parameters and 398,136,320 MACs (conv + linear) at 32x32, 10 classes.
    """
    return _build(19, num_classes, in_channels)


class ImageNetVGG(nn.Module):
    """``features`` (3x3 conv-ReLU, no BN, as in the original VGG), 7x7 average pool, fc6-fc7-fc8 with dropout."""

    input_shape: tuple[int, int, int]

    def __init__(self, cfg: list[int | str], num_classes: int, in_channels: int) -> None:
        super().__init__()
        layers, c = _features(cfg, in_channels, batch_norm=False)
        layers.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(7)
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(
            nn.Linear(c * 49, 4096), nn.ReLU(), nn.Dropout(0.5),  # fc6
            nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(0.5),  # fc7
            nn.Linear(4096, num_classes),  # fc8
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.avgpool(self.features(x))))


@register("vgg16-imagenet")
def vgg16_imagenet(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    """VGG-16 for ImageNet (Simonyan & Zisserman 2015, configuration D), the network Network Trimming prunes:
    13 3x3 conv-ReLU layers with biases and no BN, five 2x2 max-pools, fc6 and fc7 (4096, ReLU, dropout 0.5)
    and fc8. Layer names follow torchvision's ``vgg16`` (``features.28`` = conv5_3, ``classifier.0`` = fc6,
    ``classifier.3`` = fc7), so its weights load by name. 138,357,544 parameters and 15,470,264,320 MACs
    (conv + linear) at 224x224, 1000 classes.
    """
    model = ImageNetVGG(_CFGS[16], check_int("num_classes", num_classes), check_int("in_channels", in_channels))
    init_kaiming(model)
    model.input_shape = (in_channels, 224, 224)
    return model
