"""Coupled channel groups, read from Torch-Pruning's DependencyGraph.

Torch-Pruning traces the model once (autograd graph of one forward pass) and, for every conv / linear layer,
lists every parameter whose channels are tied to that layer's output channels: the BN after it, the next
layers' inputs (through flatten, concat, split), the other side of a residual sum, depthwise convs. We use
it *only* for that analysis, in the model's original channel numbering; prunekit then applies all removals
itself in one validated pass (see :mod:`prunekit.surgery.structured`), because

* a plan naming several groups must be resolved in one numbering, not group after group;
* grouped (non-depthwise) convolutions need per-group slicing that Torch-Pruning does not do exactly;
* parameters must keep their ``requires_grad`` flags and the model must be left untouched when a plan is
  rejected.
"""

from __future__ import annotations

import contextlib
import copy
import math
import types
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from prunekit.errors import PrunekitError

OUT, IN = "out", "in"


@dataclass(frozen=True)
class ChannelGroup:
    """Output channels that can only be removed together (a layer, or every layer feeding a residual sum).

    ``name`` is the group's root layer (its first producing layer in module order); channel ``i`` of the
    group is channel ``index[layer][i]`` of each member ``layer``. Methods score a group as one unit, e.g.
    by summing the filter norms of ``layers`` at the mapped indices, and put the group's root name (or any
    member's name, in that member's numbering) in a :func:`remove_channels` plan.
    """

    name: str
    layers: tuple[str, ...]
    """Conv / linear layers whose output channels are these (root first): score them together."""
    size: int
    norms: tuple[str, ...] = ()
    """Norm layers (BN, ...) and bare per-channel parameters (``"block.scale"``) on these channels."""
    consumers: tuple[str, ...] = ()
    """Layers whose *input* channels shrink with the group (next convs, the first linear after a flatten)."""
    index: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    """For each name in ``layers`` and ``norms``: its own channel number for each group channel (-1: none)."""
    chunks: int = 1
    """Grouped convolutions touching these channels split them into ``chunks`` equal contiguous slices; a
    removal must take the same number of channels from each slice (or whole conv groups, see
    :func:`conv_group_plan`). 1 means no constraint."""
    head_dim: int = 0
    """Attention heads: channels ``h * head_dim .. (h + 1) * head_dim - 1`` of the group are head ``h`` and are
    removed together (whole heads only); 0 when the group holds no heads."""
    heads: int = 0
    """Number of attention heads in the group (``size // head_dim``), 0 when none."""

    def layer_indices(self, layer: str, channels: Iterable[int]) -> list[int]:
        """Member ``layer``'s own channel numbers for group channels ``channels`` (-1: not in that layer)."""
        idx = self.index[layer]
        return [idx[c] for c in channels]


@dataclass
class _Member:
    name: str
    target: Any  # nn.Module or nn.Parameter
    side: str  # OUT: output channels / features (also norms, depthwise); IN: input channels of a consumer
    idxs: list[int]
    root: list[int]
    pruning_dim: int | None = None  # for bare parameters
    source: str | None = None  # for a norm: the conv / linear feeding it directly


