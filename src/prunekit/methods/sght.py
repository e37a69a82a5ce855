"""SGHT: pruning CNNs by stochastic gradient hard thresholding (Yang, Lu, Shuai & Yuan, PRCV 2019).

The paper's AHSG-HT trains a network **from a random initialisation** and, after every mini-batch step,
keeps only the ``k`` filters with the largest norm in each layer::

    for epoch in 1..E:                                   # "hybrid": batch size grows within each epoch
        for t, (x, y) in enumerate(batches(size = min(64 + 4 t, 128))):
            g   = grad L(w_t; x, y) + lambda * w_t                   # weight decay (lambda = 5e-4)
            v   = mu * v + g ;  d = g + mu * v                       # Nesterov momentum (mu = 0.9)
            w'  = w_t - eta * d + nu * (w_t - w_{t-1})               # heavy-ball term, the "A" (nu = 0.1)
            w_{t+1} = H_k(w')                                        # filter hard thresholding
    remove the zero filters; use the compact network without fine-tuning

``H_k`` keeps, in each prunable layer, the ``k = floor(keep_ratio * width)`` filters with the largest L2
norm and sets the others to zero together with their BN shift. Here the step is :class:`AHSGHT` (a
``torch.optim.Optimizer``) and ``H_k`` is :class:`~prunekit.methods.filters.FilterThreshold`, applied by
:class:`SGHT` (a callback) right after every optimizer step, so the built-in Trainer and a user's own loop can
both drive it. Binding ``H_k`` to the loop's network and removing the zero filters at the end is shared with
soft filter pruning (:mod:`prunekit.methods.filter_selection`).

Where we follow the paper, where the authors' code (favorxin/AHSG-HT-pruning-with-KD) and where we chose:

* **Heavy-ball term** -- paper: ``nu * (w_t - w_{t-1})`` with ``w_{t-1}`` the previous iterate. The released
  code records the "previous" weights just before each step, so its term is zero in effect. We implement
  the paper's update: :class:`AHSGHT` keeps ``w_{t-1}`` in its state from the previous step (the first step
  has no term); ``nu`` is configurable (``nu=0`` gives the authors' effective update, exactly torch's SGD).
* **Which filters** -- authors: every conv layer thresholded on its own; their compact ResNet scatters the
  pruned residual outputs back to full width. Ours: filters coupled through a residual sum (found by
  :func:`prunekit.surgery.channel_groups`) are scored by their joint L2 norm and kept or zeroed as one
  group, so every zeroed channel can really be removed. Hidden linear layers are thresholded too
  (``include_linear``; the authors' CNNs have none); the classifier never is.
* **k** -- ``int(HTrate * out_channels)`` in the authors' training code (floor; their removal script rounds
  the other way and may keep one extra, already-zero filter). Ours: floor, at least ``min_keep``; or a
  per-group ``k`` solved from a global MACs / params budget (:mod:`prunekit.methods.budget`, within 1%).
  ``ramp_epochs`` optionally lowers ``k`` linearly from full width; the paper (default) uses the target
  from the first step. Ours, not the paper's: ``round_to`` (e.g. 8) keeps every thinned ``k`` a multiple of
  it, widths that GPU kernels and vector units run at full speed.
* **BN** -- authors zero the BN bias (shift) of a zeroed filter and keep its scale; so do we
  (``zero_bn_scale`` also zeroes the scale; ``zero_shift=False`` leaves BN and biases alone during
  training, and the final removal then zeroes the shift first, which changes the function). We also zero the channel's
  BN running mean and the filter's own bias, if any: training is unaffected (a zero filter's batch mean is
  0) but the thresholded network then evaluates exactly like the compact one, and removal is exact.
* **Momentum of zeroed filters** -- authors keep the buffers; so do we by default (``reset_momentum=False``).
  Why it matters: after a BN whose shift is zero, a zeroed channel outputs exactly 0, and ReLU passes no
  gradient at 0, so the filter's own gradient is exactly zero; it can only come back through the residue
  of its momentum (and of the heavy-ball term) right after it was zeroed. ``reset_momentum=True`` zeroes the
  buffer rows with the filter, which makes every zeroing final (a monotone prune, no comebacks). In practice
  the selection settles early either way: :meth:`SGHT.finalize` reports ``revived`` (how many times a zeroed
  channel was kept again at the next step); ``ramp_epochs`` makes the selection gradual instead.
* **Hybrid batches** -- authors' sampler: 64, 68, ..., 128, 128, ... restarting every epoch (their last,
  partial batch is dropped here, as the Trainer drops it for every method). ``hybrid_batch=False`` uses the
  run's fixed batch size. (Zhou et al.'s HSG-HT grows the batch over all iterations, geometrically as far
  as we know; the PRCV code does this per-epoch linear ramp, which we follow.)
* **After training** -- :meth:`SGHT.finalize` removes the zero filters for real (surgery) and does not
  fine-tune. ``finetune_epochs > 0`` adds a fine-tuning stage (plain momentum SGD on the compact net,
  ``lr=finetune_lr``) carved out of the same epoch budget.

``H_k`` is vectorised over all layers on the device: filters of equal size from all layers are scored in
one matrix norm (a handful of buckets: one per distinct fan-in), one batched sort ranks every group at
once, and foreach multiplications apply the masks; there is no Python loop over filters.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from prunekit.engine.stages import Stage
from prunekit.errors import PrunekitError
from prunekit.methods.api import FinalizeResult, TrainingLoop
from prunekit.methods.checks import BOOL, check_options, int_at_least, is_num
from prunekit.methods.filter_selection import Comebacks, FilterSelectionMethod, ZeroingConfig
from prunekit.methods.filters import FilterThreshold
from prunekit.methods.optim import AHSGHT


@dataclass(frozen=True)
class HybridBatchSchedule:
    """Batch index within the epoch -> batch size: ``min(start + step * i, maximum)`` (the authors' 64 -> 128
    in steps of 4). The Trainer restarts the index every epoch, so the ramp restarts too."""

    start: int = 64
    step: int = 4
    maximum: int = 128

    def __call__(self, batch_index: int) -> int:
        return min(self.start + self.step * int(batch_index), self.maximum) if self.step else self.start

    def sizes(self, n: int) -> list[int]:
        """The first ``n`` batch sizes of an epoch."""
        return [self(i) for i in range(n)]


@dataclass
class SGHTConfig(ZeroingConfig):
    """AHSG-HT hyperparameters; defaults are the paper's CIFAR-10 ResNet-56 setting. The budget options (how
    many filters each group keeps) are :class:`~prunekit.methods.filter_selection.FilterBudgetConfig`'s."""

    keep_ratio: float = 0.6           # k = floor(keep_ratio * width) (the code's HTrate); unused with a budget
    norm: str = "l2"                  # filter score
    coupled: bool = True              # threshold residual groups (as one); False leaves them dense
    nu: float = 0.1                   # heavy-ball weight (paper: 0.1)
    hybrid_batch: bool = True         # batch size min(batch_start + batch_step * i, batch_max) in an epoch
    batch_start: int = 64
    batch_step: int = 4
    batch_max: int = 128
    reset_momentum: bool = False      # zero the momentum rows of zeroed filters (authors: keep them)
    zero_bn_scale: bool = False       # also zero the BN scale of zeroed channels (authors: shift only)
    ramp_epochs: int = 0              # k from full width to target linearly over these epochs (0: paper)
    finetune_epochs: int = 0          # > 0: remove the zero filters, then fine-tune (taken from the budget)
    finetune_lr: float = 0.01

    def validate(self) -> None:
        self.check_budget("sght")
        check_options("sght", self, {
            "nu": (lambda v: is_num(v) and 0 <= v < 1, "in [0, 1) (heavy-ball weight)"),
            **{k: int_at_least(lo) for k, lo in (("batch_start", 1), ("batch_step", 0), ("batch_max", 1),
                                                 ("ramp_epochs", 0), ("finetune_epochs", 0))},
            "finetune_lr": (lambda v: is_num(v) and v > 0, "a positive number"),
            **dict.fromkeys(("hybrid_batch", "reset_momentum", "zero_bn_scale"), BOOL)})
        if self.hybrid_batch and self.batch_max < self.batch_start:
            raise PrunekitError(f"method 'sght': batch_max ({self.batch_max}) must be >= batch_start "
                                f"({self.batch_start})")


