"""Fixtures of the adapter tests (HF Trainer, Lightning)."""

import pytest
import torch
from torch import nn

from prunekit import methods
from prunekit.engine.stages import Stage


class Replacing(methods.PruningMethod):
    """A toy method that hands the loop a new network object at its second stage (``replace_model``)."""

    name = "toy-replacing"

    def __init__(self) -> None:
        super().__init__()
        self.new: nn.Module | None = None
        self.snapshot: list[torch.Tensor] = []

    def stages(self, epochs: int) -> list:
        return [Stage("before", 1), Stage("after", epochs - 1)]

    def on_stage_start(self, trainer, stage) -> None:
        if stage.name == "after":
            self.new = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                     nn.Linear(4, 4))
            self.snapshot = [p.detach().clone() for p in self.new.parameters()]
            trainer.replace_model(self.new)


@pytest.fixture
def replacing() -> Replacing:
    """A fresh :class:`Replacing` method."""
    return Replacing()
