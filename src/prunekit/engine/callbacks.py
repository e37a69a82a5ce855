"""Callbacks: hooks named after the moment they run (PyTorch Lightning's idiom), and what a loop offers them.

A pruning method is a :class:`Callback` (plus, where the paper says so, its own ``torch.optim.Optimizer``),
so the built-in :class:`~prunekit.engine.Trainer` and a user's own loop can both drive it. Every hook gets
the loop as a :class:`TrainingLoop`: a typed protocol the Trainer satisfies, and so does :class:`LoopState`,
the small object a user's own loop passes (see ``README.md``, "Your own training loop", for the one
sequence of calls that drives every method).

Under DistributedDataParallel every rank calls every hook (the methods take their decisions from the
synchronised weights and check with :func:`prunekit.engine.distributed.check_same` that the ranks agree);
``raw_model`` unwraps the DDP module, and after a method replaced the model the loop must wrap the new one
in DDP again and rebuild its optimizer (the Trainer's ``replace_model`` does both; LoopState's rebuilds
the optimizers).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import nn

from prunekit.engine.stages import OptimConfig, Stage, default_optimizer

if TYPE_CHECKING:
    from prunekit.data import Dataset

#: a fixed batch size, or batch index within the epoch -> batch size (SGHT's growing batches)
BatchSize = int | Callable[[int], int]


@runtime_checkable
class TrainingLoop(Protocol):
    """What a training loop offers to callbacks (read-only); the Trainer and :class:`LoopState` both do.

    ``train_data`` / ``val_data`` are prunekit datasets or, in a user's loop, any re-iterable of ``(x, y)``
    batches (e.g. a ``DataLoader``) or None; ``example_inputs`` is one input batch of one sample (for graph
    tracing and MAC counts) or None when the loop does not know it yet.
    """

    @property
    def model(self) -> nn.Module: ...
    @property
    def raw_model(self) -> nn.Module: ...
    @property
    def optimizers(self) -> list[torch.optim.Optimizer]: ...
    @property
    def optim_cfg(self) -> OptimConfig: ...
    @property
    def epoch(self) -> int: ...
    @property
    def step(self) -> int: ...
    @property
    def stage(self) -> Stage | None: ...
    @property
    def stage_index(self) -> int: ...
    @property
    def stage_epoch(self) -> int: ...
    @property
    def example_inputs(self) -> torch.Tensor | None: ...
    @property
    def device(self) -> torch.device: ...
    @property
    def amp(self) -> bool: ...
    @property
    def rank(self) -> int: ...
    @property
    def world_size(self) -> int: ...
    @property
    def out_dir(self) -> Path | None: ...
    @property
    def train_data(self) -> Dataset | Any: ...
    @property
    def val_data(self) -> Dataset | Any: ...
    @property
    def eval_batch_size(self) -> int: ...

    def replace_model(self, model: nn.Module) -> None:
        """Swap in a new (smaller) model: the loop rebuilds its optimizers and tells the callbacks."""


class Callback:
    """Base class: every hook is a no-op, every capability a declared default (Lightning's naming).

    ``trainer`` is any :class:`TrainingLoop` (the built-in Trainer or a :class:`LoopState`).
    """

    @property
    def state_key(self) -> str:
        """The name this callback's state is stored under in a checkpoint (unique per run)."""
        return type(self).__qualname__

    # -- capabilities a loop asks for (the first callback that answers wins) ----------------------------
    def prepare(self, model: nn.Module, example_inputs: Any = None) -> nn.Module:
        """Transform the network once before training (e.g. insert SSS's scaling factors), given one example
        input batch (``example_inputs``, the loop's); default: as is."""
        return model

    def configure_optimizers(self, trainer: TrainingLoop, lr: float) -> list[torch.optim.Optimizer] | None:
        """The optimizer(s) for the current model at base learning rate ``lr``; None: the loop's SGD."""
        return None

    def batch_size_schedule(self, trainer: TrainingLoop) -> BatchSize | None:
        """The batch size of the coming epoch (or a function of the batch index); None: the loop's."""
        return None

    # -- hooks ---------------------------------------------------------------------------------------
    def on_fit_start(self, trainer: TrainingLoop) -> None:
        """Before the first step (not called again on resume)."""

    def on_model_changed(self, trainer: TrainingLoop) -> None:
        """After the model object was replaced (surgery, or rebuilt from a checkpoint on resume)."""

    def on_stage_start(self, trainer: TrainingLoop, stage: Stage) -> None:
        """At the start of a stage (a phase of the method's schedule), before its first epoch."""

    def on_epoch_start(self, trainer: TrainingLoop) -> None:
        """At the start of each epoch."""

    def on_train_batch_start(self, trainer: TrainingLoop, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        """Before the forward pass of a training batch."""

    def on_before_optimizer_step(self, trainer: TrainingLoop) -> None:
        """After backward: gradients are ready (add penalty sub-gradients, mask gradients)."""

    def on_after_optimizer_step(self, trainer: TrainingLoop) -> None:
        """Right after ``optimizer.step()`` (re-apply masks, hard thresholding)."""

    def on_train_batch_end(self, trainer: TrainingLoop) -> None:
        """After the step is complete."""

    def on_epoch_end(self, trainer: TrainingLoop, metrics: dict[str, Any]) -> None:
        """After an epoch's evaluation; ``metrics`` holds that epoch's figures (may be empty)."""

    def on_stage_end(self, trainer: TrainingLoop, stage: Stage) -> None:
        """After the last epoch of a stage."""

    def on_fit_end(self, trainer: TrainingLoop) -> None:
        """After the last stage."""

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume (tensors allowed); saved in every checkpoint under :attr:`state_key`."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


def build_optimizers(callbacks: Sequence[Callback], loop: TrainingLoop, lr: float) -> list[torch.optim.Optimizer]:
    """The callbacks' optimizers (first answer wins), else the engine's momentum SGD over every parameter."""
    for cb in callbacks:
        opts = cb.configure_optimizers(loop, lr)
        if opts is not None:
            return list(opts)
    return [default_optimizer(loop.raw_model, loop.optim_cfg, lr)]


@dataclass
class LoopState:
    """A user's own loop, as callbacks see it (a :class:`TrainingLoop`).

    Set ``stage`` / ``stage_index`` / ``epoch`` / ``step`` as the loop advances. ``callbacks`` (the methods
    driven) supply the optimizers: :meth:`begin_stage` builds them at the stage's learning rate (or ``lr``)
    and :meth:`replace_model` rebuilds them after a method shrank the network.
    """

    model: nn.Module
    optimizers: list[torch.optim.Optimizer] = field(default_factory=list)
    epoch: int = 0
    step: int = 0
    stage: Stage | None = None
    stage_epoch: int = 0
    loss: torch.Tensor | None = None
    callbacks: list[Callback] = field(default_factory=list)
    example_inputs: torch.Tensor | None = None
    train_data: Any = None
    val_data: Any = None
    optim_cfg: OptimConfig = field(default_factory=OptimConfig)
    lr: float | None = None  # base learning rate (default: optim_cfg.lr)
    stage_index: int = 0
    amp: bool = False
    rank: int = 0
    world_size: int = 1
    out_dir: Path | None = None
    eval_batch_size: int = 512

    @property
    def raw_model(self) -> nn.Module:
        """The model without a DistributedDataParallel wrapper."""
        return getattr(self.model, "module", self.model)

    @property
    def device(self) -> torch.device:
        """Where the model's parameters are."""
        p = next(self.raw_model.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def build_optimizers(self) -> list[torch.optim.Optimizer]:
        """Fresh optimizers from the callbacks (or momentum SGD) at the current stage's learning rate."""
        lr = self.stage.lr if self.stage is not None and self.stage.lr is not None else self.lr
        self.optimizers = build_optimizers(self.callbacks, self, self.optim_cfg.lr if lr is None else lr)
        return self.optimizers

    def begin_stage(self, index: int, stage: Stage) -> None:
        """Enter stage ``index`` of the schedule: fresh optimizers, then every callback's ``on_stage_start``."""
        self.stage, self.stage_index, self.stage_epoch = stage, index, 0
        self.build_optimizers()
        for cb in self.callbacks:
            cb.on_stage_start(self, stage)

    def replace_model(self, model: nn.Module) -> None:
        """Swap in a new (pruned) model, rebuild the optimizers (shapes changed) and tell the callbacks."""
        self.model = model
        if self.callbacks:
            self.build_optimizers()
        for cb in self.callbacks:
            cb.on_model_changed(self)


__all__ = ["BatchSize", "Callback", "LoopState", "TrainingLoop", "build_optimizers"]
