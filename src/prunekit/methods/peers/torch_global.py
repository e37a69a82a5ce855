"""Baseline: ``torch.nn.utils.prune`` global magnitude pruning + sparse fine-tuning (PyTorch's own tool).

The unstructured reference a PyTorch user already has::

    train dense
    torch.nn.utils.prune.global_unstructured(conv and linear weights, L1Unstructured, amount=1 - keep)
    fine-tune with the pruned weights held at zero

It differs from :mod:`prunekit.methods.peers.magnitude` in one respect: one threshold over all layers together
(global ranking, as PyTorch's tutorial does) rather than ``k`` per layer. The mask is computed by PyTorch's
own ``global_unstructured`` and then made permanent with ``prune.remove``; during fine-tuning the zeros are
held by prunekit's mask (gradient and weight masked every step) instead of PyTorch's forward pre-hook
re-parametrisation, so checkpoints stay plain state dicts, ``--resume`` works, and the deliverable is a
sparse file. Budget (``target`` / ``keep``), layers, schedule and lrs as for ``magnitude``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.utils.prune as torch_prune
from torch import nn

from prunekit.errors import PrunekitError
from prunekit.methods.api import MethodConfig
from prunekit.methods.peers.magnitude import MagnitudeConfig, OneShotMagnitude
from prunekit.surgery import MaskSet


@dataclass
class TorchGlobalConfig(MagnitudeConfig):
    """As ``magnitude``; ``scope`` and ``layer_keep`` are fixed by PyTorch's global pruning."""

    scope: str = "global"

    def validate(self) -> None:
        super().validate()
        if self.scope != "global" or self.layer_keep:
            raise PrunekitError("method 'torch-global': torch.nn.utils.prune.global_unstructured ranks all layers "
                                "together; scope must be 'global' and layer_keep empty (use 'magnitude' per layer)")


class TorchGlobalMagnitude(OneShotMagnitude):
    """Dense training, one ``torch.nn.utils.prune.global_unstructured`` step, sparse fine-tuning."""

    name: ClassVar[str] = "torch-global"
    Config: ClassVar[type[MethodConfig]] = TorchGlobalConfig

    @torch.no_grad()
    def threshold(self, model: nn.Module, optimizers: Sequence[torch.optim.Optimizer] = ()) -> None:
        layers = self.layers_of(model)
        pool = [(m, "weight") for m in layers.values()]
        total = sum(m.weight.numel() for m in layers.values())
        amount = total - max(1, min(total, int(self.keep * total + 0.5)))  # weights to zero, as an exact count
        orders = {name: list(m._parameters) for name, m in layers.items()}  # PyTorch re-registers "weight" last
        torch_prune.global_unstructured(pool, pruning_method=torch_prune.L1Unstructured, amount=amount)
        masks = {}
        for name, m in layers.items():
            masks[name] = m.weight_mask.detach().bool().clone()
            torch_prune.remove(m, "weight")  # back to a plain parameter (the same object) holding the zeros
            params = dict(m._parameters)
            m._parameters.clear()
            m._parameters.update({k: params[k] for k in orders[name]})
        self.maskset, self._pending = MaskSet(model, masks), None
        self._attach(model)
        self.maskset.apply_()
        for opt in optimizers:
            self.maskset.mask_optimizer_state_(opt)


__all__ = ["TorchGlobalConfig", "TorchGlobalMagnitude"]
