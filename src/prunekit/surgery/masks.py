"""Unstructured sparsity masks that stay applied through training (IHT's sparse phases).

Masks are re-applied *in place after* ``optimizer.step()`` (``w.masked_fill_(~mask, 0)``): no forward hook,
no reparametrisation, the model stays a plain model and the cost is one cheap kernel per layer per step.
Momentum and weight decay cannot revive a masked weight as long as :meth:`MaskSet.apply_` follows every
step; :meth:`MaskSet.mask_grads_` (before the step) and :meth:`MaskSet.mask_optimizer_state_` are there for
loops that also want the gradients / momentum of frozen weights to be zero.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from prunekit.errors import PrunekitError

Keep = float | int | Mapping[str, float | int]


def default_layers(model: nn.Module) -> list[str]:
    """Every conv and linear layer (the weights IHT prunes), in module order."""
    return [n for n, m in model.named_modules()
            if isinstance(m, nn.modules.conv._ConvNd | nn.Linear) and isinstance(m.weight, nn.Parameter)]


def keep_count(keep: float, n: int) -> int:
    """How many of ``n`` weights a keep fraction leaves: ``floor(keep * n + 0.5)``, clamped to ``[1, n]``.

    The one rounding rule of every top-k in prunekit (IHT, its peers, :meth:`MaskSet.from_topk`): round half
    *up* (0.5 of 5 weights keeps 3, where Python's banker's ``round(2.5)`` gives 2), and
    never fewer than one weight, so a layer is never cut off entirely.
    """
    return max(1, min(n, math.floor(keep * n + 0.5)))


def topk_mask(w: torch.Tensor, k: int) -> torch.Tensor:
    """supp(w, k): a bool mask shaped like ``w`` with exactly ``min(k, w.numel())`` True entries at the largest
    ``|w|`` (ties at the threshold broken by ``torch.topk``, so the count is exact)."""
    mask = torch.zeros(w.numel(), dtype=torch.bool, device=w.device)
    if k >= w.numel():
        mask.fill_(True)
    elif k > 0:
        mask[w.detach().abs().reshape(-1).topk(k, sorted=False).indices] = True
    return mask.view(w.shape)


def _count(keep: float | int, n: int, where: str) -> int:
    """A validated keep: an int is an exact count, a float a fraction rounded by :func:`keep_count`."""
    if isinstance(keep, bool) or not isinstance(keep, int | float):
        raise PrunekitError(f"{where}: keep must be a fraction (float) or a count (int), got {keep!r}")
    if isinstance(keep, float):
        if not 0.0 < keep <= 1.0:
            raise PrunekitError(f"{where}: keep fraction must be in (0, 1], got {keep}")
        return keep_count(keep, n)
    if not 0 <= keep <= n:
        raise PrunekitError(f"{where}: cannot keep {keep} of {n} weights")
    return keep


class MaskSet:
    """Boolean masks (True = weight kept) over the ``weight`` of chosen layers of one model."""

    def __init__(self, model: nn.Module, masks: Mapping[str, torch.Tensor]):
        self._model = model
        self._modules: dict[str, nn.Module] = {}
        self._masks: dict[str, torch.Tensor] = {}
        self._zero: dict[str, torch.Tensor] = {}
        self._set(masks)

    # -- construction -------------------------------------------------------------------------------------
    def _set(self, masks: Mapping[str, torch.Tensor]) -> None:
        modules = dict(self._model.named_modules())
        new_modules: dict[str, nn.Module] = {}
        new_masks: dict[str, torch.Tensor] = {}
        for name, mask in masks.items():
            m = modules.get(name) if isinstance(name, str) and name else None
            w = getattr(m, "weight", None)
            if m is None or not isinstance(w, torch.Tensor):
                raise PrunekitError(f"MaskSet: the model has no layer {name!r} with a weight")
            if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
                raise PrunekitError(f"MaskSet: mask for {name!r} must be a bool tensor")
            if tuple(mask.shape) != tuple(w.shape):
                raise PrunekitError(f"MaskSet: mask for {name!r} has shape {tuple(mask.shape)}, the weight has "
                                    f"{tuple(w.shape)}")
            new_modules[name] = m
            new_masks[name] = mask.detach().to(w.device).clone()
        self._modules, self._masks = new_modules, new_masks
        self._zero = {n: ~mk for n, mk in new_masks.items()}

    @classmethod
    def from_topk(cls, model: nn.Module, keep: Keep, *, layers: Iterable[str] | None = None,
                  scope: str = "layer") -> MaskSet:
        """Keep the ``keep`` largest-magnitude weights and mask the rest (exactly that many, ties broken
        arbitrarily; a fraction is rounded by :func:`keep_count`, half up).

        ``keep`` is a fraction (float in (0, 1]) or a count (int); with ``scope="layer"`` it applies to each
        layer (or give a ``{layer: keep}`` mapping), with ``scope="global"`` to all chosen layers together
        (one magnitude threshold). ``layers`` defaults to every conv and linear layer.
        """
        if scope not in ("layer", "global"):
            raise PrunekitError(f"MaskSet.from_topk: scope must be 'layer' or 'global', got {scope!r}")
        if isinstance(keep, Mapping):
            if scope != "layer":
                raise PrunekitError("MaskSet.from_topk: a per-layer keep mapping needs scope='layer'")
            names = list(keep) if layers is None else list(layers)
            per = dict(keep)
            missing = [n for n in names if n not in per]
            if missing:
                raise PrunekitError(f"MaskSet.from_topk: no keep value for layer {missing[0]!r}")
        else:
            names = default_layers(model) if layers is None else list(layers)
            per = dict.fromkeys(names, keep)
            pooled: float | int = keep
        modules = dict(model.named_modules())
        weights: dict[str, torch.Tensor] = {}
        for n in names:
            w = getattr(modules.get(n) if isinstance(n, str) and n else None, "weight", None)
            if not isinstance(w, torch.Tensor):
                raise PrunekitError(f"MaskSet.from_topk: the model has no layer {n!r} with a weight")
            weights[n] = w.detach()
        if not weights:
            raise PrunekitError("MaskSet.from_topk: no layers to mask")
        masks: dict[str, torch.Tensor] = {}
        if scope == "layer":
            for n, w in weights.items():
                k = _count(per[n], w.numel(), f"MaskSet.from_topk[{n}]")
                masks[n] = topk_mask(w, k)
        else:
            flat = torch.cat([w.abs().flatten().to(torch.float32) for w in weights.values()])
            k = _count(pooled, flat.numel(), "MaskSet.from_topk")
            allm = topk_mask(flat, k)
            off = 0
            for n, w in weights.items():
                masks[n] = allm[off:off + w.numel()].view_as(w)
                off += w.numel()
        return cls(model, masks)

    # -- use ------------------------------------------------------------------------------------------------
    @property
    def layers(self) -> list[str]:
        return list(self._masks)

    def mask(self, layer: str) -> torch.Tensor:
        """The bool mask of ``layer`` (True = kept)."""
        return self._masks[layer]

    def _weight(self, name: str) -> torch.Tensor:
        w = self._modules[name].weight
        if not isinstance(w, torch.Tensor):
            raise PrunekitError(f"MaskSet: layer {name!r} no longer has a weight tensor (build a new MaskSet)")
        z = self._zero[name]
        if w.shape != z.shape:
            raise PrunekitError(f"MaskSet: layer {name!r} now has weight shape {tuple(w.shape)}, the mask "
                                f"{tuple(z.shape)} (was the model pruned? build a new MaskSet)")
        if z.device != w.device:
            self._zero[name] = z = z.to(w.device)
            self._masks[name] = self._masks[name].to(w.device)
        return w

    @torch.no_grad()
    def apply_(self) -> None:
        """Zero the masked weights in place; call after every ``optimizer.step()``."""
        for n in self._zero:
            w = self._weight(n)
            w.masked_fill_(self._zero[n], 0)

    @torch.no_grad()
    def mask_grads_(self) -> None:
        """Zero the gradients of masked weights (before ``optimizer.step()``)."""
        for n in self._zero:
            w = self._weight(n)
            if w.grad is not None:
                w.grad.masked_fill_(self._zero[n], 0)

    @torch.no_grad()
    def mask_optimizer_state_(self, optimizer: torch.optim.Optimizer) -> None:
        """Zero the masked entries of every per-weight optimizer buffer (momentum, Adam moments)."""
        for n in self._zero:
            w = self._weight(n)
            for v in optimizer.state.get(w, {}).values():
                if isinstance(v, torch.Tensor) and v.shape == w.shape:
                    v.masked_fill_(self._zero[n], 0)

    def sparsity(self) -> dict[str, Any]:
        """``{"global": fraction masked, "layers": {layer: fraction masked}, "kept": {layer: count}}``."""
        layers, kept, total, masked = {}, {}, 0, 0
        for n, mk in self._masks.items():
            k = int(mk.sum())
            kept[n] = k
            layers[n] = 1.0 - k / mk.numel() if mk.numel() else 0.0
            total += mk.numel()
            masked += mk.numel() - k
        return {"global": masked / total if total else 0.0, "layers": layers, "kept": kept}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The masks as CPU bool tensors, keyed by layer."""
        return {n: mk.detach().cpu().clone() for n, mk in self._masks.items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Replace the masks (validated against the model's weights)."""
        if not isinstance(state, Mapping):
            raise PrunekitError("MaskSet.load_state_dict: expected a mapping of layer -> bool mask")
        self._set(state)

