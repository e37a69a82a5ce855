"""Structured surgery: physically remove output channels / neurons (and everything coupled to them).

A *plan* maps a layer name to the output channels (conv) or neurons (linear) to remove, in that layer's
current numbering. :func:`remove_channels` resolves the plan on the coupled groups found by Torch-Pruning's
dependency graph (see :mod:`prunekit.surgery.graph`), checks it as a whole (indices, minimum widths,
grouped convolutions), builds every new tensor, and only then swaps them into the model, which stays made
of plain torch layers whose config attributes (``in_channels``, ``num_features``, ...) match their weights,
so :func:`prunekit.io.save` records the thinner architecture and :func:`prunekit.io.load` rebuilds it.

Parameters are *replaced* by new ``nn.Parameter`` objects: build the optimizer (and any EMA, masks or
hooks holding parameters) again after surgery.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import torch
from torch import nn

from prunekit.errors import PrunekitError
from prunekit.surgery import history
from prunekit.surgery.graph import (
    HEAD_COUNT_ATTRS,
    IN,
    OUT,
    Analysis,
    GraphGroup,
    HeadsMap,
    analyse,
    forward_fn,
    is_depthwise,
    is_producer,
    preserve_mode,
)

# ---------------------------------------------------------------------------------------------------------
# report


@dataclass
class LayerChange:
    """How one layer's widths changed (``None`` where the layer has no such dimension)."""

    name: str
    kind: str
    in_before: int | None = None
    in_after: int | None = None
    out_before: int | None = None
    out_after: int | None = None
    groups_before: int | None = None
    groups_after: int | None = None


