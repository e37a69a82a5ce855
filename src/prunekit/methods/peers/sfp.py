"""Peer of SGHT: soft filter pruning (He, Kang, Dong, Fu & Yang, IJCAI 2018).

SFP's algorithm (and its authors' code, which also masks once before the first epoch)::

    zero the lowest-L2 filters of every layer (rate P)
    for epoch in 1..E:
        train one epoch -- the zeroed filters keep being updated ("soft": they may come back)
        every `update_every` epochs: in every layer zero the P * width filters with the smallest L2 norm
    remove the zero filters (compact model)

It is SGHT's closest relative: the same "zero, keep training, re-select" idea, but the selection happens
once per epoch instead of after every mini-batch, with plain momentum SGD and fixed batches.

Where we follow the paper and where we chose:

* Selection uses :class:`prunekit.methods.filters.FilterThreshold` with SFP's L2 norm; residual-coupled
  filters form one group (``coupled=True``, default) so every zeroed channel can be removed (SFP's code
  masks every conv separately and reports theoretical speed-ups).
* SFP's code zeroes only the conv weights, and so do we by default (``zero_shift=False``): the BN after
  a zeroed filter (or the filter's own bias) still emits its shift, so when that is positive the ReLU
  passes gradient back and the filter can regrow ("soft"). At the end,
  :meth:`SoftFilterPruning.finalize` zeroes the selected channels' bias, BN shift and running mean too
  and removes them: that drops the constant the channel emitted, so the compact network differs slightly
  from the masked one (SFP reports the masked network's accuracy; we report the compact one's).
  ``zero_shift=True`` zeroes the shift at every selection, as SGHT does, which makes the removal exact
  but also blocks the gradient of the zeroed channels (ReLU at 0).
* Momentum buffers are left alone (SFP's code does).
* The number kept: ``keep_ratio = 1 - P`` per layer (``floor``), per-layer overrides, or a MACs / params
  budget solved for per-layer counts, so SFP can be matched to SGHT's MACs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from prunekit.errors import PrunekitError
from prunekit.methods import budget as _budget
from prunekit.methods.api import FinalizeResult, PruningMethod, TrainingLoop
from prunekit.methods.peers.l1_filter import FilterBudgetConfig


@dataclass
class SFPConfig(FilterBudgetConfig):
    """SFP's defaults: L2 norm, pruning rate P = 0.4 (keep 0.6) as in its ResNet-56 experiment."""

    keep_ratio: float = 0.6
    norm: str = "l2"
    coupled: bool = True
    update_every: int = 1  # epochs between re-selections (the code's epoch_prune)
    mask_at_start: bool = True
    zero_shift: bool = False  # SFP's code masks the conv weights only (not bias / BN)

    def validate(self) -> None:
        self._check_common("sfp")
        if isinstance(self.update_every, bool) or not isinstance(self.update_every, int) or self.update_every < 1:
            raise PrunekitError(f"method 'sfp': update_every must be an integer >= 1, got {self.update_every!r}")
        for key in ("mask_at_start", "zero_shift"):
            if not isinstance(getattr(self, key), bool):
                raise PrunekitError(f"method 'sfp': {key} must be true or false, got {getattr(self, key)!r}")


class SoftFilterPruning(PruningMethod):
    """Zero the smallest-norm filters after every epoch; they keep training; remove them at the end."""

    name = "sfp"
    starts_from_scratch = True  # He et al. train from scratch with soft zeroing every epoch
    budget_knobs: ClassVar[Mapping[str, str]] = {"macs": "macs_budget", "params": "params_budget",
                                                 "latency": "latency"}
    Config = SFPConfig
    config: SFPConfig

    def __init__(self, config: Any = None, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        self.selections = 0
        self.done = False
        self.threshold: Any = None
        self.groups: list[Any] = []
        self.keep: list[int] = []
        self._model: nn.Module | None = None
        self._example: Any = None

    def bind(self, model: nn.Module, example_inputs: Any) -> Any:
        """Find the filter groups, solve ``k`` per group, build the selector for ``model``."""
        from prunekit.methods.filters import FilterThreshold

        c = self.config
        self._example = example_inputs
        self.groups, _, self.keep = _budget.groups_and_keep(model, example_inputs, c, "sfp")
        self.threshold = FilterThreshold(model, self.groups, self.keep, norm=c.norm, zero_shift=c.zero_shift)
        self._model = model
        return self.threshold

    def _ensure(self, model: nn.Module, example: Any) -> Any:
        if self.threshold is None or self._model is not model:
            ex = example if example is not None else self._example
            if ex is None:
                raise PrunekitError("sfp: no example inputs; call method.bind(model, example_inputs) first in "
                                    "your own loop")
            self.bind(model, ex)
        return self.threshold

    def select_and_zero(self, model: nn.Module, example_inputs: Any = None) -> torch.Tensor:
        """One SFP selection: zero the lowest-norm filters of every group (they stay trainable)."""
        mask = self._ensure(model, example_inputs)()
        self.selections += 1
        return mask

    # -- hooks ------------------------------------------------------------------------------------
    def on_fit_start(self, trainer: TrainingLoop) -> None:
        if self.config.mask_at_start:
            self.select_and_zero(trainer.raw_model, trainer.example_inputs)

    def on_model_changed(self, trainer: TrainingLoop) -> None:
        self.threshold, self._model = None, None

    def on_train_batch_start(self, trainer: TrainingLoop, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        if self._example is None:
            self._example = batch[0][:1].detach().clone()

    def on_epoch_end(self, trainer: TrainingLoop, metrics: dict[str, float]) -> None:
        e = trainer.epoch + 1  # epochs completed, counting this one
        if e % self.config.update_every == 0:
            self.select_and_zero(trainer.raw_model, trainer.example_inputs)

    # -- deliverable ------------------------------------------------------------------------------
    def finalize(self, model: nn.Module, example_inputs: Any) -> FinalizeResult:
        """Select once more (the final masks), then remove the zero filters for real (in place)."""
        from prunekit import metrics
        from prunekit.methods.filters import remove_zero_filters

        before = metrics.count(model, example_inputs)
        report: dict[str, Any] = {"method": self.name}
        if not self.done:
            from prunekit.methods.filters import FilterThreshold

            self._ensure(model, example_inputs)
            # the last selection, zeroing the BN shift / running mean too so the channels can be removed
            FilterThreshold(model, self.groups, self.keep, norm=self.config.norm, zero_shift=True)()
            self.selections += 1
            report["keep"] = {g.name: int(k) for g, k in zip(self.groups, self.keep, strict=True)}
            rep = remove_zero_filters(model, example_inputs, layers=[n for g in self.groups for n in g.layers])
            report["surgery"] = rep.summary()
            self.done = True
            self.threshold, self._model = None, None
        after = metrics.count(model, example_inputs)
        report.update({"selections": self.selections, "params_before": before.params, "params_after": after.params,
                       "macs_before": before.macs, "macs_after": after.macs})
        return FinalizeResult(model, sparse=False, report=report)

    def state_dict(self) -> dict[str, Any]:
        return {"selections": self.selections, "done": self.done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.selections = int(state.get("selections", 0))
        self.done = bool(state.get("done", False))
        self.threshold, self._model = None, None


__all__ = ["SFPConfig", "SoftFilterPruning"]
