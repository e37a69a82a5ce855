"""Building blocks shared by the zoo: the residual-block protocol, weight initialisation, argument checks.

Residual block protocol (surgery's depth pruning and SSS rely on it): every residual block in the zoo is a
:class:`ResidualBlock` with exactly three children,

* ``branch``: an ``nn.Sequential`` of plain layers ending with the last BatchNorm of the residual path
  (ReLUs inside it are ``nn.ReLU`` modules, never in-place, never functional),
* ``shortcut``: ``nn.Identity()`` or ``nn.Sequential(conv1x1, bn)`` (a projection, "option B"),
* ``act``: ``nn.ReLU()``,

and ``forward(x) = act(branch(x) + shortcut(x))``. Nothing else happens in ``forward``, so a pruning
method can reason about a block from its children alone, and :mod:`prunekit.io` can save a block whose
children were replaced or thinned.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, Literal

import torch
from torch import nn

from prunekit.errors import PrunekitError
from prunekit.io import register_module


@register_module
class ResidualBlock(nn.Module):
    """``act(branch(x) + shortcut(x))``; see the module docstring for the protocol."""

    def __init__(self, branch: nn.Module | None = None, shortcut: nn.Module | None = None) -> None:
        super().__init__()
        self.branch = branch if branch is not None else nn.Sequential()
        self.shortcut = shortcut if shortcut is not None else nn.Identity()
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.branch(x) + self.shortcut(x))

    def to_config(self) -> dict[str, Any]:
        """Everything lives in the children, so the block itself has no configuration."""
        return {}

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> ResidualBlock:
        """An empty shell (``branch=Sequential()``, ``shortcut=Identity()``, ``act=ReLU()``) whose children
        :func:`prunekit.io.build_module` then replaces with the recorded ones."""
        if cfg:
            raise PrunekitError(f"ResidualBlock takes no configuration, got keys {sorted(cfg)}")
        return cls()


def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0) -> list[tuple[str, nn.Module]]:
    """A bias-free conv followed by BatchNorm, as (name suffix, module) pairs."""
    return [("conv", nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)),
            ("bn", nn.BatchNorm2d(cout))]


def projection(cin: int, cout: int, stride: int) -> nn.Module:
    """Shortcut of a block: identity when shapes agree, else a 1x1 conv + BN projection (He et al. option B)."""
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(OrderedDict([
        ("conv", nn.Conv2d(cin, cout, 1, stride=stride, bias=False)),
        ("bn", nn.BatchNorm2d(cout)),
    ]))


def basic_block(cin: int, cout: int, stride: int = 1) -> ResidualBlock:
    """He et al. (2016) basic block: 3x3 conv-BN-ReLU, 3x3 conv-BN, plus shortcut, then ReLU."""
    branch = nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)),
        ("bn1", nn.BatchNorm2d(cout)),
        ("relu1", nn.ReLU()),
        ("conv2", nn.Conv2d(cout, cout, 3, padding=1, bias=False)),
        ("bn2", nn.BatchNorm2d(cout)),
    ]))
    return ResidualBlock(branch, projection(cin, cout, stride))


def bottleneck_block(cin: int, width: int, cout: int, stride: int = 1) -> ResidualBlock:
    """Bottleneck block, 1x1 -> 3x3 -> 1x1, with the stride on the 3x3 conv ("ResNet v1.5", as in
    torchvision; same parameter count as v1, 4.09 instead of 3.86 GMACs for ResNet-50)."""
    branch = nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(cin, width, 1, bias=False)),
        ("bn1", nn.BatchNorm2d(width)),
        ("relu1", nn.ReLU()),
        ("conv2", nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)),
        ("bn2", nn.BatchNorm2d(width)),
        ("relu2", nn.ReLU()),
        ("conv3", nn.Conv2d(width, cout, 1, bias=False)),
        ("bn3", nn.BatchNorm2d(cout)),
    ]))
    return ResidualBlock(branch, projection(cin, cout, stride))


def init_kaiming(model: nn.Module, *, mode: Literal["fan_in", "fan_out"] = "fan_out",
                 linear_std: float | None = 0.01) -> None:
    """He et al. (2015) init: Kaiming-normal convs (bias 0), BatchNorm weight 1 / bias 0, and linear layers
    ``N(0, linear_std)`` with bias 0 (``linear_std=None`` keeps PyTorch's default for linear layers)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode=mode, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear_std is not None:
            nn.init.normal_(m.weight, 0.0, linear_std)
            nn.init.zeros_(m.bias)


def init_caffe_xavier(model: nn.Module) -> None:
    """Caffe's ``xavier`` filler (uniform in +-sqrt(3 / fan_in)) for convs and linear layers, bias 0."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            bound = math.sqrt(3.0 / (m.weight[0].numel()))
            nn.init.uniform_(m.weight, -bound, bound)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def check_int(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum``, else a PrunekitError naming the argument."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise PrunekitError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_prob(name: str, value: Any) -> float:
    """``value`` as a probability in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value < 1.0:
        raise PrunekitError(f"{name} must be a number in [0, 1), got {value!r}")
    return float(value)
