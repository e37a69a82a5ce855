"""Peer of SGHT: L1-norm filter pruning of a trained network, then fine-tuning (Li et al., ICLR 2017).

Li, Kadav, Durdanovic, Samet & Graf, "Pruning Filters for Efficient ConvNets"::

    train the dense network
    for every prunable layer: s_j = sum |F_j| (L1 norm of filter j); remove the m filters with the smallest s_j
        (and the matching input channels / BN of the next layers)          # "independent" selection, one shot
    retrain (fine-tune) the compact network

Where we follow the paper and where we chose:

* **Scope** -- Li et al. prune only the first conv of each residual block of a ResNet (the second one is
  tied to the shortcut); ``coupled=False`` (default) does the same: groups of filters coupled through a
  residual sum keep every channel. ``coupled=True`` also prunes those groups, scored jointly.
* **How many** -- the paper picks per-layer ratios from a sensitivity analysis; here ``keep_ratio``
  (``floor(ratio * width)``, per-layer overrides in ``layer_keep``) or a global ``macs_budget`` /
  ``params_budget`` solved for per-layer counts (:mod:`prunekit.methods.budget`), so the comparison with
  SGHT is at matched MACs; ``round_to`` keeps the widths multiples of 8 / 16 for fast kernels.
* **Schedule** -- the paper fine-tunes a fully trained network (40 epochs at lr 0.001 on CIFAR). For "same
  total epochs" comparisons, :meth:`stages` splits the budget: ``dense_fraction`` of the epochs train the
  dense net, the rest fine-tune the compact one (``finetune_lr``; ``None`` keeps the run's learning rate
  and schedule). ``dense_fraction=0`` prunes at once (start from a pretrained model).

In a user's loop: train, call :meth:`prune` once (it thins the model in place; rebuild the optimizer), keep
training, then :meth:`finalize` (which prunes if that has not happened yet).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from prunekit.engine.stages import Stage
from prunekit.errors import PrunekitError
from prunekit.methods import budget
from prunekit.methods.api import FinalizeResult, MethodConfig, PruningMethod, TrainingLoop
from prunekit.methods.filter_selection import FilterBudgetConfig


@dataclass
class L1FilterConfig(FilterBudgetConfig):
    """Li et al.'s defaults: L1 norm, residual-coupled layers left alone."""

    dense_fraction: float = 0.5  # share of the epochs that train the dense net before the one-shot prune
    finetune_lr: float | None = None

    def validate(self) -> None:
        self.check_budget("l1-filter")
        check_dense_split("l1-filter", self.dense_fraction, self.finetune_lr)


def check_dense_split(name: str, dense_fraction: Any, finetune_lr: Any) -> None:
    if isinstance(dense_fraction, bool) or not isinstance(dense_fraction, int | float) \
            or not 0 <= dense_fraction <= 1:
        raise PrunekitError(f"method {name!r}: dense_fraction must be in [0, 1], got {dense_fraction!r}")
    if finetune_lr is not None and (isinstance(finetune_lr, bool) or not isinstance(finetune_lr, int | float)
                                    or not 0 < finetune_lr < math.inf):
        raise PrunekitError(f"method {name!r}: finetune_lr must be a positive number or null, got {finetune_lr!r}")


class OneShotFilterPruning(PruningMethod):
    """Train dense, prune once at the start of the ``finetune`` stage, fine-tune. Subclasses score."""

    name = "one-shot-filter"
    Config: ClassVar[type[MethodConfig]] = L1FilterConfig
    budget_knobs: ClassVar[Mapping[str, str]] = {"macs": "macs_budget", "params": "params_budget",
                                                 "latency": "latency"}
    from_trained_options: ClassVar[Mapping[str, Any]] = {"dense_fraction": 0}

    def __init__(self, config: Any = None, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        self.pruned = False
        self.keep: dict[str, int] = {}
        self.prune_report: dict[str, Any] = {}
        self._example: Any = None

    def stages(self, epochs: int) -> list[Stage]:
        c = self.config
        dense = round(epochs * c.dense_fraction)
        out = [Stage("dense", dense)] if dense else []
        if epochs - dense > 0:
            out.append(Stage("finetune", epochs - dense, kind="finetune", lr=c.finetune_lr))
        if not out:
            raise PrunekitError(f"method {self.name!r}: no epochs to train")
        return out

    # -- the one-shot prune -----------------------------------------------------------------------
    def _groups_and_keep(self, model: nn.Module, example_inputs: Any) -> tuple[list[Any], list[int]]:
        groups, _, keep = budget.groups_and_keep(model, example_inputs, self.config, self.name)
        return groups, keep

    def channel_scores(self, h: Any) -> torch.Tensor:
        """One importance score per group channel (flat over groups); the filter norm by default."""
        return h.scores()

    def prune(self, model: nn.Module, example_inputs: Any) -> FinalizeResult:
        """Remove the lowest-norm filters of every group in place (one shot); the model and the surgery report."""
        from prunekit.methods.filters import FilterThreshold
        from prunekit.surgery.structured import remove_channels

        groups, keep = self._groups_and_keep(model, example_inputs)
        h = FilterThreshold(model, groups, keep, norm=self.config.norm)
        plan = h.plan(h.select(self.channel_scores(h)))  # the lowest-scoring filters of each group
        rep = remove_channels(model, plan, example_inputs)
        self.pruned = True
        self.keep = {g.name: int(k) for g, k in zip(groups, keep, strict=True)}
        self.prune_report = {"keep": dict(self.keep), "surgery": rep.summary()}
        return FinalizeResult(model, report=dict(self.prune_report))

    # -- hooks ------------------------------------------------------------------------------------
    def on_train_batch_start(self, trainer: TrainingLoop, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        if self._example is None:
            self._example = batch[0][:1].detach().clone()

    def _example_of(self, trainer: TrainingLoop) -> Any:
        ex = trainer.example_inputs
        ex = ex if ex is not None else self._example
        if ex is None:
            raise PrunekitError(f"{self.name}: no example inputs; call method.prune(model, example_inputs) "
                                "yourself in your own loop")
        return ex

    def on_stage_start(self, trainer: TrainingLoop, stage: Stage) -> None:
        if stage.kind == "finetune" and not self.pruned:
            model = trainer.raw_model
            self.prune(model, self._example_of(trainer))
            trainer.replace_model(model)

    def finalize(self, model: nn.Module, example_inputs: Any) -> FinalizeResult:
        from prunekit import metrics

        before = metrics.count(model, example_inputs)
        if not self.pruned:
            self.prune(model, example_inputs)
        after = metrics.count(model, example_inputs)
        report = {"method": self.name, **self.prune_report, "params_after": after.params, "macs_after": after.macs,
                  "params_before_finalize": before.params}
        return FinalizeResult(model, sparse=False, report=report)

    def state_dict(self) -> dict[str, Any]:
        return {"pruned": self.pruned, "keep": dict(self.keep)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pruned = bool(state.get("pruned", False))
        self.keep = {str(k): int(v) for k, v in dict(state.get("keep", {})).items()}


class L1FilterPruning(OneShotFilterPruning):
    """Li et al. (2017): remove the smallest-L1 filters of a trained network once, then fine-tune."""

    name = "l1-filter"
    Config = L1FilterConfig


__all__ = ["FilterBudgetConfig", "L1FilterConfig", "L1FilterPruning", "OneShotFilterPruning"]
