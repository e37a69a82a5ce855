"""Callbacks: hooks named after the moment they run (PyTorch Lightning's idiom).

A pruning method is a :class:`Callback` (plus, where the paper says so, an ``torch.optim.Optimizer``), so
the built-in :class:`~prunekit.engine.Trainer` and a user's own loop can both drive it. In a user's loop,
pass a :class:`LoopState` (anything with ``model``, ``optimizers``, ``epoch``, ``step``) as ``trainer``::

    state = LoopState(model, [optimizer])
    method.on_fit_start(state)
    for epoch in range(epochs):
        state.epoch = epoch
        method.on_epoch_start(state)
        for x, y in loader:
            loss = F.cross_entropy(state.model(x), y)
            loss.backward()
            method.on_before_optimizer_step(state)
            optimizer.step(); optimizer.zero_grad()
            method.on_after_optimizer_step(state)
            state.step += 1
        method.on_epoch_end(state)
    model = method.finalize(state.model, example_inputs).model

Under DistributedDataParallel every rank calls every hook (the methods take their decisions from the
synchronised weights and check with :func:`prunekit.engine.distributed.check_same` that the ranks agree);
``state.raw_model`` unwraps the DDP module, and after a method replaced the model the loop must wrap the new
one in DDP again and rebuild its optimizer (the Trainer's ``replace_model`` does both).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from prunekit.engine.stages import Stage


@dataclass
class LoopState:
    """The minimum a callback needs from a training loop; the Trainer has the same attributes."""

    model: nn.Module
    optimizers: list[torch.optim.Optimizer] = field(default_factory=list)
    epoch: int = 0
    step: int = 0
    stage: Stage | None = None
    stage_epoch: int = 0
    loss: torch.Tensor | None = None

    @property
    def raw_model(self) -> nn.Module:
        """The model without a DistributedDataParallel wrapper."""
        return getattr(self.model, "module", self.model)

    def replace_model(self, model: nn.Module) -> None:
        """Swap in a new (pruned) model; a user's loop must rebuild its optimizer afterwards."""
        self.model = model


class Callback:
    """Base class: every hook is a no-op. ``trainer`` is a Trainer or a :class:`LoopState`."""

    def on_fit_start(self, trainer: Any) -> None:
        """Before the first step (not called again on resume)."""

    def on_model_changed(self, trainer: Any) -> None:
        """After the model object was replaced (surgery, or rebuilt from a checkpoint on resume)."""

    def on_stage_start(self, trainer: Any, stage: Stage) -> None:
        """At the start of a stage (a phase of the method's schedule), before its first epoch."""

    def on_epoch_start(self, trainer: Any) -> None:
        """At the start of each epoch."""

    def on_train_batch_start(self, trainer: Any, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        """Before the forward pass of a training batch."""

    def on_before_optimizer_step(self, trainer: Any) -> None:
        """After backward: gradients are ready (add penalty sub-gradients, mask gradients)."""

    def on_after_optimizer_step(self, trainer: Any) -> None:
        """Right after ``optimizer.step()`` (re-apply masks, hard thresholding)."""

    def on_train_batch_end(self, trainer: Any) -> None:
        """After the step is complete."""

    def on_epoch_end(self, trainer: Any, metrics: dict[str, float]) -> None:
        """After an epoch's evaluation; ``metrics`` holds that epoch's figures."""

    def on_stage_end(self, trainer: Any, stage: Stage) -> None:
        """After the last epoch of a stage."""

    def on_fit_end(self, trainer: Any) -> None:
        """After the last stage."""

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume (tensors allowed); saved in every checkpoint."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
