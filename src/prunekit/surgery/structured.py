"""Structured surgery: physically remove output channels / neurons (and everything coupled to them).

A *plan* maps a layer name to the output channels (conv) or neurons (linear) to remove, in that layer's
current numbering. :func:`remove_channels` resolves the plan on the coupled groups found by Torch-Pruning's
dependency graph (see :mod:`prunekit.surgery._graph`), checks it as a whole (indices, minimum widths,
grouped convolutions), builds every new tensor, and only then swaps them into the model, which stays made
of plain torch layers whose config attributes (``in_channels``, ``num_features``, ...) match their weights,
so :func:`prunekit.io.save` records the thinner architecture and :func:`prunekit.io.load` rebuilds it.

Parameters are *replaced* by new ``nn.Parameter`` objects: build the optimizer (and any EMA, masks or
hooks holding parameters) again after surgery.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from prunekit.errors import PrunekitError
from prunekit.surgery._graph import IN, OUT, Analysis, _Group, _is_depthwise, _is_producer, analyse

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
             clamp: bool, report: SurgeryReport) -> list[tuple[_Group, list[int]]]:
    """Map the plan onto coupled groups: ``[(group, root indices to remove)]`` after clamp / round_to."""
    req: dict[int, list[int]] = {}
    seen: dict[int, set[int]] = {}
    groups: dict[int, _Group] = {}
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
        lookup: dict[int, list[tuple[_Group, int]]] = {}
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
        if round_to:
            keep = g.size - len(rs)
            target = min(g.size, math.ceil(keep / round_to) * round_to)
            if target != keep:
                note = f"round_to={round_to}: kept {target} instead of {keep}"
                report.adjusted[g.name] = "; ".join(x for x in (report.adjusted.get(g.name), note) if x)
                rs = rs[:g.size - target]
        if rs:
            out.append((g, rs))
    return out


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


def _as_param(old: nn.Parameter, new: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(new, requires_grad=old.requires_grad)


def _edit_conv(name: str, m: nn.modules.conv._ConvNd, rout: set[int], rin: set[int]) -> _Edit:
    e = _Edit(m)
    g = m.groups
    if _is_depthwise(m):  # one in / one out channel per group: they go together
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


def _edit_module(name: str, m: nn.Module, rout: set[int], rin: set[int]) -> _Edit:
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


def _check_forward(model: nn.Module, example_inputs: Any) -> None:
    """Run the model once (on its meta twin when possible: no arithmetic, no hooks fired)."""
    from prunekit.surgery._graph import _forward_fn, _preserve_mode, _to_meta, meta_twin

    try:
        twin = meta_twin(model).eval()
        with torch.no_grad():
            _forward_fn(twin, _to_meta(example_inputs))
        return
    except Exception:
        pass
    with _preserve_mode(model), torch.no_grad():
        model.eval()
        _forward_fn(model, example_inputs)


# ---------------------------------------------------------------------------------------------------------
# public


def remove_channels(model: nn.Module, plan: Mapping[str, Sequence[int]], example_inputs: Any, *,
                    min_channels: int = 1, round_to: int | None = None, clamp: bool = False,
                    check: bool = True) -> SurgeryReport:
    """Remove output channels / neurons in place, with everything coupled to them; return what was done.

    ``plan`` maps a conv / linear / norm layer to channels to remove, in its current numbering. Removing a
    channel of one member of a coupled group (e.g. one conv feeding a residual sum) removes it from the
    whole group; two plan entries hitting one group are merged. The next layers' inputs shrink too
    (through flatten, concat and split), as do BN / depthwise convs on those channels.

    Every group keeps at least ``min_channels``; a plan that breaks this raises :class:`PrunekitError`
    naming the layer, or with ``clamp=True`` the last-listed channels of that group are kept instead (list
    the least important first). ``round_to`` keeps the remaining width of every touched group a multiple of
    it (dropping last-listed removals). Nothing is changed when the plan is rejected. With ``check`` the
    model is run once on ``example_inputs`` afterwards (and restored if that fails).
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
    an = analyse(model, example_inputs)
    resolved = _resolve(an, norm, min_channels, round_to, clamp, report)

    rout: dict[str, set[int]] = {}
    rin: dict[str, set[int]] = {}
    params: dict[str, tuple[nn.Parameter, int, set[int]]] = {}
    for g, rs in resolved:
        rset = set(rs)
        report.removed[g.name] = sorted(rs)
        for m in g.members:
            sel = {i for i, r in zip(m.idxs, m.root, strict=True) if r in rset}
            if not sel:
                continue
            if isinstance(m.target, nn.Parameter):
                p = params.setdefault(m.name, (m.target, m.pruning_dim or 0, set()))
                p[2].update(sel)
            elif m.side == OUT:
                rout.setdefault(m.name, set()).update(sel)
            else:
                rin.setdefault(m.name, set()).update(sel)
        for layer in norm:
            if any(m.name == layer for m in g.members if m.side == OUT):
                others = [m.name for m in g.members if m.side == OUT and m.name != layer
                          and isinstance(m.target, nn.Module) and _is_producer(m.target)]
                for o in others:
                    if o not in report.coupled.setdefault(layer, []):
                        report.coupled[layer].append(o)

    edits: list[_Edit] = []
    for name in [n for n in modules if n in rout or n in rin]:
        m = modules[name]
        if nn.utils.parametrize.is_parametrized(m):
            raise PrunekitError(f"remove_channels: layer {name!r} has parametrizations (e.g. weight norm); "
                                "remove them before surgery")
        before = _widths(m)
        e = _edit_module(name, m, rout.get(name, set()), rin.get(name, set()))
        if e.attrs or e.tensors:
            edits.append(e)
        after = _after_widths(m, e, before)
        report.layers[name] = LayerChange(name, type(m).__name__, before[0], after[0], before[1], after[1],
                                          before[2], after[2])
    for pname, (p, dim, sel) in params.items():
        owner_name, _, leaf = pname.rpartition(".")
        owner = model.get_submodule(owner_name) if owner_name else model
        keep = _keep(p.shape[dim], sel)
        edits.append(_Edit(owner, tensors={leaf: _as_param(p, _take(p, dim, keep))}))
        report.layers[pname] = LayerChange(pname, "Parameter", p.shape[dim], len(keep), p.shape[dim], len(keep))
    for name, ch in report.layers.items():
        if ch.out_after is not None and ch.out_after < min_channels and ch.out_before != ch.out_after:
            raise PrunekitError(f"remove_channels: layer {name!r} would keep {ch.out_after} channels "
                                f"(min_channels={min_channels})")

    undo = _commit(edits)
    if check:
        try:
            _check_forward(model, example_inputs)
        except Exception as exc:
            _rollback(undo)
            raise PrunekitError(f"remove_channels: the pruned model no longer runs ({type(exc).__name__}: "
                                f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); the model was "
                                "restored. This plan touches a pattern prunekit does not support") from None
    report.params_after = count_params(model)
    if report.removed:  # for replay on a fresh instance (prunekit.io.save with base=)
        from prunekit.surgery.history import input_shapes, record

        record(model, {"op": "channels", "removed": report.removed, "input_shapes": input_shapes(example_inputs)})
    return report


