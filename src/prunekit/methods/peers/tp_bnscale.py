"""Torch-Pruning's own BN-scale pruner (``tp.pruner.BNScalePruner``), as a peer baseline for SSS.

What Torch-Pruning does (its Network Slimming, extended to coupled groups)::

    train with pruner.regularize(model) after each backward     (adds reg * sign(gamma) to BN scale grads)
    pruner.step(): score each coupled group by the mean |gamma| of its BNs (BNScaleImportance), remove the
        fraction ``pruning_ratio`` of channels with the smallest scores, globally (``global_pruning``)
    fine-tune                                                                     (``finetune_epochs``)

Everything is Torch-Pruning's code, driven through its public API; prunekit only supplies the schedule, the
classifier to leave alone (found by tracing which layer produces the model's output), and ``target_macs``:
the pruning ratio is found by bisection (on copies of the model) as the smallest that brings MACs, counted
by :func:`prunekit.metrics.count`, to or below that fraction of the unpruned MACs, so methods compare at
matched MACs. Unlike prunekit's methods it also prunes channels tied to residual sums (its groups).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prunekit.errors import PrunekitError
from prunekit.methods.api import FinalizeResult, MethodConfig, TrainingLoop
from prunekit.methods.base import PenaltyThenPrune


@dataclass
class TPBNScaleConfig(MethodConfig):
    """Torch-Pruning BNScalePruner settings (its defaults: reg 1e-5, local pruning; we default to global)."""

    reg: float = 1e-5
    pruning_ratio: float = 0.5
    target_macs: float | None = None  # keep at most this fraction of the unpruned MACs (overrides the ratio)
    global_pruning: bool = True
    round_to: int | None = None
    finetune_epochs: int = 0
    finetune_lr: float | None = None

    def validate(self) -> None:
        def bad(key: str, want: str) -> PrunekitError:
            return PrunekitError(f"method 'tp-bnscale': {key} must be {want}, got {getattr(self, key)!r}")

        def is_num(v: Any) -> bool:  # finite: NaN / inf would train on silently
            return not isinstance(v, bool) and isinstance(v, int | float) and math.isfinite(v)

        if not is_num(self.reg) or self.reg < 0:
            raise bad("reg", "a number >= 0")
        if not is_num(self.pruning_ratio) or not 0 <= self.pruning_ratio < 1:
            raise bad("pruning_ratio", "in [0, 1)")
        if self.target_macs is not None and (not is_num(self.target_macs) or not 0 < self.target_macs <= 1):
            raise bad("target_macs", "in (0, 1]")
        if not isinstance(self.global_pruning, bool):
            raise bad("global_pruning", "true or false")
        if self.round_to is not None and (isinstance(self.round_to, bool) or not isinstance(self.round_to, int)
                                          or self.round_to < 1):
            raise bad("round_to", "a positive integer or null")
        if isinstance(self.finetune_epochs, bool) or not isinstance(self.finetune_epochs, int) \
                or self.finetune_epochs < 0:
            raise bad("finetune_epochs", "an integer >= 0")
        if self.finetune_lr is not None and (not is_num(self.finetune_lr) or self.finetune_lr <= 0):
            raise bad("finetune_lr", "a positive number")


def output_layers(model: nn.Module, example_inputs: torch.Tensor) -> list[nn.Module]:
    """The leaf modules whose output is the model's output (the classifier), found with forward hooks."""
    seen: dict[int, nn.Module] = {}
    hooks = [m.register_forward_hook(lambda mod, i, o: seen.__setitem__(id(o), mod))
             for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            out = model(example_inputs)
    finally:
        for h in hooks:
            h.remove()
    outs = out if isinstance(out, list | tuple) else [out]
    return [seen[id(o)] for o in outs if id(o) in seen]


_MAX_RATIO = 0.99  # the largest Torch-Pruning ratio the target_macs search tries


class TPBNScale(PenaltyThenPrune):
    """Torch-Pruning's BNScalePruner with prunekit's schedule and a matched-MACs target."""

    name = "tp-bnscale"
    Config = TPBNScaleConfig

    def __init__(self, config: Any = None, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        self._pruner: Any = None
        self._example: torch.Tensor | None = None

    def make_pruner(self, model: nn.Module, example_inputs: torch.Tensor, ratio: float | None = None) -> Any:
        """A ``tp.pruner.BNScalePruner`` for ``model`` (classifier ignored)."""
        import torch_pruning as tp

        if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            raise PrunekitError("tp-bnscale: the model has no BatchNorm layer, so BN-scale pruning does not apply")
        modes = [(m, m.training) for m in model.modules()]  # Torch-Pruning traces in eval mode: restore
        try:
            with torch.enable_grad():
                return self._build(tp, model, example_inputs, ratio)
        finally:
            for m, t in modes:
                m.training = t

    def _build(self, tp: Any, model: nn.Module, example_inputs: torch.Tensor, ratio: float | None) -> Any:
        return tp.pruner.BNScalePruner(
            model, example_inputs, importance=tp.importance.BNScaleImportance(), reg=self.config.reg,
            pruning_ratio=self.config.pruning_ratio if ratio is None else ratio,
            global_pruning=self.config.global_pruning, round_to=self.config.round_to,
            ignored_layers=output_layers(model, example_inputs))

    # -- training -------------------------------------------------------------------------------------
    def on_model_changed(self, trainer: TrainingLoop) -> None:
        self._pruner = None

    def on_train_batch_start(self, trainer: TrainingLoop, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        if self._example is None:
            self._example = batch[0][:1].detach().clone()

    def on_before_optimizer_step(self, trainer: TrainingLoop) -> None:
        if not self.penalty_active(trainer):
            return
        model = trainer.raw_model
        if self._pruner is None:
            ex = trainer.example_inputs
            ex = ex if ex is not None else self._example
            if ex is None:
                raise PrunekitError("tp-bnscale: no example input to build the pruner; call "
                                    "on_train_batch_start(state, (x, y)) once, or set state.example_inputs")
            self._pruner = self.make_pruner(model, ex)
        self._pruner.regularize(model)  # Torch-Pruning: grad(gamma) += reg * sign(gamma)

    # -- pruning --------------------------------------------------------------------------------------
    def _macs_at(self, model: nn.Module, example_inputs: torch.Tensor, ratio: float) -> int:
        """MACs of a copy of ``model`` pruned at ``ratio``."""
        from prunekit import metrics

        trial = copy.deepcopy(model)
        with torch.enable_grad():
            self.make_pruner(trial, example_inputs, ratio).step()
        return metrics.count(trial, example_inputs).macs

    def prune(self, model: nn.Module, example_inputs: torch.Tensor) -> FinalizeResult:
        """Prune in place at ``pruning_ratio`` (or at the ratio meeting ``target_macs``); returns the result."""
        from prunekit import metrics

        model = getattr(model, "module", model)
        was = model.training
        model.eval()
        base = metrics.count(model, example_inputs)
        ratio = self.config.pruning_ratio
        if self.config.target_macs is not None:
            goal = self.config.target_macs * base.macs
            lo, hi = 0.0, _MAX_RATIO
            if self._macs_at(model, example_inputs, lo) > goal:
                least = math.inf  # the fewest MACs any ratio tried gave
                for _ in range(14):
                    mid = (lo + hi) / 2
                    macs = self._macs_at(model, example_inputs, mid)
                    least = min(least, macs)
                    if macs <= goal:
                        hi = mid
                    else:
                        lo = mid
                if least > goal:
                    raise PrunekitError(f"{self.name}: target_macs={self.config.target_macs:g} is unreachable: "
                                        f"Torch-Pruning leaves at least {least / base.macs:.4g} of the dense MACs "
                                        "at any ratio tried; raise target_macs")
                ratio = hi
            else:
                ratio = 0.0
        if ratio > 0:
            with torch.enable_grad():
                self.make_pruner(model, example_inputs, ratio).step()
        after = metrics.count(model, example_inputs)
        model.train(was)
        self.pruned = True
        self.report = {"method": self.name, "pruning_ratio": ratio,
                       "params": {"before": base.params, "after": after.params},
                       "macs": {"before": base.macs, "after": after.macs}}
        return FinalizeResult(model, report=dict(self.report))


__all__ = ["TPBNScale", "TPBNScaleConfig", "output_layers"]