class SGHT(FilterSelectionMethod):
    """AHSG-HT filter hard thresholding, trained from scratch (see the module docstring).

    Trainer: ``Trainer(model, data, callbacks=[SGHT(keep_ratio=0.6)]).fit(method.stages(200))`` -- the
    method supplies the :class:`AHSGHT` optimizer and the hybrid batch sizes. A user's own loop drives it with
    the sequence of calls every method shares (README.md, "Library"): ``on_after_optimizer_step`` applies
    ``H_k``, ``finalize`` removes the zero filters.
    """

    name = "sght"
    starts_from_scratch = True  # AHSG-HT trains from a random init; no pre-trained dense model
    budget_knobs: ClassVar[Mapping[str, str]] = {"macs": "macs_budget", "params": "params_budget", "latency": "latency"}
    Config = SGHTConfig
    config: SGHTConfig

    def __init__(self, config: Any = None, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        self.steps = 0
        self.phase = "sght"  # "sght" (thresholding), "finetune" (compact net, plain SGD), "done"
        self.comebacks = Comebacks()  # channels zeroed at one step and kept at the next
        self._keep_epoch: int | None = None  # the epoch whose k (see keep_at) H_k holds

    # -- schedule ---------------------------------------------------------------------------------
    def stages(self, epochs: int) -> list[Stage]:
        ft = self.config.finetune_epochs
        if ft and ft >= epochs:
            raise PrunekitError(f"method 'sght': finetune_epochs ({ft}) must be smaller than the total "
                                f"epochs ({epochs})")
        st = [Stage("sght", epochs - ft, kind="sght")]
        if ft:
            st.append(Stage("finetune", ft, kind="finetune", lr=self.config.finetune_lr))
        return st

    def batch_size_schedule(self, trainer: TrainingLoop) -> HybridBatchSchedule | None:
        c = self.config
        if not c.hybrid_batch or self.phase != "sght":
            return None
        return HybridBatchSchedule(c.batch_start, c.batch_step, c.batch_max)

    def configure_optimizers(self, trainer: TrainingLoop, lr: float) -> list[torch.optim.Optimizer] | None:
        """AHSG-HT's step during the thresholding stage; the engine's SGD during fine-tuning."""
        if self.phase != "sght":
            return None
        from prunekit.engine.stages import split_decay

        o = trainer.optim_cfg
        return [AHSGHT(split_decay(trainer.raw_model), lr=lr, momentum=o.momentum,
                       nesterov=o.nesterov and o.momentum > 0, weight_decay=o.weight_decay, nu=self.config.nu)]

    # -- H_k --------------------------------------------------------------------------------------
    def threshold_options(self) -> dict[str, Any]:
        return {**super().threshold_options(), "zero_bn_scale": self.config.zero_bn_scale}

    def bind(self, model: nn.Module, example_inputs: Any) -> FilterThreshold:
        self._keep_epoch = None  # a new H_k holds the target k: the ramp sets its own at the next step
        return super().bind(model, example_inputs)

    def keep_at(self, epoch: int) -> list[int]:
        """``k`` per group during ``epoch`` (0-based): the target, or the linear ramp towards it."""
        r = self.config.ramp_epochs
        if r <= 0:
            return list(self.target_keep)
        f = min(1.0, (epoch + 1) / r)
        return [max(k, round(g.size - (g.size - k) * f)) for g, k in
                zip(self.groups, self.target_keep, strict=True)]

    def current(self, trainer: TrainingLoop) -> FilterThreshold:
        """``H_k`` of the loop's model, holding this epoch's ``k``."""
        h = self.selector(trainer.raw_model, trainer.example_inputs)
        if self._keep_epoch != trainer.epoch:
            h.set_keep(self.keep_at(trainer.epoch))
            self._keep_epoch = trainer.epoch
        return h

    # -- hooks ------------------------------------------------------------------------------------
    def on_fit_start(self, trainer: TrainingLoop) -> None:
        if self.phase == "sght" and trainer.example_inputs is not None:
            self.bind(trainer.raw_model, trainer.example_inputs)

    def on_stage_start(self, trainer: TrainingLoop, stage: Stage) -> None:
        if stage.kind == "finetune" and self.phase == "sght":  # remove the zero filters, fine-tune the rest
            model = trainer.raw_model
            self.remove_filters(model, trainer.example_inputs, check="SGHT filter choices before removal")
            self.phase = "finetune"
            trainer.replace_model(model)
        elif stage.kind == "sght":
            self.phase = "sght"

    def on_after_optimizer_step(self, trainer: TrainingLoop) -> None:
        if self.phase != "sght":
            return
        h = self.current(trainer)
        self.comebacks.update(h(trainer.optimizers if self.config.reset_momentum else ()))  # w_{t+1} = H_k(w')
        self.steps += 1

    def on_epoch_end(self, trainer: TrainingLoop, metrics: dict[str, float]) -> None:
        if self.phase == "sght":  # under DDP: the same k filters on every rank
            self.comebacks.check_same("SGHT filter choices")

    @property
    def revived(self) -> int:
        """How many times a channel zeroed at one step was kept at the next (comebacks)."""
        return self.comebacks.count

    # -- deliverable ------------------------------------------------------------------------------
    def finalize(self, model: nn.Module, example_inputs: Any) -> FinalizeResult:
        """Remove the zero filters for real (in place), without fine-tuning; report widths and counts."""
        result = self.deliver(model, example_inputs, remove=self.phase == "sght", steps=self.steps,
                              revived=self.revived)
        self.phase = "done"
        return result

    # -- state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "phase": self.phase, "target_keep": list(self.target_keep),
                **self.comebacks.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        phase = state.get("phase", "sght")
        if phase not in ("sght", "finetune", "done"):
            raise PrunekitError(f"SGHT: checkpoint has an unknown phase {phase!r}")
        self.steps, self.phase = int(state.get("steps", 0)), phase
        self.comebacks.load_state_dict(state)
        self.release()


__all__ = ["SGHT", "HybridBatchSchedule", "SGHTConfig"]
