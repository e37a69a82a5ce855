"""The filter selector ``H_k`` shared by SGHT, soft filter pruning and the one-shot filter peers.

:class:`FilterThreshold` keeps the ``k`` highest-norm channels of every channel group (a conv, or every conv
feeding one residual sum, found by :func:`prunekit.surgery.channel_groups`) and zeroes the others (filters,
biases, BN shift and running mean, momentum rows), vectorised over all layers: filters of equal fan-in are
scored in one matrix norm, one batched sort ranks every group, foreach multiplications apply the masks.
:func:`remove_zero_filters` then removes the zeroed channels for real (exact).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from prunekit.errors import PrunekitError

NORMS = ("l2", "l1")


def foreach_mul_(tensors: list[torch.Tensor], others: list[torch.Tensor]) -> None:
    """In-place ``t *= o`` for every pair (one fused kernel per dtype/device where torch offers it)."""
    if not tensors:
        return
    fn = getattr(torch, "_foreach_mul_", None)
    if fn is not None:
        fn(tensors, others)
    else:  # pragma: no cover - every supported torch has it
        for t, o in zip(tensors, others, strict=True):
            t.mul_(o)


class FilterThreshold:
    """``H_k`` over filter groups: keep the ``keep[g]`` highest-norm channels of every group, zero the rest.

    Attention groups are scored per head (the norm of all its channels' filters) and kept in whole heads.
    A group's norms may cover more channels than the group (a norm over a concatenation): only the
    group's own are zeroed. Bare per-channel parameters (layer-scale, GRN, position embeddings) are zeroed
    with their channels.

    A channel's score is the L2 (or L1) norm of all its filters in the group's producing layers (one conv,
    or every conv feeding one residual sum). Zeroing a channel zeroes those filters, their biases, the BN
    shift and running mean of the channel (and its BN scale with ``zero_bn_scale``), and, when optimizers are
    passed, the momentum buffer rows of those parameters. Exactly ``keep[g]`` channels survive in every
    group (ties broken towards the lower index). Built once per model; call it after every step.
    ``zero_shift=False`` touches only the filter weights, not their bias nor the BN (soft filter pruning's
    masks).
    """

    def __init__(self, model: nn.Module, groups: Sequence[Any], keep: Sequence[int], *, norm: str = "l2",
                 zero_shift: bool = True, zero_bn_scale: bool = False) -> None:
        if norm not in NORMS:
            raise PrunekitError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
        self.norm = norm
        self.groups = list(groups)
        mods = dict(model.named_modules())
        sizes = [int(g.size) for g in self.groups]
        self.sizes = sizes
        self.n_groups = len(sizes)
        self.cmax = max(sizes, default=1)
        offsets = [0]
        for s in sizes:
            offsets.append(offsets[-1] + s)
        self.n_slots = offsets[-1]
        weights: list[torch.Tensor] = []
        row_slot: list[torch.Tensor] = []
        vec: list[torch.Tensor] = []
        vec_slot: list[torch.Tensor] = []
        self.momentum_params: list[tuple[torch.Tensor, int, str]] = []  # (param, index in its list, "w"/"v")
        self.bare: list[tuple[torch.Tensor, int, torch.Tensor]] = []  # (parameter, channel dim, slot per entry)
        for gi, g in enumerate(self.groups):
            base = offsets[gi]
            for name in g.layers:
                m = mods[name]
                w = m.weight
                if isinstance(m, nn.modules.conv._ConvNd) and m.transposed:
                    raise PrunekitError(f"SGHT: layer {name!r} is a transposed convolution; its filters are not "
                                        "rows of the weight. Exclude it or use another method")
                slot = base + self._inverse(g.index[name], g.size, name)
                weights.append(w)
                row_slot.append(slot)
                self.momentum_params.append((w, len(weights) - 1, "w"))
                if zero_shift and getattr(m, "bias", None) is not None:
                    vec.append(m.bias)
                    vec_slot.append(slot)
                    self.momentum_params.append((m.bias, len(vec) - 1, "v"))
            for name in getattr(g, "norms", ()) if zero_shift else ():
                if name not in mods:  # a bare per-channel parameter (layer-scale, GRN, position embedding)
                    self._bare(model, name, g.index[name], base)
                    continue
                m = mods[name]
                width = next((t.numel() for t in (getattr(m, "bias", None), getattr(m, "running_mean", None),
                                                  getattr(m, "weight", None)) if isinstance(t, torch.Tensor)), 0)
                slot = self._partial(g.index[name], base, width)
                if getattr(m, "bias", None) is not None:
                    vec.append(m.bias)
                    vec_slot.append(slot)
                    self.momentum_params.append((m.bias, len(vec) - 1, "v"))
                if getattr(m, "running_mean", None) is not None:
                    vec.append(m.running_mean)
                    vec_slot.append(slot)
                if zero_bn_scale and getattr(m, "weight", None) is not None:
                    vec.append(m.weight)
                    vec_slot.append(slot)
                    self.momentum_params.append((m.weight, len(vec) - 1, "v"))
        dev = weights[0].device if weights else torch.device("cpu")
        self.device = dev
        self.weights = weights
        self.rows = [w.shape[0] for w in weights]
        # filters of equal size (fan-in) are scored together: one [filters, fan-in] matrix per bucket
        buckets: dict[int, list[int]] = {}
        for i, w in enumerate(weights):
            buckets.setdefault(w[0].numel(), []).append(i)
        self.buckets = [(idx, torch.cat([row_slot[i] for i in idx]).to(dev)) for idx in buckets.values()]
        self.row_slot = torch.cat(row_slot).to(dev) if row_slot else torch.zeros(0, dtype=torch.long, device=dev)
        self.vec = vec
        self.vec_len = [v.numel() for v in vec]
        self.vec_slot = torch.cat(vec_slot).to(dev) if vec_slot else torch.zeros(0, dtype=torch.long, device=dev)
        self.slot_pos = torch.cat([gi * self.cmax + torch.arange(s) for gi, s in enumerate(sizes)]).to(dev) \
            if sizes else torch.zeros(0, dtype=torch.long, device=dev)
        self.arange = torch.arange(self.cmax, device=dev)
        self.keep = torch.zeros(self.n_groups, dtype=torch.long, device=dev)
        # attention groups: a channel's score is its head's, so whole heads are kept (k in heads)
        self.head_groups = [(offsets[gi], g.size, int(g.head_dim)) for gi, g in enumerate(self.groups)
                            if getattr(g, "head_dim", 0)]
        self.set_keep(keep)

    @staticmethod
    def _inverse(index: Sequence[int], size: int, name: str) -> torch.Tensor:
        """Layer row -> group channel, from the group's channel -> layer row map."""
        idx = torch.as_tensor(list(index), dtype=torch.long)
        if idx.numel() != size or bool((idx < 0).any()) or sorted(idx.tolist()) != list(range(size)):
            raise PrunekitError(f"SGHT: layer {name!r} does not map one-to-one onto its channel group")
        inv = torch.empty(size, dtype=torch.long)
        inv[idx] = torch.arange(size)
        return inv

    def _partial(self, index: Sequence[int], base: int, width: int) -> torch.Tensor:
        """Channel -> group slot for the ``width`` channels of a norm or parameter that may extend beyond the
        group (a norm over a concatenation): its other channels get the always-kept slot ``n_slots``."""
        idx = [int(i) for i in index]
        slot = torch.full((max(width, max(idx, default=-1) + 1),), self.n_slots, dtype=torch.long)
        for c, i in enumerate(idx):
            if i >= 0:
                slot[i] = base + c
        return slot

    def _bare(self, model: nn.Module, name: str, index: Sequence[int], base: int) -> None:
        """A bare per-channel parameter: zeroed with its channels along its channel dimension (the last one of
        that width, as in ``[1, tokens, C]`` / ``[C]``). One shared by several channels (a relative-position
        table over heads) is left alone: it does not carry a channel's output."""
        idx = [int(i) for i in index if int(i) >= 0]
        if len(set(idx)) != len(idx):
            return
        p = model.get_parameter(name)
        dims = [d for d in range(p.dim()) if p.shape[d] > max(idx, default=0) and p.shape[d] > 1]
        if not dims:
            return
        dim = dims[-1]
        self.bare.append((p, dim, self._partial(index, base, p.shape[dim])))

    def set_keep(self, keep: Sequence[int]) -> None:
        """Set ``k`` per group (1 <= k <= width)."""
        keep = [int(k) for k in keep]
        if len(keep) != self.n_groups or any(not 1 <= k <= s for k, s in zip(keep, self.sizes, strict=True)):
            raise PrunekitError(f"SGHT: need one keep count in 1..width per group ({self.n_groups} groups), "
                                f"got {keep}")
        for g, k in zip(self.groups, keep, strict=True):
            hd = int(getattr(g, "head_dim", 0))
            if hd and k % hd:
                raise PrunekitError(f"SGHT: group {g.name!r} holds attention heads of {hd} channels; keep a "
                                    f"multiple of {hd} channels (whole heads), got {k}")
        self.keep.copy_(torch.tensor(keep, dtype=torch.long))

    @torch.no_grad()
    def scores(self) -> torch.Tensor:
        """Norm of every group channel (flat over groups), from the filters of all its producing layers."""
        s = torch.zeros(self.n_slots, dtype=self.weights[0].dtype if self.weights else torch.float32,
                        device=self.device)
        order = 2 if self.norm == "l2" else 1
        for idx, slots in self.buckets:
            # per filter, on each weight in place: the same row reductions as over the bucket's concatenation,
            # without copying every weight into it first (that copy was 2/3 of the scoring's memory traffic)
            per_row = torch.cat([torch.linalg.vector_norm(self.weights[i].detach().reshape(self.rows[i], -1),
                                                          ord=order, dim=1) for i in idx])
            s.index_add_(0, slots, per_row.square() if self.norm == "l2" else per_row)  # coupled: one score
        for base, size, hd in self.head_groups:  # one score per head, shared by its channels
            head = s[base:base + size].view(-1, hd).sum(1, keepdim=True)
            s[base:base + size] = head.expand(-1, hd).reshape(-1)
        return s.sqrt_() if self.norm == "l2" else s

    @torch.no_grad()
    def select(self, scores: torch.Tensor) -> torch.Tensor:
        """Boolean keep mask over group channels: the top ``keep[g]`` scores of each group."""
        g, c = self.n_groups, self.cmax
        pad = scores.new_full((g * c,), -math.inf)
        pad[self.slot_pos] = scores
        order = torch.argsort(pad.view(g, c), dim=1, descending=True, stable=True)
        rank = torch.empty_like(order)
        rank.scatter_(1, order, self.arange.expand(g, c))                        # rank of every channel
        return (rank < self.keep[:, None]).view(-1)[self.slot_pos]

    @torch.no_grad()
    def apply(self, keep_mask: torch.Tensor, optimizers: Sequence[torch.optim.Optimizer] = ()) -> None:
        """Zero every channel not in ``keep_mask`` (filters, biases, BN shift / mean, momentum rows)."""
        if not self.weights:
            return
        dtype = self.weights[0].dtype
        row_mask = keep_mask[self.row_slot].to(dtype)
        padded = torch.cat([keep_mask, keep_mask.new_ones(1)])  # slot n_slots: a channel outside the group
        wmasks = [m.view(-1, *([1] * (w.dim() - 1)))  # one 0/1 per filter, broadcast over the filter
                  for m, w in zip(row_mask.split(self.rows), self.weights, strict=True)]
        foreach_mul_(self.weights, wmasks)
        vmasks = list(padded[self.vec_slot].to(dtype).split(self.vec_len)) if self.vec else []
        foreach_mul_(self.vec, vmasks)
        for p, dim, slots in self.bare:
            shape = [1] * p.dim()
            shape[dim] = -1
            p.mul_(padded[slots.to(padded.device)].to(p.dtype).view(shape))
        for opt in optimizers:
            bufs, masks = [], []
            for p, i, kind in self.momentum_params:
                st = opt.state.get(p)
                buf = st.get("momentum_buffer") if st else None
                if buf is not None:
                    bufs.append(buf)
                    masks.append(wmasks[i] if kind == "w" else vmasks[i])
            foreach_mul_(bufs, masks)

    def plan(self, keep_mask: torch.Tensor) -> dict[str, list[int]]:
        """A :func:`prunekit.surgery.remove_channels` plan dropping every channel not in ``keep_mask``
        (keyed by group root, in the root layer's numbering)."""
        drop = (~keep_mask).cpu()
        out, off = {}, 0
        for g, size in zip(self.groups, self.sizes, strict=True):
            chans = torch.nonzero(drop[off:off + size]).flatten().tolist()
            if chans:
                out[g.name] = sorted(int(g.index[g.name][c]) for c in chans)
            off += size
        return out

    def __call__(self, optimizers: Sequence[torch.optim.Optimizer] = ()) -> torch.Tensor:
        """``H_k``: score, select and zero; returns the keep mask over group channels."""
        mask = self.select(self.scores())
        self.apply(mask, optimizers)
        return mask

    def nonzero_filters(self) -> list[list[int]]:
        """Non-zero filters per group, per producing layer (for checks and reports)."""
        out, i = [], 0
        for g in self.groups:
            row = []
            for _ in g.layers:
                w = self.weights[i]
                row.append(int((w.detach().reshape(w.shape[0], -1).abs().sum(1) > 0).sum()))
                i += 1
            out.append(row)
        return out


def remove_zero_filters(model: nn.Module, example_inputs: Any, layers: Iterable[str] | None = None) -> Any:
    """Remove, in place, every channel whose filters are zero and whose BN maps zero to zero (exact)."""
    from prunekit.surgery.structured import remove_channels, zero_channel_plan

    plan = zero_channel_plan(model, example_inputs, layers=layers)
    return remove_channels(model, plan, example_inputs)


__all__ = ["NORMS", "FilterThreshold", "foreach_mul_", "remove_zero_filters"]