@dataclass
class GraphGroup:
    """One coupled channel group as the surgery's analysis finds it: its members (layer, side, indices), whether
    it can be pruned (and why not), and its attention heads."""

    name: str
    size: int
    members: list[_Member]
    prunable: bool
    reason: str = ""
    heads: list[tuple[str, int]] = field(default_factory=list)
    """(member, head_dim): in that member's numbering, channels are removed in whole heads of head_dim."""
    head_owners: list[tuple[str, int]] = field(default_factory=list)
    """(module, head_dim): modules holding a head count (``num_heads``, ...) to update after a removal."""

    def head_dim(self) -> int:
        """Head size in the group's (root) numbering when the constraint is expressed in it, else 0."""
        for name, hd in self.heads:
            m = next((m for m in self.members if m.name == name and m.side == OUT), None)
            if m is not None and m.idxs == m.root:
                return hd
        return self.heads[0][1] if self.heads else 0

    def public(self) -> ChannelGroup:
        layers: list[str] = []
        norms: list[str] = []
        consumers: list[str] = []
        index: dict[str, tuple[int, ...]] = {}
        for m in self.members:
            if m.side == IN:
                if m.name not in consumers:
                    consumers.append(m.name)
                continue
            if isinstance(m.target, nn.Module) and is_producer(m.target):
                if m.name not in layers:
                    layers.append(m.name)
            elif m.name not in norms:
                norms.append(m.name)
            row = list(index.get(m.name, [-1] * self.size))
            for i, r in zip(m.idxs, m.root, strict=True):
                row[r] = i
            index[m.name] = tuple(row)
        layers.sort(key=lambda n: n != self.name)  # root first, others in module order
        hd = self.head_dim()
        return ChannelGroup(name=self.name, layers=tuple(layers), size=self.size, norms=tuple(norms),
                            consumers=tuple(consumers), index=index, chunks=self.chunks(), head_dim=hd,
                            heads=self.size // hd if hd else 0)

    def chunks(self) -> int:
        c = 1
        for m in self.members:
            t = m.target
            if isinstance(t, nn.modules.conv._ConvNd) and t.groups > 1 and not is_depthwise(t):
                c = math.lcm(c, t.groups)
        return c


@dataclass
class Analysis:
    """Result of one trace: every coupled group (prunable or not) plus name lookups."""

    groups: list[GraphGroup]
    modules: dict[str, nn.Module]
    out_members: dict[str, list[tuple[GraphGroup, _Member]]]  # layer -> groups where it is an OUT member

    def find(self, name: str) -> list[tuple[GraphGroup, _Member]]:
        return self.out_members.get(name, [])


def is_producer(m: nn.Module) -> bool:
    """A layer that produces channels (a conv or a linear layer)."""
    return isinstance(m, nn.modules.conv._ConvNd | nn.Linear)


def _supported(m: nn.Module) -> bool:
    """Layer types :func:`remove_channels` knows how to shrink."""
    if isinstance(m, nn.LayerNorm):
        return len(m.normalized_shape) == 1
    if isinstance(m, nn.MultiheadAttention):
        return bool(m._qkv_same_embed_dim) and m.bias_k is None and m.bias_v is None
    return isinstance(m, nn.modules.conv._ConvNd | nn.Linear | nn.modules.batchnorm._NormBase | nn.GroupNorm
                      | nn.PReLU)


def is_depthwise(m: nn.Module) -> bool:
    """Depthwise in Torch-Pruning's sense: one input and one output channel per group."""
    return (isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1 and m.groups == m.out_channels
            and m.groups == m.in_channels)


@contextlib.contextmanager
def preserve_mode(model: nn.Module) -> Iterator[None]:
    """Torch-Pruning puts the model in eval mode to trace it; give every module its own mode back."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for m, t in modes:
            m.training = t


def forward_fn(model: nn.Module, inputs: Any) -> Any:
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, list | tuple):
        return model(*inputs)
    return model(inputs)


def to_meta(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return torch.empty_like(obj, device="meta")
    if isinstance(obj, dict):
        return {k: to_meta(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(to_meta(v) for v in obj)
    return obj


def _meta_batchnorm(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """BatchNorm on the meta twin: the same channel contract and one autograd node fed by ``x`` alone (all
    the dependency graph needs), without the cost of the meta batch-norm decomposition."""
    if x.dim() < 2 or x.shape[1] != self.num_features:
        raise RuntimeError(f"expected {self.num_features} channels, got input of shape {tuple(x.shape)}")
    return x * 1.0


def meta_twin(model: nn.Module) -> nn.Module:
    """A structural copy of ``model`` on the ``meta`` device (no weights copied, hooks dropped).

    Tracing the twin costs no arithmetic (a ResNet-50 traces in well under a second on CPU) and never
    fires the user's forward hooks (e.g. activation statistics being collected) on the real model.
    """
    memo: dict[int, Any] = {}
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) in memo:
            continue
        if isinstance(t, nn.Parameter):
            memo[id(t)] = nn.Parameter(torch.empty_like(t, device="meta"), requires_grad=True)
        else:
            memo[id(t)] = torch.empty_like(t, device="meta")
    twin = copy.deepcopy(model, memo)
    for m in twin.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.forward = types.MethodType(_meta_batchnorm, m)  # type: ignore[method-assign]
        for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
                     "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called"):
            d = getattr(m, attr, None)
            if isinstance(d, dict):
                d.clear()
    return twin


def build_graph(model: nn.Module, example_inputs: Any) -> Any:
    """Torch-Pruning's DependencyGraph of ``model`` (traced once with ``example_inputs``, mode preserved).

    The trace runs on a :func:`meta_twin` when the model allows it, else on the model itself.
    """
    import torch_pruning as tp

    def trace(m: nn.Module, x: Any) -> Any:
        with preserve_mode(m), torch.enable_grad():
            return tp.DependencyGraph().build_dependency(m, x, forward_fn=forward_fn, verbose=False)

    try:
        twin = meta_twin(model)
        return trace(twin, to_meta(example_inputs))
    except Exception:  # an op without a meta kernel, data-dependent control flow, an uncopyable attribute
        pass
    try:
        return trace(model, example_inputs)
    except PrunekitError:
        raise
    except Exception as exc:
        raise PrunekitError(f"cannot trace the model with the example inputs ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); pass inputs of the "
                            "shape the model expects") from None


HEAD_COUNT_ATTRS = ("num_heads", "num_attention_heads", "n_heads", "n_head", "heads")
"""Attributes an attention module holds its number of heads in (torch, HF ``transformers``, common code)."""
_MATMUL_NODES = ("Bmm", "MmBackward", "Matmul", "ScaledDotProduct", "Baddbmm")

HeadsMap = Mapping[Any, int]
"""A user's ``num_heads``: attention module (or q/k/v layer), object or dotted name -> number of heads."""


def _head_count(model: nn.Module, layers: list[str], num_heads: HeadsMap | None) -> tuple[int, str] | None:
    """(heads, owner) for an attention group produced by ``layers``: the user's ``num_heads`` entry for a layer
    or one of its parents, else the first head-count attribute found on a parent (nearest first)."""
    by_name = {k: v for k, v in (num_heads or {}).items() if isinstance(k, str)}
    by_obj = {id(k): v for k, v in (num_heads or {}).items() if isinstance(k, nn.Module)}
    for layer in layers:
        parts = layer.split(".")
        for depth in range(len(parts), -1, -1):
            name = ".".join(parts[:depth])
            mod = model.get_submodule(name)
            if name in by_name or id(mod) in by_obj:
                return int(by_name.get(name, by_obj.get(id(mod), 0))), name
    for layer in layers:
        parts = layer.split(".")
        for depth in range(len(parts) - 1, max(len(parts) - 4, -1), -1):
            name = ".".join(parts[:depth])
            mod = model.get_submodule(name)
            for attr in HEAD_COUNT_ATTRS:
                v = getattr(mod, attr, None)
                if isinstance(v, int) and not isinstance(v, bool) and v > 0:
                    return v, name
    return None


def _heads_of(g: GraphGroup, model: nn.Module, attention: bool, num_heads: HeadsMap | None) -> str:
    """Fill ``g.heads`` / ``g.head_owners``; return why the group cannot be pruned ("" if it can)."""
    for m in g.members:
        if isinstance(m.target, nn.MultiheadAttention):
            hd = m.target.head_dim
            g.heads.append((m.name, hd))
            g.head_owners.append((m.name, hd))
    if not attention or g.heads:  # no matmul, or the matmul is inside a MultiheadAttention
        return ""
    qkv = [m for m in g.members if m.side == OUT and isinstance(m.target, nn.Module) and is_producer(m.target)]
    names = list(dict.fromkeys(m.name for m in qkv))
    found = _head_count(model, names, num_heads)
    where = names[0] if names else g.name
    if found is None:
        return (f"its channels are attention heads ({', '.join(names)} meet in a matmul) but the number of heads "
                f"is unknown; pass num_heads={{{where.rpartition('.')[0] or where!r}: heads}}")
    heads, owner = found
    widths = {len(m.idxs) for m in qkv}
    if len(widths) != 1 or g.size % heads or any(sorted(m.idxs) != list(range(len(m.idxs))) for m in qkv):
        return (f"its channels are the attention heads of {owner!r} but {', '.join(names)} do not split into "
                f"{heads} equal heads (grouped-query attention is not supported)")
    hd = g.size // heads
    for m in qkv:
        g.heads.append((m.name, hd))
    g.head_owners.append((owner, hd))
    return ""


def analyse(model: nn.Module, example_inputs: Any, num_heads: HeadsMap | None = None) -> Analysis:
    """Trace ``model`` and list every coupled group of output channels, in original channel numbering.

    Groups whose channels meet in a matmul (attention q / k / v) are head-aware: their head size comes from
    ``num_heads`` or the head-count attribute of the attention module; without one they are not prunable.
    """
    from torch_pruning import ops

    dg = build_graph(model, example_inputs)
    modules = dict(model.named_modules())
    order = {m: i for i, m in enumerate(modules.values())}
    real_params = dict(model.named_parameters(remove_duplicate=False))
    traced_names = {m: n for n, m in dg.model.named_modules()}  # the twin's modules (or the model's)
    param_names = {p: n for p, n in getattr(dg, "_param_to_name", {}).items() if n in real_params}
    roots = (ops.TORCH_CONV, ops.TORCH_LINEAR)
    groups: list[GraphGroup] = []
    out_members: dict[str, list[tuple[GraphGroup, _Member]]] = {}
    for tg in dg.get_all_groups(ignored_layers=[], root_module_types=roots):
        members: list[_Member] = []
        reaches_output, unsupported, attention = False, [], False
        for item in tg:
            dep, idxs, root = item.dep, list(item.idxs), list(item.root_idxs)
            node = dep.target
            target = node.module
            gname = type(getattr(node, "grad_fn", None)).__name__
            if node.type == ops.OPTYPE.ELEMENTWISE and any(k in gname for k in _MATMUL_NODES):
                attention = True
            carries = dg.is_out_channel_pruning_fn(dep.handler)  # this node's output holds these channels
            if node.type == ops.OPTYPE.OUTPUT or (carries and not node.outputs):  # a sink is a model output
                reaches_output = True
            if node.type == ops.OPTYPE.OUTPUT:
                continue
            if isinstance(target, nn.Parameter):
                name = param_names.get(target)
                if name is None:
                    unsupported.append("an unnamed parameter")
                    continue
                members.append(_Member(name, real_params[name], OUT, idxs, root, pruning_dim=node.pruning_dim))
                continue
            if not isinstance(target, nn.Module) or target not in traced_names:
                continue  # reshape, concat, add, relu, ...: no parameters
            name = traced_names[target]
            real = modules.get(name)
            side = OUT if carries else IN
            if real is None or not _supported(real) or any(r is None for r in root):
                unsupported.append(f"{name} ({type(target).__name__})")
                continue
            if (isinstance(real, nn.modules.conv._ConvNd) and real.groups > 1 and real.groups == real.out_channels
                    and not is_depthwise(real)):
                unsupported.append(f"{name} (conv with groups == out_channels != in_channels)")
                continue
            source = None
            if side == OUT and not is_producer(real):
                ins = [traced_names.get(n.module) for n in node.inputs if isinstance(n.module, nn.Module)]
                if len(ins) == 1 and ins[0] is not None and is_producer(modules[ins[0]]):
                    source = ins[0]
            members.append(_Member(name, real, side, idxs, root, source=source))
        if not members:
            continue
        producers = [m for m in members if m.side == OUT and isinstance(m.target, nn.Module)
                     and is_producer(m.target)]
        if not producers:
            continue
        producers.sort(key=lambda m: order[m.target])
        size = len(tg[0].root_idxs) if len(tg) else 0
        size = max(size, max((max(m.root) + 1 for m in members if m.root), default=0))
        # name the group after its first producer (module order) that holds every channel of the group,
        # and number the group's channels as that layer does
        root_member = producers[0]
        for p in producers:
            if len(p.idxs) == size and sorted(p.root) == list(range(size)) and sorted(p.idxs) == list(range(size)):
                root_member = p
                break
        if root_member.idxs != root_member.root:
            renum = dict(zip(root_member.root, root_member.idxs, strict=True))
            if len(renum) == size:
                for m in members:
                    m.root = [renum[r] for r in m.root]
        reason = ""
        if reaches_output:
            reason = "its channels are outputs of the model (e.g. the classifier)"
        elif unsupported:
            reason = f"it is coupled to layers prunekit cannot shrink ({', '.join(sorted(set(unsupported)))})"
        g = GraphGroup(root_member.name, size, sorted(members, key=lambda m: (m.side, _order_of(m, order))),
                   prunable=not reason, reason=reason)
        head_reason = _heads_of(g, model, attention, num_heads)
        if head_reason and g.prunable:
            g.prunable, g.reason = False, head_reason
        groups.append(g)
        for m in g.members:
            if m.side == OUT:
                out_members.setdefault(m.name, []).append((g, m))
    groups.sort(key=lambda g: order[modules[g.name]])
    return Analysis(groups=groups, modules=modules, out_members=out_members)


def _order_of(m: _Member, order: dict[Any, int]) -> int:
    return order.get(m.target, len(order))


def channel_groups(model: nn.Module, example_inputs: Any, layers: Iterable[str] | None = None,
                   *, include_unprunable: bool = False, num_heads: HeadsMap | None = None) -> list[ChannelGroup]:
    """The prunable coupled groups of output channels, in module order.

    ``layers`` keeps only groups with one of these layers (conv, linear or norm) as a member. Groups whose
    channels reach the model's output (the classifier) are left out unless ``include_unprunable``.
    Attention groups carry ``head_dim`` / ``heads`` (see :func:`prunekit.surgery.remove_channels` for
    ``num_heads``).
    """
    an = analyse(model, example_inputs, num_heads)
    wanted: set[str] | None = None
    if layers is not None:
        wanted = set(layers)
        unknown = sorted(n for n in wanted if n not in an.modules)
        if unknown:
            raise PrunekitError(f"channel_groups: the model has no layer {unknown[0]!r}")
        untraced = sorted(n for n in wanted if n not in an.out_members)
        if untraced:
            raise PrunekitError(f"channel_groups: layer {untraced[0]!r} has no removable output channels "
                                "(not a conv/linear/norm layer reached by example_inputs)")
    out = []
    for g in an.groups:
        if not g.prunable and not include_unprunable:
            continue
        if wanted is not None and not any(m.name in wanted for m in g.members if m.side == OUT):
            continue
        out.append(g.public())
    return out
