"""Peer of SGHT: Torch-Pruning's ``MagnitudePruner`` + fine-tuning, at a matched MACs target.

What a Torch-Pruning user writes (Fang et al., DepGraph, CVPR 2023)::

    imp = tp.importance.MagnitudeImportance(p=2)                 # group L2 norm, mean over the group
    pruner = tp.pruner.MagnitudePruner(model, example_inputs, importance=imp, pruning_ratio=r,
                                       pruning_ratio_dict={layer: r_layer, ...}, ignored_layers=[classifier])
    pruner.step()                                                # one shot
    fine-tune

Torch-Pruning has no MACs target of its own, so the number of channels to keep per group comes from
:mod:`prunekit.methods.budget` exactly as for SGHT and the other peers (``keep_ratio`` -> ``floor(ratio *
width)``, or ``macs_budget`` / ``params_budget`` solved within 1%), handed to the pruner as its per-layer
``pruning_ratio_dict``; which channels go is Torch-Pruning's own choice (its group magnitude importance:
filter, BN scale and the next layers' input slices, mean-reduced), and so is the surgery. The layers it may
prune are the producing layers of prunekit's filter groups (the classifier and, with ``coupled=False``,
residual groups are ignored), so its scope matches SGHT's. Schedule as :class:`~prunekit.methods.peers.l1_filter.
L1FilterPruning`: ``dense_fraction`` of the epochs dense, prune, fine-tune the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from prunekit.methods.api import FinalizeResult
from prunekit.methods.filter_selection import FilterBudgetConfig
from prunekit.methods.peers.l1_filter import OneShotFilterPruning, check_dense_split


@dataclass
class TPMagnitudeConfig(FilterBudgetConfig):
    """Torch-Pruning's defaults: L2 magnitude (``p=2``), local (per-layer) pruning, residual groups pruned."""

    norm: str = "l2"
    coupled: bool = True
    dense_fraction: float = 0.5
    finetune_lr: float | None = None

    def validate(self) -> None:
        self.check_budget("tp-magnitude")
        check_dense_split("tp-magnitude", self.dense_fraction, self.finetune_lr)


class TPMagnitude(OneShotFilterPruning):
    """Torch-Pruning's MagnitudePruner, one shot, then fine-tuning."""

    name = "tp-magnitude"
    Config = TPMagnitudeConfig
    config: TPMagnitudeConfig

    def prune(self, model: nn.Module, example_inputs: Any) -> FinalizeResult:
        """Prune ``model`` in place with Torch-Pruning to the per-group counts of the ratio or budget."""
        import torch_pruning as tp

        from prunekit import metrics
        from prunekit.metrics.counting import eval_mode, prepare_inputs

        c = self.config
        groups, keep = self._groups_and_keep(model, example_inputs)
        dense = metrics.count(model, example_inputs)
        mods = dict(model.named_modules())
        allowed = {n for g in groups for n in g.layers}  # every producing layer of an allowed group
        ignored = [m for n, m in mods.items() if isinstance(m, nn.modules.conv._ConvNd | nn.Linear)
                   and n not in allowed]
        # Torch-Pruning keeps int(C * (1 - ratio)) channels of a group: (k + 0.5) / C lands exactly on k
        ratios = {mods[n]: 1.0 - (k + 0.5) / g.size for g, k in zip(groups, keep, strict=True) for n in g.layers}
        args = prepare_inputs(model, example_inputs)
        with eval_mode(model):
            pruner = tp.pruner.MagnitudePruner(
                model, args[0] if len(args) == 1 else args,
                importance=tp.importance.MagnitudeImportance(p=1 if c.norm == "l1" else 2),
                pruning_ratio=0.0, pruning_ratio_dict=ratios, ignored_layers=ignored)
            pruner.step()
        after = metrics.count(model, example_inputs)
        mods = dict(model.named_modules())
        self.pruned = True
        self.keep = {g.name: int(getattr(mods[g.name], "out_channels", getattr(mods[g.name], "out_features", 0)))
                     for g in groups}
        self.prune_report = {"keep": dict(self.keep), "target_keep": {g.name: int(k) for g, k in
                                                                     zip(groups, keep, strict=True)},
                             "params_before": dense.params, "macs_before": dense.macs,
                             "macs_fraction": after.macs / dense.macs}
        return FinalizeResult(model, report=dict(self.prune_report))


__all__ = ["TPMagnitude", "TPMagnitudeConfig"]
