"""Network Slimming (Liu et al., ICCV 2017): L1 on BN scales with plain SGD, then a global threshold.

The closest peer of SSS (Huang & Wang compare with it). Algorithm box::

    train with loss + s * sum |gamma_bn|     (sub-gradient s * sign(gamma) added to every BN scale's gradient
                                              after backward; plain momentum SGD, weight decay on all weights)
    sort |gamma| of the prunable channels of the whole network; remove the fraction ``prune_ratio`` with the
        smallest values (one global threshold)                        (or: the most that fit ``target_macs``)
    fine-tune the thinner network                                                  (``finetune_epochs``)

As in the authors' code the penalty goes on every BN layer; only channels that can be removed on their own
are pruned (the same channels SSS puts channel factors on: not the ones tied to a residual sum, not the
classifier). Ours, not the paper's: a conv / linear layer without a BN (LeNet-5) gets a
:class:`~prunekit.methods.sss.ChannelScale` in place of the missing BN scale, trained the same way (L1
sub-gradient, plain SGD), and folded into the layer when pruning. So on such networks this is SSS's model
with the sub-gradient + threshold route instead of APG, which is the comparison the SSS paper makes.
``target_macs`` (the fraction of the unpruned MACs to keep) replaces ``prune_ratio`` to compare methods at
matched MACs: the threshold is chosen as the smallest that brings the MACs to or below the target.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prunekit.errors import PrunekitError
from prunekit.io import set_submodule
from prunekit.methods.api import FinalizeResult, MethodConfig, TrainingLoop
from prunekit.methods.base import PenaltyThenPrune
from prunekit.methods.factors import NORM_LAYERS, ChannelScale, factor_modules, fold_factors, layer_sites


@dataclass
class SlimmingConfig(MethodConfig):
    """Network Slimming hyperparameters (paper: s = 1e-4 for VGG / CIFAR, 1e-5 for ResNet and DenseNet)."""

    sparsity: float = 1e-4  # s, the L1 weight on BN scales
    prune_ratio: float = 0.5  # fraction of the prunable channels removed (global threshold)
    target_macs: float | None = None  # instead: keep at most this fraction of the unpruned MACs
    finetune_epochs: int = 0  # fine-tuning after pruning, inside the same run
    finetune_lr: float | None = None  # default: the run's learning rate

    def validate(self) -> None:
        def num(key: str, lo: float, hi: float, lo_open: bool = False, hi_open: bool = True) -> None:
            v = getattr(self, key)
            ok = not isinstance(v, bool) and isinstance(v, int | float)
            ok = ok and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
            if not ok:
                raise PrunekitError(f"method 'slimming': {key} must be in {'(' if lo_open else '['}{lo}, {hi}"
                                    f"{')' if hi_open else ']'}, got {v!r}")

        num("sparsity", 0.0, float("inf"))
        num("prune_ratio", 0.0, 1.0)
        if self.target_macs is not None:
            num("target_macs", 0.0, 1.0, lo_open=True, hi_open=False)
        if isinstance(self.finetune_epochs, bool) or not isinstance(self.finetune_epochs, int) \
                or self.finetune_epochs < 0:
            raise PrunekitError(f"method 'slimming': finetune_epochs must be an integer >= 0, "
                                f"got {self.finetune_epochs!r}")
        if self.finetune_lr is not None:
            num("finetune_lr", 0.0, float("inf"), lo_open=True)


def scale_layers(model: nn.Module) -> dict[str, tuple[str, nn.Module]]:
    """Prunable channel sites: ``{producing layer: (scale module name, BN or ChannelScale)}``."""
    modules = dict(model.named_modules())
    out: dict[str, tuple[str, nn.Module]] = {}
    for name, m in factor_modules(model):
        if isinstance(m, ChannelScale):
            wrapper = name.rpartition(".")[0]
            out[wrapper] = (name, m)
    for s in layer_sites(model, modules):
        if s.kind == "channel" and isinstance(modules[s.target], NORM_LAYERS):
            out[s.layer] = (s.target, modules[s.target])
    return out


def _scale_of(m: nn.Module) -> torch.Tensor:
    if isinstance(m, ChannelScale):
        return m.factor
    w = m.weight  # a norm layer's gamma
    if not isinstance(w, torch.Tensor):
        raise PrunekitError(f"slimming: {type(m).__name__} has no scale (weight) to rank channels by")
    return w


def global_plan(model: nn.Module, num_remove: int) -> dict[str, list[int]]:
    """Remove the ``num_remove`` channels with the smallest ``|scale|`` over the whole network (ties by
    layer order, then index), keeping at least one channel per layer."""
    entries = []
    for i, (layer, (_, m)) in enumerate(scale_layers(model).items()):
        s = _scale_of(m).detach().abs().cpu()
        entries += [(float(v), i, c, layer) for c, v in enumerate(s.tolist())]
    entries.sort()
    plan: dict[str, list[int]] = {}
    widths = {layer: _scale_of(m).numel() for layer, (_, m) in scale_layers(model).items()}
    for _, _, c, layer in entries:
        if num_remove <= 0:
            break
        if len(plan.get(layer, [])) + 1 >= widths[layer]:
            continue
        plan.setdefault(layer, []).append(c)
        num_remove -= 1
    return plan


class NetworkSlimming(PenaltyThenPrune):
    """Network Slimming as a plug-in (see the module docstring)."""

    name = "slimming"
    starts_from_scratch = True  # Liu et al. train with the sparsity penalty from scratch, then prune and fine-tune
    Config = SlimmingConfig

    def prepare(self, model: nn.Module, example_inputs: Any = None) -> nn.Module:
        """Give BN-free prunable layers a channel scale (idempotent); BN layers use their own scale."""
        modules = dict(model.named_modules())
        if not factor_modules(model):
            for s in layer_sites(model, modules):
                if s.kind == "channel" and not isinstance(modules[s.target], NORM_LAYERS):
                    set_submodule(model, s.target, nn.Sequential(modules[s.target], ChannelScale(s.channels)))
        if not scale_layers(model):
            raise PrunekitError("slimming: the model has no prunable channel with a BN scale")
        return model

    # -- training: the L1 sub-gradient -------------------------------------------------------------
    @torch.no_grad()
    def on_before_optimizer_step(self, trainer: TrainingLoop) -> None:
        if not self.penalty_active(trainer):
            return
        s = self.config.sparsity
        for m in trainer.raw_model.modules():
            p = m.weight if isinstance(m, NORM_LAYERS) and m.affine else m.factor if isinstance(m, ChannelScale) \
                else None
            if p is not None and p.grad is not None:
                p.grad.add_(torch.sign(p), alpha=s)  # d/dgamma of s * |gamma|

    # -- pruning ----------------------------------------------------------------------------------------
    def on_fit_start(self, trainer: TrainingLoop) -> None:
        if self.config.target_macs is not None and trainer.example_inputs is not None:
            self.check_reachable(trainer.raw_model, trainer.example_inputs)  # before any training

    def check_reachable(self, model: nn.Module, example_inputs: torch.Tensor) -> None:
        """Refuse (one line) a ``target_macs`` below what removing every channel but one per layer leaves."""
        from prunekit import metrics

        model = getattr(model, "module", model)
        trial = copy.deepcopy(model).eval()
        base = metrics.count(trial, example_inputs).macs
        self.remove_smallest(trial, sum(_scale_of(m).numel() for _, m in scale_layers(trial).values()), example_inputs)
        least = metrics.count(trial, example_inputs).macs / max(base, 1)
        target = self.config.target_macs
        if target is not None and least > target:
            raise PrunekitError(f"{self.name}: target_macs={target:g} is unreachable: removing every prunable "
                                f"channel but one per layer still leaves {least:.4g} of the dense MACs; raise "
                                f"target_macs to at least {least:.4g}")

    def prune(self, model: nn.Module, example_inputs: torch.Tensor) -> FinalizeResult:
        """Fold channel scales, remove the channels under the global threshold; in place, returns the result."""
        from prunekit import metrics

        model = getattr(model, "module", model)
        was = model.training
        model.eval()
        base = metrics.count(model, example_inputs)
        total = sum(_scale_of(m).numel() for _, m in scale_layers(model).values())
        if self.config.target_macs is not None:
            self.check_reachable(model, example_inputs)
            goal = self.config.target_macs * base.macs

            def macs_after(k: int) -> int:
                trial = copy.deepcopy(model)
                self.remove_smallest(trial, k, example_inputs)
                return metrics.count(trial, example_inputs).macs

            lo, hi = 0, total  # smallest k with macs_after(k) <= goal (MACs fall as k grows)
            while lo < hi:
                mid = (lo + hi) // 2
                if macs_after(mid) <= goal:
                    hi = mid
                else:
                    lo = mid + 1
            k = lo
        else:
            k = round(self.config.prune_ratio * total)
        plan = self.remove_smallest(model, k, example_inputs)
        after = metrics.count(model, example_inputs)
        model.train(was)
        self.pruned = True
        self.report = {"method": self.name, "removed_channels": sum(len(v) for v in plan.values()),
                       "prunable_channels": total,
                       "params": {"before": base.params, "after": after.params},
                       "macs": {"before": base.macs, "after": after.macs},
                       "width_per_layer": {k2: _width(model.get_submodule(k2)) for k2 in plan}}
        return FinalizeResult(model, report=dict(self.report))

    @staticmethod
    def remove_smallest(model: nn.Module, k: int, example_inputs: torch.Tensor) -> dict[str, list[int]]:
        """Remove from ``model`` (in place) the ``k`` channels of smallest ``|scale|`` over all layers (at least
        one per layer stays), after folding the channel scales into the layers; returns the removal plan."""
        from prunekit import surgery

        plan = global_plan(model, k)
        fold_factors(model)
        if plan:
            surgery.remove_channels(model, plan, example_inputs, min_channels=1)
        return plan


def _width(m: nn.Module) -> int | None:
    for attr in ("out_channels", "out_features", "num_features"):
        if hasattr(m, attr):
            return int(getattr(m, attr))
    return None


__all__ = ["NetworkSlimming", "SlimmingConfig", "global_plan", "scale_layers"]