def _after_widths(m: nn.Module, e: _Edit, before: tuple[int | None, int | None, int | None]
                  ) -> tuple[int | None, int | None, int | None]:
    a = e.attrs
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
    a zero channel cannot be removed exactly.
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
            if m.side != OUT or not isinstance(t, nn.Module) or not _is_producer(t):
                continue
            z = torch.ones(g.size, dtype=torch.bool)
            root = torch.tensor(m.root, dtype=torch.long)
            if _is_depthwise(t):  # its input channel is the group's own channel: zero in -> bias out
                zm = torch.ones(len(m.idxs), dtype=torch.bool)
            else:
                zm = _zero_rows(t.weight, m.idxs, atol) if not isinstance(t, nn.modules.conv._ConvNd) or \
                    not t.transposed else _zero_rows(t.weight.transpose(0, 1), m.idxs, atol)
            if getattr(t, "bias", None) is not None:
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
            if running_stats and t.track_running_stats and t.running_mean is not None:
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
        if bool(ok.any()):
            plan[g.name] = [int(i) for i in torch.nonzero(ok).flatten()]
    return plan


def conv_group_plan(model: nn.Module, example_inputs: Any, layer: str, conv_groups: Iterable[int]
                    ) -> dict[str, list[int]]:
    """Plan removing whole groups of grouped conv ``layer``: its input channels and its output channels."""
    an = analyse(model, example_inputs)
    m = an.modules.get(layer)
    if not isinstance(m, nn.modules.conv._ConvNd) or m.groups < 2 or _is_depthwise(m):
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
