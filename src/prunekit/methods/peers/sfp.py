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

from prunekit.methods.api import FinalizeResult, TrainingLoop
from prunekit.methods.checks import BOOL, check_options, int_at_least
from prunekit.methods.filter_selection import FilterSelectionMethod, ZeroingConfig


@dataclass
class SFPConfig(ZeroingConfig):
    """SFP's defaults: L2 norm, pruning rate P = 0.4 (keep 0.6) as in its ResNet-56 experiment."""

    keep_ratio: float = 0.6
    norm: str = "l2"
    coupled: bool = True
    update_every: int = 1  # epochs between re-selections (the code's epoch_prune)
    mask_at_start: bool = True
    zero_shift: bool = False  # SFP's code masks the conv weights only (not bias / BN)

    def validate(self) -> None:
        self.check_budget("sfp")
        check_options("sfp", self, {"update_every": int_at_least(1), "mask_at_start": BOOL})


class SoftFilterPruning(FilterSelectionMethod):
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

    def select_and_zero(self, model: nn.Module, example_inputs: Any = None) -> torch.Tensor:
        """One SFP selection: zero the lowest-norm filters of every group (they stay trainable)."""
        mask = self.selector(model, example_inputs)()
        self.selections += 1
        return mask

    # -- hooks ------------------------------------------------------------------------------------
    def on_fit_start(self, trainer: TrainingLoop) -> None:
        if self.config.mask_at_start:
            self.select_and_zero(trainer.raw_model, trainer.example_inputs)

    def on_epoch_end(self, trainer: TrainingLoop, metrics: dict[str, float]) -> None:
        e = trainer.epoch + 1  # epochs completed, counting this one
        if e % self.config.update_every == 0:
            self.select_and_zero(trainer.raw_model, trainer.example_inputs)

    # -- deliverable ------------------------------------------------------------------------------
    def finalize(self, model: nn.Module, example_inputs: Any) -> FinalizeResult:
        """Select once more (the final masks, zeroing the BN shift / running mean too so the channels can be
        removed), then remove the zero filters for real (in place)."""
        remove = not self.done
        self.selections += int(remove)
        result = self.deliver(model, example_inputs, remove=remove, selections=self.selections)
        self.done = True
        return result

    def state_dict(self) -> dict[str, Any]:
        return {"selections": self.selections, "done": self.done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.selections = int(state.get("selections", 0))
        self.done = bool(state.get("done", False))
        self.release()


__all__ = ["SFPConfig", "SoftFilterPruning"]
