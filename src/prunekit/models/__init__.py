"""Model zoo: a registry of named factories (the timm idiom), one file per family, each documented with
its source paper and exact parameter / MAC counts (``describe(name)``).

>>> from prunekit import io, models
>>> model = models.create("resnet56", num_classes=100)
>>> io.factory_of(model)
{'name': 'resnet56', 'kwargs': {'num_classes': 100}}

``create`` builds on the current default device, so ``with torch.device("meta"):`` gives a model without
memory (useful for counting). Every zoo model has an ``input_shape`` attribute, (channels, height, width)
of one sample, and uses only plain torch layers plus :class:`~prunekit.models.common.ResidualBlock`, so
:mod:`prunekit.io` can save it after surgery. ``create("torchvision:<name>")`` builds a torchvision model
where torchvision imports (it is not a dependency).

Families: ``lenet-300-100``, ``lenet5`` (lenet.py); ``nin`` (nin.py); ``vgg16``, ``vgg19`` (vgg.py);
``resnet20/32/44/56/110`` (resnet_cifar.py); ``resnet18``, ``resnet50`` (resnet.py); ``alexnet``.
"""

from __future__ import annotations

import torch

from prunekit.models import alexnet, lenet, nin, resnet, resnet_cifar, vgg  # noqa: F401 - registers models
from prunekit.models.common import ResidualBlock
from prunekit.models.registry import create, describe, names, options, register

__all__ = ["ResidualBlock", "create", "describe", "example_input", "names", "options", "register"]


def example_input(model: torch.nn.Module, batch_size: int = 1, device: torch.device | str | None = None
                  ) -> torch.Tensor:
    """Zeros of shape ``(batch_size, *model.input_shape)`` on the model's device (or ``device``)."""
    shape = getattr(model, "input_shape", None)
    if shape is None:
        raise ValueError(f"{type(model).__name__} has no input_shape; pass example inputs yourself")
    if device is None:
        first = next(iter(model.parameters()), None)
        device = first.device if first is not None else "cpu"
    return torch.zeros(batch_size, *shape, device=device)