@dataclass
class SurgeryReport:
    """What a surgery call did; also returned when the model was modified in place."""

    layers: dict[str, LayerChange] = field(default_factory=dict)
    """Every module whose shape changed (conv, linear, norm, bare parameter)."""
    removed: dict[str, list[int]] = field(default_factory=dict)
    """Group root layer -> removed channels, in that root layer's numbering before the call."""
    coupled: dict[str, list[str]] = field(default_factory=dict)
    """Plan layer -> other conv/linear layers whose outputs shrank with it (residual groups)."""
    adjusted: dict[str, str] = field(default_factory=dict)
    """Group root -> how ``clamp`` / ``round_to`` changed the requested removal."""
    blocks: dict[str, str] = field(default_factory=dict)
    """Removed block -> the module that replaced it (:func:`remove_blocks`)."""
    params_before: int = 0
    params_after: int = 0
    verified: bool = False
    """The pruned model's output on the example inputs was checked equal to the masked model's."""
    max_diff: float = 0.0
    """Largest absolute output difference seen by that check."""
    approximate: dict[str, str] = field(default_factory=dict)
    """Group / block -> why its removal cannot equal plain masking and what it was checked against instead
    (a LayerNorm / GroupNorm over the removed channels renormalises the others: the reference computes that
    norm over the kept channels only)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)

    def summary(self) -> str:
        """A short human-readable table."""
        lines = [f"params {self.params_before:,} -> {self.params_after:,}"]
        for root, idx in self.removed.items():
            extra = f" (coupled: {', '.join(self.coupled.get(root, []))})" if self.coupled.get(root) else ""
            lines.append(f"  group {root}: removed {len(idx)} channels{extra}")
        for root, note in self.adjusted.items():
            lines.append(f"  group {root}: {note}")
        for name, ch in self.layers.items():
            w = []
            if ch.in_before is not None and ch.in_before != ch.in_after:
                w.append(f"in {ch.in_before}->{ch.in_after}")
            if ch.out_before is not None and ch.out_before != ch.out_after:
                w.append(f"out {ch.out_before}->{ch.out_after}")
            if ch.groups_before is not None and ch.groups_before != ch.groups_after:
                w.append(f"groups {ch.groups_before}->{ch.groups_after}")
            lines.append(f"  {name} ({ch.kind}): {', '.join(w)}")
        for name, rep in self.blocks.items():
            lines.append(f"  block {name} -> {rep}")
        if self.verified:
            lines.append(f"  verified against the masked model (max abs diff {self.max_diff:.2e})")
        for name, why in self.approximate.items():
            lines.append(f"  {name}: {why}")
        return "\n".join(lines)


def count_params(model: nn.Module) -> int:
    """Number of parameter elements (shared parameters counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


# ---------------------------------------------------------------------------------------------------------
# plan validation


def _as_index_list(name: str, idxs: Any) -> list[int]:
    if isinstance(idxs, torch.Tensor):
        if idxs.dim() != 1 or idxs.dtype.is_floating_point or idxs.dtype == torch.bool:
            raise PrunekitError(f"plan[{name!r}]: expected a 1-D integer tensor of channel indices")
        return [int(i) for i in idxs.tolist()]
    if isinstance(idxs, str | bytes) or not isinstance(idxs, Iterable):
        raise PrunekitError(f"plan[{name!r}]: expected a sequence of channel indices, got {type(idxs).__name__}")
    out = []
    for i in idxs:
        if isinstance(i, bool) or not hasattr(i, "__index__"):
            raise PrunekitError(f"plan[{name!r}]: channel index {i!r} is not an integer")
        out.append(int(i.__index__()))
    return out


def normalise_plan(plan: Mapping[str, Sequence[int]]) -> dict[str, list[int]]:
    """Check a plan's types and return ``{layer: [indices]}`` (order kept, duplicates dropped)."""
    if not isinstance(plan, Mapping):
        raise PrunekitError(f"plan must map layer names to channel indices, got {type(plan).__name__}")
    out: dict[str, list[int]] = {}
    for name, idxs in plan.items():
        if not isinstance(name, str):
            raise PrunekitError(f"plan key {name!r} is not a layer name")
        out[name] = list(dict.fromkeys(_as_index_list(name, idxs)))
    return out


def _out_width(m: nn.Module) -> int | None:
    for attr in ("out_channels", "out_features", "num_features", "num_channels", "num_parameters"):
        if hasattr(m, attr):
            return int(getattr(m, attr))
    if isinstance(m, nn.LayerNorm) and len(m.normalized_shape) == 1:
        return int(m.normalized_shape[0])
    return None


def _resolve(an: Analysis, plan: dict[str, list[int]], min_channels: int, round_to: int | None,
             clamp: bool, report: SurgeryReport) -> list[tuple[GraphGroup, list[int]]]:
    """Map the plan onto coupled groups: ``[(group, root indices to remove)]`` after clamp / round_to."""
    req: dict[int, list[int]] = {}
    seen: dict[int, set[int]] = {}
    groups: dict[int, GraphGroup] = {}
    asked_by: dict[int, list[str]] = {}
    for layer, idxs in plan.items():
        if not idxs:
            continue
        if layer not in an.modules or layer == "":
            raise PrunekitError(f"remove_channels: the model has no layer {layer!r}")
        entries = an.find(layer)
        if not entries:
            raise PrunekitError(f"remove_channels: layer {layer!r} has no removable output channels (not a "
                                "conv/linear/norm layer reached by example_inputs)")
        width = _out_width(an.modules[layer])
        lookup: dict[int, list[tuple[GraphGroup, int]]] = {}
        for g, m in entries:
            for i, r in zip(m.idxs, m.root, strict=True):
                lookup.setdefault(i, []).append((g, r))
        for i in idxs:
            if width is not None and not 0 <= i < width:
                raise PrunekitError(f"remove_channels: channel {i} is out of range for layer {layer!r} "
                                    f"({width} channels)")
            hits = lookup.get(i)
            if not hits:
                raise PrunekitError(f"remove_channels: channel {i} of layer {layer!r} cannot be removed: it is "
                                    "tied to the model's input or output")
            for g, r in hits:
                if not g.prunable:
                    raise PrunekitError(f"remove_channels: channel {i} of layer {layer!r} cannot be removed: "
                                        f"{g.reason}")
                key = id(g)
                groups[key] = g
                if layer not in asked_by.setdefault(key, []):
                    asked_by[key].append(layer)
                if r not in seen.setdefault(key, set()):
                    seen[key].add(r)
                    req.setdefault(key, []).append(r)
    out = []
    for key, rs in req.items():
        g = groups[key]
        who = ", ".join(repr(n) for n in asked_by[key])
        coupled = f" (coupled group of {g.name!r})" if asked_by[key] != [g.name] else ""
        if g.size - len(rs) < min_channels:
            if not clamp:
                raise PrunekitError(
                    f"remove_channels: removing {len(rs)} of {g.size} channels from layer {who}{coupled} would "
                    f"leave {g.size - len(rs)} (min_channels={min_channels}); remove fewer channels, or pass "
                    "clamp=True to keep the last-listed ones")
            n = max(g.size - min_channels, 0)
            report.adjusted[g.name] = f"clamped: removed {n} of the {len(rs)} requested (min_channels)"
            rs = rs[:n]
        if g.heads:
            _check_whole_heads(g, rs, who, coupled)
        if round_to and not g.heads:
            keep = g.size - len(rs)
            target = min(g.size, math.ceil(keep / round_to) * round_to)
            if target != keep:
                note = f"round_to={round_to}: kept {target} instead of {keep}"
                report.adjusted[g.name] = "; ".join(x for x in (report.adjusted.get(g.name), note) if x)
                rs = rs[:g.size - target]
        if rs:
            out.append((g, rs))
    return out


def _check_whole_heads(g: GraphGroup, rs: list[int], who: str, coupled: str) -> None:
    """An attention group loses whole heads only (in every member holding heads), else one clear error."""
    rset = set(rs)
    for name, hd in g.heads:
        m = next((m for m in g.members if m.name == name and m.side == OUT), None)
        if m is None:
            continue
        sel = {i for i, r in zip(m.idxs, m.root, strict=True) if r in rset}
        heads = sorted({i // hd for i in sel})
        partial = [h for h in heads if any(h * hd + j not in sel for j in range(hd))]
        if partial:
            raise PrunekitError(
                f"remove_channels: layer {who}{coupled} holds attention heads of {hd} channels ({name!r}); "
                f"remove whole heads only (head h is channels h*{hd}..h*{hd}+{hd - 1}); the plan cuts into heads "
                f"{partial[:8]}")


# ---------------------------------------------------------------------------------------------------------
# per-module edits


@dataclass
class _Edit:
    module: nn.Module
    attrs: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # parameters and buffers by local name


def _keep(n: int, removed: set[int]) -> list[int]:
    return [i for i in range(n) if i not in removed]


def _take(t: torch.Tensor, dim: int, keep: list[int]) -> torch.Tensor:
    """A new tensor with ``keep`` along ``dim`` (never a view of the old one)."""
    if len(keep) == t.shape[dim]:
        return t.detach().clone()
    return t.detach().index_select(dim, torch.tensor(keep, dtype=torch.long, device=t.device))


def _as_param(old: torch.Tensor, new: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(new, requires_grad=old.requires_grad)


def _edit_conv(name: str, m: nn.modules.conv._ConvNd, rout: set[int], rin: set[int]) -> _Edit:
    e = _Edit(m)
    g = m.groups
    if is_depthwise(m):  # one in / one out channel per group: they go together
        r = rout | rin
        keep = _keep(m.out_channels, r)
        e.attrs = {"in_channels": len(keep), "out_channels": len(keep), "groups": len(keep)}
        e.tensors["weight"] = _as_param(m.weight, _take(m.weight, 0, keep))
        if m.bias is not None:
            e.tensors["bias"] = _as_param(m.bias, _take(m.bias, 0, keep))
        return e
    if m.transposed:
        if g != 1:
            raise PrunekitError(f"remove_channels: transposed grouped conv {name!r} is not supported")
        keep_in, keep_out = _keep(m.in_channels, rin), _keep(m.out_channels, rout)
        w = _take(_take(m.weight, 0, keep_in), 1, keep_out)
        groups_after = 1
    elif g == 1:
        keep_in, keep_out = _keep(m.in_channels, rin), _keep(m.out_channels, rout)
        w = _take(_take(m.weight, 0, keep_out), 1, keep_in)
        groups_after = 1
    else:
        w, keep_out, keep_in, groups_after = _grouped(name, m, rout, rin)
    e.attrs = {"in_channels": len(keep_in), "out_channels": len(keep_out), "groups": groups_after}
    e.tensors["weight"] = _as_param(m.weight, w)
    if m.bias is not None:
        e.tensors["bias"] = _as_param(m.bias, _take(m.bias, 0, keep_out))
    return e


def _grouped(name: str, m: nn.modules.conv._ConvNd, rout: set[int], rin: set[int]
             ) -> tuple[torch.Tensor, list[int], list[int], int]:
    """Grouped conv: same count removed from every conv group, or whole groups (inputs and outputs)."""
    g = m.groups
    a, b = m.in_channels // g, m.out_channels // g
    rin_g = [sorted(i - k * a for i in rin if k * a <= i < (k + 1) * a) for k in range(g)]
    rout_g = [sorted(o - k * b for o in rout if k * b <= o < (k + 1) * b) for k in range(g)]
    dropped = [k for k in range(g) if len(rin_g[k]) == a and len(rout_g[k]) == b]
    kept = [k for k in range(g) if k not in dropped]
    hint = (f"remove the same number of channels from each of its {g} groups, or whole groups "
            "(see conv_group_plan)")
    if not kept:
        raise PrunekitError(f"remove_channels: this plan would remove every group of grouped conv {name!r}")
    nin = {len(rin_g[k]) for k in kept}
    nout = {len(rout_g[k]) for k in kept}
    if len(nin) != 1 or len(nout) != 1:
        raise PrunekitError(f"remove_channels: grouped conv {name!r} (groups={g}) would lose "
                            f"{[len(x) for x in rin_g]} input and {[len(x) for x in rout_g]} output channels "
                            f"per group; {hint}")
    ri, ro = nin.pop(), nout.pop()
    if ri >= a or ro >= b:
        raise PrunekitError(f"remove_channels: grouped conv {name!r} would keep a group with no "
                            f"{'input' if ri >= a else 'output'} channels; {hint}")
    rows, blocks, keep_in = [], [], []
    for k in kept:
        lk_in = _keep(a, set(rin_g[k]))
        lk_out = _keep(b, set(rout_g[k]))
        out_idx = [k * b + o for o in lk_out]
        rows += out_idx
        keep_in += [k * a + i for i in lk_in]
        blocks.append(_take(_take(m.weight, 0, out_idx), 1, lk_in))
    return torch.cat(blocks, 0), rows, keep_in, len(kept)


def _edit_mha(name: str, m: nn.MultiheadAttention, r: set[int]) -> list[_Edit]:
    """torch MultiheadAttention losing whole heads: embedding channels ``r`` and the q/k/v/out channels of the
    same heads (its inner width must equal its embedding width)."""
    e_dim, hd = m.embed_dim, m.head_dim
    if any(any(h * hd + j not in r for j in range(hd)) for h in {i // hd for i in r}):
        raise PrunekitError(f"remove_channels: MultiheadAttention {name!r} can only lose whole heads of {hd} "
                            "channels")
    keep = _keep(e_dim, r)
    keep3 = [i + k * e_dim for k in range(3) for i in keep]
    e = _Edit(m, attrs={"embed_dim": len(keep), "kdim": len(keep), "vdim": len(keep),
                        "num_heads": len(keep) // hd, "head_dim": hd})
    e.tensors["in_proj_weight"] = _as_param(m.in_proj_weight, _take(_take(m.in_proj_weight, 0, keep3), 1, keep))
    if m.in_proj_bias is not None:
        e.tensors["in_proj_bias"] = _as_param(m.in_proj_bias, _take(m.in_proj_bias, 0, keep3))
    o = m.out_proj
    eo = _Edit(o, attrs={"in_features": len(keep), "out_features": len(keep)})
    eo.tensors["weight"] = _as_param(o.weight, _take(_take(o.weight, 0, keep), 1, keep))
    if o.bias is not None:
        eo.tensors["bias"] = _as_param(o.bias, _take(o.bias, 0, keep))
    return [e, eo]


def _edit_module(name: str, m: nn.Module, rout: set[int], rin: set[int]) -> _Edit | list[_Edit]:
    if isinstance(m, nn.MultiheadAttention):
        return _edit_mha(name, m, rout | rin)
    if isinstance(m, nn.modules.conv._ConvNd):
        return _edit_conv(name, m, rout, rin)
    if isinstance(m, nn.Linear):
        keep_out, keep_in = _keep(m.out_features, rout), _keep(m.in_features, rin)
        e = _Edit(m, attrs={"in_features": len(keep_in), "out_features": len(keep_out)})
        e.tensors["weight"] = _as_param(m.weight, _take(_take(m.weight, 0, keep_out), 1, keep_in))
        if m.bias is not None:
            e.tensors["bias"] = _as_param(m.bias, _take(m.bias, 0, keep_out))
        return e
    r = rout | rin  # norms and per-channel activations: one channel dimension
    if isinstance(m, nn.modules.batchnorm._NormBase):  # BatchNorm*, SyncBatchNorm, InstanceNorm*
        keep = _keep(m.num_features, r)
        e = _Edit(m, attrs={"num_features": len(keep)})
        for pn in ("weight", "bias"):
            p = getattr(m, pn, None)
            if isinstance(p, nn.Parameter):
                e.tensors[pn] = _as_param(p, _take(p, 0, keep))
        for bn in ("running_mean", "running_var"):
            t = getattr(m, bn, None)
            if isinstance(t, torch.Tensor):
                e.tensors[bn] = _take(t, 0, keep)
        return e
    if isinstance(m, nn.GroupNorm):
        keep = _keep(m.num_channels, r)
        if len(keep) % m.num_groups:
            raise PrunekitError(f"remove_channels: GroupNorm {name!r} has {m.num_groups} groups; the plan would "
                                f"leave {len(keep)} channels, not a multiple of it")
        e = _Edit(m, attrs={"num_channels": len(keep)})
        if m.affine:
            e.tensors["weight"] = _as_param(m.weight, _take(m.weight, 0, keep))
            e.tensors["bias"] = _as_param(m.bias, _take(m.bias, 0, keep))
        return e
    if isinstance(m, nn.LayerNorm) and len(m.normalized_shape) == 1:
        keep = _keep(m.normalized_shape[0], r)
        e = _Edit(m, attrs={"normalized_shape": (len(keep),)})
        for pn in ("weight", "bias"):
            p = getattr(m, pn, None)
            if isinstance(p, nn.Parameter):
                e.tensors[pn] = _as_param(p, _take(p, 0, keep))
        return e
    if isinstance(m, nn.PReLU):
        if m.num_parameters == 1:
            return _Edit(m)
        keep = _keep(m.num_parameters, r)
        return _Edit(m, attrs={"num_parameters": len(keep)},
                     tensors={"weight": _as_param(m.weight, _take(m.weight, 0, keep))})
    raise PrunekitError(f"remove_channels: layer {name!r} ({type(m).__name__}) is coupled to the removed "
                        "channels but prunekit cannot shrink this layer type")


def _widths(m: nn.Module) -> tuple[int | None, int | None, int | None]:
    if isinstance(m, nn.MultiheadAttention):
        return m.embed_dim, m.embed_dim, m.num_heads
    if isinstance(m, nn.modules.conv._ConvNd):
        return m.in_channels, m.out_channels, m.groups
    if isinstance(m, nn.Linear):
        return m.in_features, m.out_features, None
    w = _out_width(m)
    return w, w, getattr(m, "num_groups", None)


def _commit(edits: list[_Edit]) -> list[tuple[nn.Module, str, Any]]:
    undo: list[tuple[nn.Module, str, Any]] = []
    for e in edits:
        for k, v in e.attrs.items():
            undo.append((e.module, k, getattr(e.module, k)))
            setattr(e.module, k, v)
        for k, v in e.tensors.items():
            undo.append((e.module, k, getattr(e.module, k)))
            setattr(e.module, k, v)
    return undo


def _rollback(undo: list[tuple[nn.Module, str, Any]]) -> None:
    for mod, k, v in reversed(undo):
        setattr(mod, k, v)


# ---------------------------------------------------------------------------------------------------------
# removal equals masking: the check run after every structural change

_RTOL = {torch.float64: 1e-9, torch.float32: 1e-5}
"""Relative tolerance of the equivalence check per output dtype (half precision: 1e-2)."""


def _tensors(out: Any, path: str = "output") -> list[tuple[str, Any]]:
    """Every leaf of a model output (tensor, tuple / list, dict, HF ``ModelOutput``) with its path."""
    if isinstance(out, torch.Tensor):
        return [(path, out)]
    if isinstance(out, Mapping):
        return [x for k, v in out.items() for x in _tensors(v, f"{path}[{k!r}]")]
    if isinstance(out, list | tuple):
        return [x for i, v in enumerate(out) for x in _tensors(v, f"{path}[{i}]")]
    return [(path, out)] if isinstance(out, int | float | bool | str) else []


def compare_outputs(ref: Any, out: Any) -> tuple[float, str]:
    """(max abs difference, "" if ``out`` equals ``ref`` within the dtype's tolerance else where it does not).

    A float tensor passes when ``|out - ref| <= rtol * (|ref| + max|ref|)`` elementwise (rtol 1e-5 in
    float32, 1e-9 in float64, 1e-2 in half precision): relative, with an absolute floor scaled to the
    tensor's magnitude. NaNs must sit at the same places. Other leaves must be equal.
    """
    rs, os_ = _tensors(ref), _tensors(out)
    if [k for k, _ in rs] != [k for k, _ in os_]:
        return math.inf, f"the output structure changed ({len(rs)} -> {len(os_)} leaves)"
    worst = 0.0
    for (k, a), (_, b) in zip(rs, os_, strict=True):
        if not isinstance(a, torch.Tensor):
            if a != b:
                return math.inf, f"{k} changed"
            continue
        if a.shape != b.shape:
            return math.inf, f"{k} changed shape {tuple(a.shape)} -> {tuple(b.shape)}"
        if not a.is_floating_point():
            if not torch.equal(a, b):
                return math.inf, f"{k} changed"
            continue
        a64, b64 = a.detach().double(), b.detach().double()
        nan_a, nan_b = torch.isnan(a64), torch.isnan(b64)
        if not torch.equal(nan_a, nan_b):
            return math.inf, f"{k} has NaNs in other places"
        fin = ~nan_a
        if not bool(fin.any()):
            continue
        a64, b64 = a64[fin], b64[fin]
        diff = (a64 - b64).abs()
        d = float(diff.max())
        worst = max(worst, d)
        rtol = _RTOL.get(a.dtype, 1e-2)
        scale = float(a64.abs().max())
        if bool((diff > rtol * (a64.abs() + scale)).any()) or math.isnan(d):
            return d, f"{k} differs by up to {d:.3g} (values up to {scale:.3g}, rtol {rtol:g})"
    return worst, ""


def run_model(model: nn.Module, example_inputs: Any) -> Any:
    """One forward pass in eval mode without autograd (every module's own mode restored afterwards)."""
    with preserve_mode(model), torch.no_grad():
        model.eval()
        return forward_fn(model, example_inputs)


def _norm_on_kept(m: Any, x: torch.Tensor, out: torch.Tensor, idx: list[int]) -> torch.Tensor:
    """What a pruned LayerNorm / GroupNorm computes, in the unpruned numbering (0 on the removed channels)."""
    import torch.nn.functional as F

    if isinstance(m, nn.GroupNorm):
        n, dim = m.num_channels, 1
    else:
        # a LayerNorm or a LayerNorm-like norm (ConvNeXt's channels_first one) with LayerNorm's attributes
        n = cast(nn.LayerNorm, m).normalized_shape[0]
        dim = 1 if getattr(m, "data_format", "channels_last") == "channels_first" else -1
    keep = torch.tensor(_keep(n, set(idx)), dtype=torch.long, device=x.device)
    if x.shape[dim] != n or out.shape != x.shape:
        return out.index_fill(dim, torch.tensor(idx, device=out.device), 0)
    weight, bias = getattr(m, "weight", None), getattr(m, "bias", None)
    w = weight.index_select(0, keep) if weight is not None else None
    b = bias.index_select(0, keep) if bias is not None else None
    xs = x.index_select(dim, keep)
    if isinstance(m, nn.GroupNorm):
        ys = F.group_norm(xs, m.num_groups, w, b, m.eps)
    else:
        ys = F.layer_norm(xs.movedim(dim, -1), (len(keep),), w, b, cast(nn.LayerNorm, m).eps).movedim(-1, dim)
    return torch.zeros_like(out).index_copy(dim, keep, ys.to(out.dtype))


def _out_hook(m: nn.Module, idx: list[int]) -> Any:
    def hook(mod: nn.Module, args: tuple[Any, ...], out: Any) -> Any:
        if isinstance(mod, nn.MultiheadAttention) and isinstance(out, tuple) and isinstance(out[0], torch.Tensor):
            t = out[0]
            return (t.index_fill(-1, torch.tensor(idx, device=t.device), 0), *tuple(out[1:]))
        if not isinstance(out, torch.Tensor):
            return out
        if isinstance(mod, nn.LayerNorm | nn.GroupNorm) and args and isinstance(args[0], torch.Tensor):
            return _norm_on_kept(mod, args[0], out, idx)
        dim = -1 if isinstance(mod, nn.Linear) else 1
        return out.index_fill(dim, torch.tensor(idx, device=out.device), 0)
    return hook


def _in_hook(idx: list[int], dim: int) -> Any:
    def hook(mod: nn.Module, args: tuple[Any, ...]) -> Any:
        if not args or not isinstance(args[0], torch.Tensor):
            return None
        x = args[0]
        return (x.index_fill(dim, torch.tensor(idx, device=x.device), 0), *tuple(args[1:]))
    return hook


_Bare = tuple[nn.Parameter, int, set[int]]
_Sliced = tuple[nn.Module, nn.Parameter, int, list[int]]


def _sliced_modules(model: nn.Module, params: Mapping[str, _Bare]) -> dict[str, _Sliced]:
    """Non-torch modules holding per-channel parameters of the removal (e.g. ConvNeXt-V2's GRN, which divides
    by the mean over channels): each with a pruned copy, to recompute it on the kept channels in the reference."""
    by_owner: dict[str, list[tuple[str, nn.Parameter, int, set[int]]]] = {}
    for pname, (p, dim, sel) in params.items():
        owner, _, leaf = pname.rpartition(".")
        by_owner.setdefault(owner, []).append((leaf, p, dim, sel))
    out: dict[str, _Sliced] = {}
    for owner, items in by_owner.items():
        mod = model.get_submodule(owner) if owner else model
        if not owner or type(mod).__module__.startswith("torch.") or any(True for _ in mod.children()):
            continue
        if len({frozenset(sel) for *_, sel in items}) != 1 or len({p.shape[d] for _, p, d, _ in items}) != 1:
            continue
        twin = copy.deepcopy(mod)
        for leaf, p, dim, sel in items:
            setattr(twin, leaf, nn.Parameter(_take(p, dim, _keep(p.shape[dim], sel)), requires_grad=False))
        _, p0, d0, sel0 = items[0]
        out[owner] = (twin, p0, d0, sorted(sel0))
    return out


def _sliced_hook(s: _Sliced) -> Any:
    twin, p, pdim, idx = s

    def hook(mod: nn.Module, args: tuple[Any, ...], out: Any) -> Any:
        x = args[0] if args else None
        n = p.shape[pdim]
        if not isinstance(x, torch.Tensor) or not isinstance(out, torch.Tensor) or out.shape != x.shape:
            return out
        if p.dim() == x.dim() and x.shape[pdim] == n:
            dim = pdim
        elif x.shape[-1] == n:
            dim = x.dim() - 1
        elif x.dim() > 1 and x.shape[1] == n:
            dim = 1
        else:
            return out
        keep = torch.tensor(_keep(n, set(idx)), dtype=torch.long, device=x.device)
        y = twin(x.index_select(dim, keep), *args[1:])
        return torch.zeros_like(out).index_copy(dim, keep, y.to(out.dtype))
    return hook


@contextlib.contextmanager
def _masked(modules: Mapping[str, nn.Module], rout: Mapping[str, set[int]], rin: Mapping[str, set[int]],
            sliced: Mapping[str, _Sliced] | None = None) -> Iterator[None]:
    """The model with the removed channels zeroed where they are produced and where they are read.

    Producers (conv, linear, norm, depthwise conv) output 0 on the removed channels; consumers read 0 there;
    a LayerNorm / GroupNorm on them normalises the kept channels only (what the pruned norm computes); a
    MultiheadAttention losing heads also computes 0 in those heads (its q/k/v rows are zeroed meanwhile).
    """
    handles: list[Any] = []
    saved: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    try:
        for name, idx in rout.items():
            m = modules[name]
            handles.append(m.register_forward_hook(_out_hook(m, sorted(idx))))
            if isinstance(m, nn.MultiheadAttention):
                e = m.embed_dim
                for t in (m.in_proj_weight, m.in_proj_bias):
                    if t is not None:
                        rows = torch.tensor([i + k * e for k in range(3) for i in sorted(idx)], device=t.device)
                        saved.append((t, rows, t.detach()[rows].clone()))
                        with torch.no_grad():
                            t[rows] = 0
        for name, sl in (sliced or {}).items():
            handles.append(modules[name].register_forward_hook(_sliced_hook(sl)))
        for name, idx in rin.items():
            m = modules[name]
            if isinstance(m, nn.Linear):
                handles.append(m.register_forward_pre_hook(_in_hook(sorted(idx), -1)))
            elif isinstance(m, nn.modules.conv._ConvNd):
                handles.append(m.register_forward_pre_hook(_in_hook(sorted(idx), 1)))
        yield
    finally:
        for h in handles:
            h.remove()
        with torch.no_grad():
            for dst, rows, old in saved:
                dst[rows] = old


def _approximate(g: GraphGroup) -> str:
    """Why removing channels of ``g`` is not plain masking (a norm over them), or ""."""
    norms = [f"{type(m.target).__name__} {m.name!r}" for m in g.members
             if isinstance(m.target, nn.LayerNorm | nn.GroupNorm)]
    if not norms:
        return ""
    more = f" (+{len(norms) - 2} more)" if len(norms) > 2 else ""
    return (f"{', '.join(norms[:2])}{more} renormalise(s) over the removed channels: checked against the masked "
            "model with those norms computed over the kept channels")


def recorded_shapes(example_inputs: Any) -> Any:
    """JSON-able shapes of the example inputs (for the history record)."""
    if isinstance(example_inputs, torch.Tensor):
        return [list(example_inputs.shape)]
    if isinstance(example_inputs, Mapping):
        return {str(k): list(v.shape) for k, v in example_inputs.items() if isinstance(v, torch.Tensor)}
    if isinstance(example_inputs, list | tuple):
        return [list(v.shape) for v in example_inputs if isinstance(v, torch.Tensor)]
    return []


# ---------------------------------------------------------------------------------------------------------
# public


def _plan_edits(model: nn.Module, modules: Mapping[str, nn.Module], resolved: list[tuple[GraphGroup, list[int]]],
                norm: Mapping[str, list[int]], report: SurgeryReport, min_channels: int
                ) -> tuple[dict[str, set[int]], dict[str, set[int]], list[_Edit], dict[str, _Bare]]:
    """Every new tensor and attribute for removing ``resolved`` (nothing is changed yet); also the bare
    per-channel parameters that shrink (name -> (parameter, dim, removed indices))."""
    rout: dict[str, set[int]] = {}
    rin: dict[str, set[int]] = {}
    params: dict[str, _Bare] = {}
    owners: dict[str, int] = {}  # attention module -> heads removed
    for g, rs in resolved:
        rset = set(rs)
        report.removed[g.name] = sorted(rs)
        for m in g.members:
            sel = {i for i, r in zip(m.idxs, m.root, strict=True) if r in rset}
            if not sel:
                continue
            if isinstance(m.target, nn.Parameter):
                dim = m.pruning_dim or 0
                hd = g.head_dim()
                if hd and m.target.shape[dim] == g.size // hd != g.size:  # a per-head parameter (bias table)
                    sel = {r // hd for r in rset}
                params.setdefault(m.name, (m.target, dim, set()))[2].update(sel)
            elif m.side == OUT:
                rout.setdefault(m.name, set()).update(sel)
            else:
                rin.setdefault(m.name, set()).update(sel)
        for owner, hd in g.head_owners:
            if not isinstance(modules.get(owner), nn.MultiheadAttention):
                owners[owner] = max(owners.get(owner, 0), len(rs) // hd)
        for layer in norm:
            if any(m.name == layer for m in g.members if m.side == OUT):
                others = [m.name for m in g.members if m.side == OUT and m.name != layer
                          and isinstance(m.target, nn.Module) and is_producer(m.target)]
                for o in others:
                    if o not in report.coupled.setdefault(layer, []):
                        report.coupled[layer].append(o)

    edits: list[_Edit] = []
    for name in [n for n in modules if n in rout or n in rin]:
        mod = modules[name]
        if nn.utils.parametrize.is_parametrized(mod):
            raise PrunekitError(f"remove_channels: layer {name!r} has parametrizations (e.g. weight norm); "
                                "remove them before surgery")
        before = _widths(mod)
        made = _edit_module(name, mod, rout.get(name, set()), rin.get(name, set()))
        made = made if isinstance(made, list) else [made]
        edits += [e for e in made if e.attrs or e.tensors]
        after = _after_widths(mod, made[0], before)
        report.layers[name] = LayerChange(name, type(mod).__name__, before[0], after[0], before[1], after[1],
                                          before[2], after[2])
    for pname, (param, pdim, psel) in params.items():
        owner_name, _, leaf = pname.rpartition(".")
        holder = model.get_submodule(owner_name) if owner_name else model
        keep = _keep(param.shape[pdim], psel)
        edits.append(_Edit(holder, tensors={leaf: _as_param(param, _take(param, pdim, keep))}))
        report.layers[pname] = LayerChange(pname, "Parameter", param.shape[pdim], len(keep), param.shape[pdim],
                                           len(keep))
    for owner, gone in owners.items():
        mod = modules[owner]
        attrs: dict[str, Any] = {}
        for a in HEAD_COUNT_ATTRS:
            v = getattr(mod, a, None)
            if isinstance(v, int) and not isinstance(v, bool) and v > 0:
                attrs[a] = v - gone
        heads = next(iter(attrs.values()), None)
        size = getattr(mod, "all_head_size", None)
        if heads is not None and isinstance(size, int) and not isinstance(size, bool):
            attrs["all_head_size"] = size // (heads + gone) * heads
        if attrs:
            edits.append(_Edit(mod, attrs=attrs))
    for name, ch in report.layers.items():
        if ch.out_after is not None and ch.out_after < min_channels and ch.out_before != ch.out_after:
            raise PrunekitError(f"remove_channels: layer {name!r} would keep {ch.out_after} channels "
                                f"(min_channels={min_channels})")
    return rout, rin, edits, params


def _after(model: nn.Module, example_inputs: Any, ref: Any) -> tuple[float, str]:
    """Compare the (already pruned) model's output with ``ref``: (max diff, "" or what went wrong)."""
    try:
        out = run_model(model, example_inputs)
    except Exception as exc:
        return math.inf, (f"the pruned model no longer runs ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:160] if str(exc) else ''})")
    return compare_outputs(ref, out)


def _verified(model: nn.Module, modules: Mapping[str, nn.Module], example_inputs: Any, rout: dict[str, set[int]],
              rin: dict[str, set[int]], edits: list[_Edit], params: Mapping[str, _Bare], ref: Any = None
              ) -> tuple[list[tuple[nn.Module, str, Any]] | None, float, str, dict[str, _Sliced]]:
    """Apply ``edits`` and check the result against masking: (undo list, max diff, "", sliced modules used) on
    success, (None, diff, what went wrong, {}) with the model restored otherwise. A mismatch is checked
    once more with non-torch modules holding per-channel parameters recomputed on the kept channels."""
    if ref is None:
        with _masked(modules, rout, rin):
            ref = run_model(model, example_inputs)
    undo = _commit(edits)
    diff, problem = _after(model, example_inputs, ref)
    if not problem:
        return undo, diff, "", {}
    _rollback(undo)
    sliced = _sliced_modules(model, params)
    if not sliced:
        return None, diff, problem, {}
    with _masked(modules, rout, rin, sliced):
        ref = run_model(model, example_inputs)
    undo = _commit(edits)
    diff2, problem2 = _after(model, example_inputs, ref)
    if not problem2:
        return undo, diff2, "", sliced
    _rollback(undo)
    return None, diff, problem, {}


def _attempt(model: nn.Module, modules: Mapping[str, nn.Module], example_inputs: Any,
             resolved: list[tuple[GraphGroup, list[int]]], norm: Mapping[str, list[int]], min_channels: int) -> str:
    """Try one removal, check it and undo it; what went wrong ("" when it is exact)."""
    rout, rin, edits, params = _plan_edits(model, modules, resolved, norm, SurgeryReport(), min_channels)
    undo, _, problem, _ = _verified(model, modules, example_inputs, rout, rin, edits, params)
    if undo is not None:
        _rollback(undo)
    return problem


def remove_channels(model: nn.Module, plan: Mapping[str, Sequence[int]], example_inputs: Any, *,
                    min_channels: int = 1, round_to: int | None = None, clamp: bool = False,
                    check: bool = True, num_heads: HeadsMap | None = None) -> SurgeryReport:
    """Remove output channels / neurons in place, with everything coupled to them; return what was done.

    ``plan`` maps a conv / linear / norm layer to channels to remove, in its current numbering. Removing a
    channel of one member of a coupled group (e.g. one conv feeding a residual sum) removes it from the
    whole group; two plan entries hitting one group are merged. The next layers' inputs shrink too
    (through flatten, concat and split), as do BN / depthwise convs on those channels.

    Attention: channels of q / k / v projections (they meet in a matmul) and of ``nn.MultiheadAttention``
    go in whole heads only, and the head count held by the attention module (``num_heads``,
    ``num_attention_heads``, ``all_head_size``, ...) is updated; ``num_heads`` (``{module or name: heads}``,
    as in Torch-Pruning) declares heads of a module that holds no such attribute.

    Every group keeps at least ``min_channels``; a plan that breaks this raises :class:`PrunekitError`
    naming the layer, or with ``clamp=True`` the last-listed channels of that group are kept instead (list
    the least important first). ``round_to`` keeps the remaining width of every touched group a multiple of
    it (dropping last-listed removals). Nothing is changed when the plan is rejected.

    With ``check`` (the default) removal is verified to equal masking: the output on ``example_inputs`` of
    the model with the same channels zeroed where they are produced and read is recorded first, and the
    pruned model must give the same output (see :func:`compare_outputs`); otherwise the model is restored
    and :class:`PrunekitError` names the group. Costs two forward passes in eval mode (user hooks fire).
    """
    if not isinstance(min_channels, int) or min_channels < 1:
        raise PrunekitError(f"remove_channels: min_channels must be an integer >= 1, got {min_channels!r}")
    if round_to is not None and (not isinstance(round_to, int) or round_to < 1):
        raise PrunekitError(f"remove_channels: round_to must be a positive integer or None, got {round_to!r}")
    norm = normalise_plan(plan)
    report = SurgeryReport(params_before=count_params(model))
    report.params_after = report.params_before
    modules = dict(model.named_modules())
    for name in norm:
        if name not in modules or name == "":
            raise PrunekitError(f"remove_channels: the model has no layer {name!r}")
    if not any(norm.values()):
        return report
    an = analyse(model, example_inputs, num_heads)
    resolved = _resolve(an, norm, min_channels, round_to, clamp, report)
    rout, rin, edits, params = _plan_edits(model, modules, resolved, norm, report, min_channels)
    for g, _ in resolved:
        why = _approximate(g)
        if why:
            report.approximate[g.name] = why
    if not check:
        _commit(edits)
    else:
        try:
            with _masked(modules, rout, rin):
                ref = run_model(model, example_inputs)
        except Exception as exc:
            raise PrunekitError(f"remove_channels: the model does not run on example_inputs ({type(exc).__name__}: "
                                f"{str(exc).splitlines()[0][:160] if str(exc) else ''})") from None
        undo, diff, problem, sliced = _verified(model, modules, example_inputs, rout, rin, edits, params, ref)
        if undo is None:
            culprit = [g.name for g, _ in resolved]
            if len(resolved) > 1:
                for one in resolved[:64]:
                    if _attempt(model, modules, example_inputs, [one], norm, min_channels):
                        culprit = [one[0].name]
                        break
            names = ", ".join(repr(c) for c in culprit[:4]) + (f" (+{len(culprit) - 4} more)" if len(culprit) > 4
                                                              else "")
            groups = {g.name: g for g, _ in resolved}
            raise PrunekitError(f"remove_channels: removing channels of group {names} does not equal masking them: "
                                f"{problem}; the model was restored ({_suspect(model, [groups[c] for c in culprit])})")
        for g, _ in resolved:
            mods = sorted({m.name.rpartition(".")[0] for m in g.members if isinstance(m.target, nn.Parameter)}
                          & set(sliced))
            if mods:
                note = (f"{', '.join(f'{n!r} ({type(modules[n]).__name__})' for n in mods[:2])} compute(s) over "
                        "the removed channels: checked against the masked model with it recomputed on the kept "
                        "channels")
                report.approximate[g.name] = "; ".join(x for x in (report.approximate.get(g.name), note) if x)
        report.verified, report.max_diff = True, diff
    report.params_after = count_params(model)
    op: dict[str, Any] = {"op": "channels", "removed": dict(report.removed),
                          "input_shapes": recorded_shapes(example_inputs)}
    if num_heads:
        op["num_heads"] = {k if isinstance(k, str) else _name_of(model, k): int(v) for k, v in num_heads.items()}
    history.record(model, op)
    return report


def _suspect(model: nn.Module, groups: list[GraphGroup]) -> str:
    """A hint at what reads the channels in a way removal cannot reproduce."""
    for g in groups:
        for m in g.members:
            if isinstance(m.target, nn.Parameter):
                owner = model.get_submodule(m.name.rpartition(".")[0]) if "." in m.name else model
                if not type(owner).__module__.startswith("torch."):
                    return (f"{m.name.rpartition('.')[0]!r} ({type(owner).__name__}) holds per-channel parameters "
                            "of this group and may compute over all its channels")
    return "a layer reads these channels in a way prunekit cannot shrink exactly, e.g. statistics over them"


def _name_of(model: nn.Module, m: Any) -> str:
    return next((n for n, x in model.named_modules() if x is m), str(m))


def _after_widths(m: nn.Module, e: _Edit, before: tuple[int | None, int | None, int | None]
                  ) -> tuple[int | None, int | None, int | None]:
    a = e.attrs
    if isinstance(m, nn.MultiheadAttention):
        return a.get("embed_dim", before[0]), a.get("embed_dim", before[1]), a.get("num_heads", before[2])
    if isinstance(m, nn.modules.conv._ConvNd):
        return a.get("in_channels", before[0]), a.get("out_channels", before[1]), a.get("groups", before[2])
    if isinstance(m, nn.Linear):
        return a.get("in_features", before[0]), a.get("out_features", before[1]), None
    for k in ("num_features", "num_channels", "num_parameters"):
        if k in a:
            return a[k], a[k], before[2]
    if "normalized_shape" in a:
        return a["normalized_shape"][0], a["normalized_shape"][0], None
    return before


def _zero_rows(t: torch.Tensor, idxs: list[int], atol: float) -> torch.Tensor:
    rows = t.detach().index_select(0, torch.tensor(idxs, dtype=torch.long, device=t.device))
    return (rows.abs() <= atol).reshape(len(idxs), -1).all(1).cpu()


def zero_channel_plan(model: nn.Module, example_inputs: Any, *, layers: Iterable[str] | None = None,
                      atol: float = 0.0, running_stats: bool = True) -> dict[str, list[int]]:
    """Plan removing every channel whose output is identically zero, so the removal is exact.

    A channel qualifies when, in every producing layer of its coupled group, the filter weights and bias
    are zero (``|x| <= atol``) and the BN after it maps zero to zero (its shift ``beta - gamma * mean /
    sqrt(var + eps)`` with ``running_stats``, else just ``beta``), or when that BN's scale and shift are
    both zero (what SSS / slimming produce). The result is keyed by group root and can be passed to
    :func:`remove_channels` as is. Extra per-channel parameters (scaling factors) are assumed to multiply.
    Groups normalised by GroupNorm / LayerNorm are skipped: their statistics span several channels, so even
    a zero channel cannot be removed exactly. In attention groups only whole dead heads are listed.
    """
    an = analyse(model, example_inputs)
    wanted = set(layers) if layers is not None else None
    plan: dict[str, list[int]] = {}
    for g in an.groups:
        if not g.prunable:
            continue
        if wanted is not None and not any(m.name in wanted for m in g.members if m.side == OUT):
            continue
        if any(isinstance(m.target, nn.GroupNorm | nn.LayerNorm) for m in g.members):
            continue  # statistics over several channels: removing a zero channel changes them
        ok = torch.ones(g.size, dtype=torch.bool)
        prod_zero: dict[str, torch.Tensor] = {}
        for m in g.members:
            t = m.target
            if m.side != OUT or not isinstance(t, nn.modules.conv._ConvNd | nn.Linear):  # not is_producer(t)
                continue
            z = torch.ones(g.size, dtype=torch.bool)
            root = torch.tensor(m.root, dtype=torch.long)
            if is_depthwise(t):  # its input channel is the group's own channel: zero in -> bias out
                zm = torch.ones(len(m.idxs), dtype=torch.bool)
            else:
                zm = _zero_rows(t.weight, m.idxs, atol) if not isinstance(t, nn.modules.conv._ConvNd) or \
                    not t.transposed else _zero_rows(t.weight.transpose(0, 1), m.idxs, atol)
            if t.bias is not None:
                zm &= _zero_rows(t.bias, m.idxs, atol)
            z[root] = zm
            prod_zero[m.name] = z
        for m in g.members:
            t = m.target
            if m.side != OUT or not isinstance(t, nn.modules.batchnorm._NormBase):
                continue
            root = torch.tensor(m.root, dtype=torch.long)
            idx = torch.tensor(m.idxs, dtype=torch.long)
            gamma = t.weight.detach()[idx].cpu() if t.weight is not None else torch.ones(len(idx))
            beta = t.bias.detach()[idx].cpu() if t.bias is not None else torch.zeros(len(idx))
            killed = (gamma.abs() <= atol) & (beta.abs() <= atol)
            shift = beta
            if running_stats and t.track_running_stats and t.running_mean is not None and t.running_var is not None:
                rm = t.running_mean.detach()[idx].cpu().to(beta.dtype)
                rv = t.running_var.detach()[idx].cpu().to(beta.dtype)
                shift = beta - gamma * rm / torch.sqrt(rv + t.eps)
            maps_zero = shift.abs() <= atol
            src = m.source if m.source in prod_zero else None
            feed = prod_zero.get(src) if src is not None else None
            z = torch.ones(g.size, dtype=torch.bool)
            z[root] = killed | (maps_zero & (feed[root] if feed is not None else True))
            ok &= z
            if src is not None:
                # a producer whose BN kills the channel needs no zero filter
                pz = prod_zero[src].clone()
                pz[root] |= killed
                prod_zero[src] = pz
        for z in prod_zero.values():
            ok &= z
        hd = g.head_dim()
        if hd and g.size % hd == 0:  # attention: whole dead heads only
            ok = ok.view(-1, hd).all(1, keepdim=True).expand(-1, hd).reshape(-1)
        if bool(ok.any()):
            plan[g.name] = [int(i) for i in torch.nonzero(ok).flatten()]
    return plan


def conv_group_plan(model: nn.Module, example_inputs: Any, layer: str, conv_groups: Iterable[int]
                    ) -> dict[str, list[int]]:
    """Plan removing whole groups of grouped conv ``layer``: its input channels and its output channels."""
    an = analyse(model, example_inputs)
    m = an.modules.get(layer)
    if not isinstance(m, nn.modules.conv._ConvNd) or m.groups < 2 or is_depthwise(m):
        raise PrunekitError(f"conv_group_plan: {layer!r} is not a grouped (non-depthwise) convolution")
    ks = sorted(set(int(k) for k in conv_groups))
    if any(not 0 <= k < m.groups for k in ks):
        raise PrunekitError(f"conv_group_plan: {layer!r} has groups 0..{m.groups - 1}, got {ks}")
    a, b = m.in_channels // m.groups, m.out_channels // m.groups
    ins = {k * a + i for k in ks for i in range(a)}
    plan: dict[str, list[int]] = {layer: [k * b + o for k in ks for o in range(b)]}
    covered: set[int] = set()
    for g in an.groups:
        for mem in g.members:
            if mem.name != layer or mem.side != IN:
                continue
            rs = [r for i, r in zip(mem.idxs, mem.root, strict=True) if i in ins]
            covered.update(i for i in mem.idxs if i in ins)
            if rs:
                plan.setdefault(g.name, []).extend(rs)
    if covered != ins:
        raise PrunekitError(f"conv_group_plan: the inputs of {layer!r} are not all removable "
                            "(they come from the model input or an unsupported layer)")
    return plan
