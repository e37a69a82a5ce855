"""Stages (the phases of a method's schedule), the optimizer settings and learning-rate schedules as pure
functions.

The learning rate is a function of (stage, position in the stage) only, so a resumed run gets exactly the
learning rates an uninterrupted one would, with no scheduler state to save.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

SCHEDULES = ("constant", "step", "cosine", "onecycle")


@dataclass
class Stage:
    """One phase of training.

    ``lr`` and ``schedule`` default to the run's optimizer settings; ``milestones`` are epochs within the
    stage. ``reset_optimizer`` starts the stage with fresh optimizer state (momentum), as AC/DC does at
    each phase switch. ``kind`` is a free tag the method reads (e.g. "sparse" / "dense").
    """

    name: str
    epochs: int
    kind: str = "train"
    lr: float | None = None
    schedule: str | None = None
    milestones: list[int] | None = None
    gamma: float | None = None
    reset_optimizer: bool = True
    info: dict = field(default_factory=dict)


@dataclass
class OptimConfig:
    """SGD settings (the papers all use momentum SGD)."""

    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "step"
    milestones: list[int] | None = None
    gamma: float = 0.1
    warmup_epochs: float = 0.0


def split_decay(model: nn.Module, exclude: set[int] | None = None) -> list[dict[str, Any]]:
    """One parameter group of every trainable parameter except the ids in ``exclude``.

    The four papers apply weight decay to all weights (Caffe / MXNet defaults), so do we; a method that
    needs other treatment (SSS's factors get no decay) excludes its parameters and adds its own group.
    """
    exclude = exclude or set()
    params = [p for p in model.parameters() if p.requires_grad and id(p) not in exclude]
    return [{"params": params}]


def default_optimizer(model: nn.Module, optim: OptimConfig, lr: float) -> torch.optim.Optimizer:
    """The engine's optimizer when no method supplies one: momentum SGD over every trainable parameter."""
    return torch.optim.SGD(split_decay(model), lr=lr, momentum=optim.momentum,
                           nesterov=optim.nesterov and optim.momentum > 0, weight_decay=optim.weight_decay)


def lr_factor(schedule: str, progress: float, epoch: int, epochs: int, milestones: list[int] | None,
              gamma: float, warmup: float = 0.0) -> float:
    """Multiplier of the base learning rate.

    ``progress`` is the position in the stage in epochs (fractional within an epoch); ``epoch`` is its
    integer part. ``warmup`` (in epochs) ramps linearly from 0 for every schedule but onecycle.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    epochs = max(epochs, 1)
    if schedule == "constant":
        f = 1.0
    elif schedule == "step":
        # default milestones at 50% and 75% of the stage, never at epoch 0 (a 1-epoch stage keeps its lr)
        ms = milestones if milestones is not None else [max(1, round(epochs * 0.5)), max(1, round(epochs * 0.75))]
        f = gamma ** sum(1 for m in ms if epoch >= m)
    elif schedule == "cosine":
        f = 0.5 * (1.0 + math.cos(math.pi * min(progress / epochs, 1.0)))
    else:  # onecycle: linear ramp to the peak over 30%, cosine down to ~0
        t = min(progress / epochs, 1.0)
        if t < 0.3:
            return 0.04 + 0.96 * t / 0.3
        return 0.5 * (1.0 + math.cos(math.pi * (t - 0.3) / 0.7)) * 0.999 + 1e-3
    if warmup > 0 and progress < warmup:
        f *= (progress + 1e-3) / warmup
    return f
