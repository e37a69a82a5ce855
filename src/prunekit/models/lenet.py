"""LeNet family: the MNIST networks of the pruning literature (Caffe definitions).

Every zoo model carries ``input_shape`` = (channels, height, width) of one sample.
"""

from __future__ import annotations

import torch
from torch import nn

from prunekit.errors import PrunekitError
from prunekit.models.common import check_int, init_caffe_xavier
from prunekit.models.registry import register


class LeNet300100(nn.Module):
    """Fully connected 784-300-100-10 with ReLUs."""

    input_shape: tuple[int, int, int]

    def __init__(self, num_classes: int, in_features: int) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(in_features, 300)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(300, 100)
        self.relu2 = nn.ReLU()
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.fc1(self.flatten(x)))
        return self.fc3(self.relu2(self.fc2(x)))


class LeNet5(nn.Module):
    """Caffe LeNet: conv 20 5x5 -> maxpool 2 -> conv 50 5x5 -> maxpool 2 -> fc 500 -> ReLU -> fc."""

    input_shape: tuple[int, int, int]

    def __init__(self, num_classes: int, in_channels: int, input_size: int, conv_relu: bool,
                 padding: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 20, 5, padding=padding)
        self.relu1: nn.Module = nn.ReLU() if conv_relu else nn.Identity()
        self.pool1 = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(20, 50, 5, padding=padding)
        self.relu2: nn.Module = nn.ReLU() if conv_relu else nn.Identity()
        self.pool2 = nn.MaxPool2d(2, 2)
        side = ((input_size + 2 * padding - 4) // 2 + 2 * padding - 4) // 2
        if side < 1:
            raise PrunekitError(f"lenet5: input_size {input_size} with padding {padding} leaves no pixels "
                                "after the second pooling; use input_size >= 14 or padding=2")
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(50 * side * side, 500)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        return self.fc2(self.relu3(self.fc1(self.flatten(x))))


@register("lenet-300-100")
def lenet_300_100(num_classes: int = 10, in_channels: int = 1, input_size: int = 28) -> nn.Module:
    """LeNet-300-100: fully connected 784-300-100-10 with ReLUs (LeCun et al. 1998; the MNIST MLP of
    Han et al. 2015, "Learning both Weights and Connections"). 266,610 parameters at 28x28; 266,200 MACs.

    Input is flattened, so any ``in_channels x input_size x input_size`` works (64 features for the 8x8
    scikit-learn digits). Init: Caffe's xavier filler, bias 0 (as in the Caffe model).
    """
    num_classes = check_int("num_classes", num_classes)
    in_channels = check_int("in_channels", in_channels)
    input_size = check_int("input_size", input_size)
    model = LeNet300100(num_classes, in_channels * input_size * input_size)
    init_caffe_xavier(model)
    model.input_shape = (in_channels, input_size, input_size)
    return model


@register("lenet5")
def lenet5(num_classes: int = 10, in_channels: int = 1, input_size: int = 28, conv_relu: bool = True,
           padding: int | None = None) -> nn.Module:
    """LeNet-5 as defined in Caffe's MNIST example and used by Network Trimming (Hu et al. 2016): conv1 20
    5x5 -> maxpool 2 -> conv2 50 5x5 -> maxpool 2 -> fc1 500 -> ReLU -> fc2. 431,080 parameters and
    2,293,000 MACs (conv + linear) at 28x28.

    * ``conv_relu`` (default True): put a ReLU after each conv. Caffe's LeNet has none there, but Network
      Trimming measures APoZ on post-ReLU activations, so the zoo adds them (``relu1``/``relu2``; with
      ``conv_relu=False`` these are ``nn.Identity`` and the net is Caffe's exactly). Max-pooling commutes
      with ReLU, so this changes only what the conv layers can represent, not the parameter count.
    * ``padding`` (default: 0 when ``input_size >= 14``, else 2): the 5x5 convs of the original are
      unpadded; for small inputs such as the 8x8 scikit-learn digits they get padding 2 so the spatial size
      survives both poolings (8 -> 8 -> 4 -> 4 -> 2; fc1 then has 200 inputs, 131,080 parameters in all).

    Named submodules: conv1, relu1, pool1, conv2, relu2, pool2, flatten, fc1, relu3, fc2 (ReLUs are
    modules so that forward hooks see the activations). Init: Caffe's xavier filler, bias 0.
    """
    num_classes = check_int("num_classes", num_classes)
    in_channels = check_int("in_channels", in_channels)
    input_size = check_int("input_size", input_size)
    if not isinstance(conv_relu, bool):
        raise PrunekitError(f"conv_relu must be true or false, got {conv_relu!r}")
    pad = (0 if input_size >= 14 else 2) if padding is None else check_int("padding", padding, minimum=0)
    model = LeNet5(num_classes, in_channels, input_size, conv_relu, pad)
    init_caffe_xavier(model)
    model.input_shape = (in_channels, input_size, input_size)
    return model
