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
``torch.optim.Optimizer``) and ``H_k`` is :class:`FilterThreshold`, applied by :class:`SGHT` (a
callback) right after every optimizer step, so the built-in Trainer and a user's own loop can both drive it.

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
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from prunekit.engine.distributed import check_same
from prunekit.engine.stages import Stage
from prunekit.errors import PrunekitError
from prunekit.methods import budget
from prunekit.methods.api import FinalizeResult, MethodConfig, PruningMethod, TrainingLoop, latency_option
from prunekit.methods.checks import BOOL, check_options, int_at_least, is_num, one_of
from prunekit.methods.filters import NORMS, FilterThreshold, remove_zero_filters
from prunekit.methods.optim import AHSGHT


# --------------------------------------------------------------------------------------------- batches
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


# --------------------------------------------------------------------------------------------- method

@dataclass
class SGHTConfig(MethodConfig):
    """AHSG-HT hyperparameters; defaults are the paper's CIFAR-10 ResNet-56 setting."""

    keep_ratio: float = 0.6           # k = floor(keep_ratio * width) (the code's HTrate); unused with a budget
    layer_keep: dict[str, float] = field(default_factory=dict)  # group (any member layer) -> its own ratio
    macs_budget: float | None = None  # keep this fraction of the dense MACs (k per group solved, within tol)
    params_budget: float | None = None  # ... or of the dense parameters
    budget_tol: float = 0.01
    min_keep: int = 1
    round_to: int = 1  # keep thinned widths multiples of this (8 / 16 suit GPU kernels); 1 = any width
    norm: str = "l2"                  # filter score
    nu: float = 0.1                   # heavy-ball weight (paper: 0.1)
    hybrid_batch: bool = True         # batch size min(batch_start + batch_step * i, batch_max) in an epoch
    batch_start: int = 64
    batch_step: int = 4
    batch_max: int = 128
    reset_momentum: bool = False      # zero the momentum rows of zeroed filters (authors: keep them)
    zero_shift: bool = True           # zero the BN shift / running mean (and bias) of zeroed channels
    zero_bn_scale: bool = False       # also zero the BN scale of zeroed channels (authors: shift only)
    include_linear: bool = True       # threshold hidden linear layers too (never the classifier)
    coupled: bool = True              # threshold residual groups (as one); False leaves them dense
    ramp_epochs: int = 0              # k from full width to target linearly over these epochs (0: paper)
    finetune_epochs: int = 0          # > 0: remove the zero filters, then fine-tune (taken from the budget)
    finetune_lr: float = 0.01
    latency: dict[str, Any] | float | None = None  # {latency: f, runtime, batch, threads}: a measured-latency budget

    def validate(self) -> None:
        budget.validate_budget_options("sght", self.keep_ratio, self.layer_keep, self.macs_budget,
                                       self.params_budget, self.budget_tol)
        self.latency = latency_option("sght", self.latency, macs_budget=self.macs_budget,
                                      params_budget=self.params_budget)
        check_options("sght", self, {
            "norm": one_of(NORMS), "nu": (lambda v: is_num(v) and 0 <= v < 1, "in [0, 1) (heavy-ball weight)"),
            **{k: int_at_least(lo) for k, lo in (("batch_start", 1), ("batch_step", 0), ("batch_max", 1),
                                                 ("min_keep", 1), ("round_to", 1), ("ramp_epochs", 0),
                                                 ("finetune_epochs", 0))},
            "finetune_lr": (lambda v: is_num(v) and v > 0, "a positive number"),
            **dict.fromkeys(("hybrid_batch", "reset_momentum", "zero_shift", "zero_bn_scale", "include_linear",
                             "coupled"), BOOL)})
        if self.hybrid_batch and self.batch_max < self.batch_start:
            raise PrunekitError(f"method 'sght': batch_max ({self.batch_max}) must be >= batch_start "
                                f"({self.batch_start})")


class SGHT(PruningMethod):
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
        self.phase = "sght"  # "sght" (thresholding), "finetune" (compact net, plain SGD)
        self.threshold: FilterThreshold | None = None
        self.groups: list[Any] = []
        self.cost: budget.CostModel | None = None
        self.target_keep: list[int] = []
        self._model: nn.Module | None = None
        self._example: Any = None
        self._keep_epoch: int | None = None
        self._last_mask: torch.Tensor | None = None
        self._revived: torch.Tensor | int = 0

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

    # -- binding to a model -----------------------------------------------------------------------
    def bind(self, model: nn.Module, example_inputs: Any) -> FilterThreshold:
        """Find the filter groups of ``model``, solve ``k`` per group and build ``H_k`` for it."""
        c = self.config
        self._example = example_inputs
        self.groups, self.cost, self.target_keep = budget.groups_and_keep(model, example_inputs, c, "SGHT")
        self.threshold = FilterThreshold(model, self.groups, self.target_keep, norm=c.norm,
                                         zero_shift=c.zero_shift, zero_bn_scale=c.zero_bn_scale)
        self._model = model
        self._keep_epoch = None
        return self.threshold

    def keep_at(self, epoch: int) -> list[int]:
        """``k`` per group during ``epoch`` (0-based): the target, or the linear ramp towards it."""
        r = self.config.ramp_epochs
        if r <= 0:
            return list(self.target_keep)
        f = min(1.0, (epoch + 1) / r)
        return [max(k, round(g.size - (g.size - k) * f)) for g, k in
                zip(self.groups, self.target_keep, strict=True)]

    def _ensure(self, trainer: TrainingLoop) -> FilterThreshold:
        model = trainer.raw_model
        if self.threshold is None or self._model is not model:
            example = trainer.example_inputs
            example = example if example is not None else self._example
            if example is None:
                raise PrunekitError("SGHT: no example inputs to analyse the model; in your own loop set "
                                    "LoopState(example_inputs=...) or call method.bind(model, example_inputs)")
            self.bind(model, example)
        assert self.threshold is not None
        epoch = trainer.epoch
        if self._keep_epoch != epoch:
            self.threshold.set_keep(self.keep_at(epoch))
            self._keep_epoch = epoch
        return self.threshold

    # -- hooks ------------------------------------------------------------------------------------
    def on_fit_start(self, trainer: TrainingLoop) -> None:
        if self.phase == "sght" and trainer.example_inputs is not None:
            self.bind(trainer.raw_model, trainer.example_inputs)

    def on_model_changed(self, trainer: TrainingLoop) -> None:
        self.threshold, self._model = None, None  # rebuilt lazily for the new model object

    def on_train_batch_start(self, trainer: TrainingLoop, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        if self._example is None and trainer.example_inputs is None:
            self._example = batch[0][:1].detach().clone()

    def on_stage_start(self, trainer: TrainingLoop, stage: Stage) -> None:
        if stage.kind == "finetune" and self.phase == "sght":
            model = trainer.raw_model
            h = self._ensure(trainer)
            h.set_keep(self.target_keep)
            check_same(h(()), "SGHT filter choices before removal")
            example = trainer.example_inputs
            remove_zero_filters(model, example if example is not None else self._example,
                                layers=[n for g in self.groups for n in g.layers])
            self.phase = "finetune"
            self.threshold, self._model = None, None
            trainer.replace_model(model)
        elif stage.kind == "sght":
            self.phase = "sght"

    def on_after_optimizer_step(self, trainer: TrainingLoop) -> None:
        if self.phase != "sght":
            return
        h = self._ensure(trainer)
        mask = h(trainer.optimizers if self.config.reset_momentum else ())   # w_{t+1} = H_k(w')
        if self._last_mask is not None and self._last_mask.shape == mask.shape:
            self._last_mask = self._last_mask.to(mask.device)
            self._revived += (mask & ~self._last_mask).sum()                 # on the device: no sync
        self._last_mask = mask
        self.steps += 1

    def on_epoch_end(self, trainer: TrainingLoop, metrics: dict[str, float]) -> None:
        if self.phase == "sght" and self._last_mask is not None:  # under DDP: the same k filters on every rank
            check_same(self._last_mask, "SGHT filter choices")

    @property
    def revived(self) -> int:
        """How many times a channel zeroed at one step was kept at the next (comebacks)."""
        return int(self._revived)

    # -- deliverable ------------------------------------------------------------------------------
    def finalize(self, model: nn.Module, example_inputs: Any) -> FinalizeResult:
        """Remove the zero filters for real (in place), without fine-tuning; report widths and counts."""
        from prunekit import metrics

        report: dict[str, Any] = {"method": self.name, "steps": self.steps}
        before = metrics.count(model, example_inputs)
        if self.phase == "sght":
            if self.threshold is None or self._model is not model:
                self.bind(model, example_inputs)
                self._keep_epoch = None
            assert self.threshold is not None
            final = self.threshold
            if not self.config.zero_shift:  # the removal needs the shift zero: final H_k with it
                final = FilterThreshold(model, self.groups, self.target_keep, norm=self.config.norm,
                                        zero_bn_scale=self.config.zero_bn_scale)
            final.set_keep(self.target_keep)
            final()  # idempotent on a thresholded network; enforces H_k in a user's loop
            report["revived"] = self.revived
            report["keep"] = {g.name: int(k) for g, k in zip(self.groups, self.target_keep, strict=True)}
            report["skipped"] = dict(getattr(self.groups, "skipped", {}))  # left dense at bind, with why
            report["width"] = {g.name: int(g.size) for g in self.groups}
            report["nonzero_filters"] = {g.name: nz for g, nz in
                                         zip(self.groups, self.threshold.nonzero_filters(), strict=True)}
            if self.cost is not None:
                report["predicted_macs"] = self.cost.macs(self.target_keep)
                report["predicted_params"] = self.cost.params(self.target_keep)
            surgery = remove_zero_filters(model, example_inputs, layers=[n for g in self.groups for n in g.layers])
            report["surgery"] = surgery.summary()
            self.threshold, self._model = None, None
            self.phase = "done"
        after = metrics.count(model, example_inputs)
        report.update({"params_before": before.params, "params_after": after.params,
                       "macs_before": before.macs, "macs_after": after.macs})
        return FinalizeResult(model, sparse=False, report=report)

    # -- state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        st: dict[str, Any] = {"steps": self.steps, "phase": self.phase, "target_keep": list(self.target_keep),
                              "revived": self.revived}
        if self._last_mask is not None:
            st["last_mask"] = self._last_mask.detach().cpu()
        return st

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = int(state.get("steps", 0))
        self._revived = int(state.get("revived", 0))
        last = state.get("last_mask")
        self._last_mask = last.bool() if isinstance(last, torch.Tensor) else None
        phase = state.get("phase", "sght")
        if phase not in ("sght", "finetune", "done"):
            raise PrunekitError(f"SGHT: checkpoint has an unknown phase {phase!r}")
        self.phase = phase
        self.threshold, self._model = None, None


__all__ = ["SGHT", "HybridBatchSchedule", "SGHTConfig"]
