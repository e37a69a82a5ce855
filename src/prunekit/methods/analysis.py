"""One analysis of a network, shared by every method: what each prunable channel group holds, the residual
blocks, and the activation after each group.

Everything comes from the surgery's graph (Torch-Pruning's dependency graph, traced on a meta twin:
:func:`prunekit.surgery.channel_groups`, :func:`prunekit.surgery.residual_blocks`); there is no second
tracer. A method asks :meth:`NetworkAnalysis.usable` for the groups it can use with a predicate returning
why not ("" when it can); the groups it cannot use are skipped at bind time and listed, with the reason, in
its report, so that no group fails after training.

>>> from prunekit.testing import corpus
>>> net = corpus.build("hf-convnextv2")
>>> an = analyse(net.model, net.inputs)
>>> g = an.groups[1]
>>> g.activation, g.params[0].rpartition(".")[2]
('gelu', 'weight')
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from torch import nn

from prunekit.errors import PrunekitError

T = TypeVar("T")

ACTIVATIONS = {"Relu": "relu", "Hardtanh": "relu6", "Gelu": "gelu", "Silu": "silu", "Hardswish": "hardswish",
               "Mish": "mish", "Elu": "elu", "LeakyRelu": "leaky_relu", "Sigmoid": "sigmoid", "Tanh": "tanh",
               "Hardsigmoid": "hardsigmoid", "Softplus": "softplus"}
"""autograd node name (without ``Backward``) -> activation name."""
ZERO_AT_ZERO = frozenset({"relu", "relu6", "gelu", "silu", "hardswish", "mish", "elu", "leaky_relu", "tanh"})
"""Element-wise activations with f(0) = 0: a channel scaled to 0 before them stays 0 after them."""
RELU_LIKE = frozenset({"relu", "relu6", "gelu", "silu", "hardswish", "mish", "elu", "leaky_relu"})
"""Activations that (nearly) silence non-positive inputs: APoZ, or its generalisation, means something."""
_PASS = ("BatchNorm", "Mul", "Add", "Permute", "View", "Reshape", "Transpose", "Clone", "Dropout", "Div",
         "Unsafe", "Expand", "Contiguous", "Alias")
"""Nodes an activation may sit behind and still be "after the group" (norms, layer-scale, bias, residual sum,
layout changes)."""


class _OfGroup(Generic[T]):
    """A read-only attribute of :class:`GroupInfo` that is the same-named one of its surgery group, as ``T``
    (a plain value: the group's own may be a list or a tensor-derived number)."""

    def __init__(self, convert: Callable[[Any], T]) -> None:
        self.convert = convert

    def __set_name__(self, owner: type, name: str) -> None:
        self.attr = name

    def __get__(self, obj: Any, owner: type | None = None) -> T:
        return self.convert(getattr(obj.group, self.attr))


@dataclass(frozen=True)
class GroupInfo:
    """A prunable channel group (:class:`prunekit.surgery.ChannelGroup`) and what it holds."""

    group: Any
    norms: tuple[str, ...]
    """Norm modules on these channels (BatchNorm, LayerNorm, ...)."""
    params: tuple[str, ...]
    """Bare per-channel parameters (layer-scale, GRN, position embeddings, biases held outside a layer)."""
    renormalising: tuple[str, ...]
    """LayerNorm / GroupNorm modules computing over these channels (removal is not plain masking)."""
    depthwise: tuple[str, ...]
    """Depthwise convolutions among the producers (one filter per channel)."""
    activation: str | None
    """The element-wise activation after the group's root layer (``relu``, ``gelu``, ``silu``, ...), through
    norms, layer-scales and residual sums; None when there is none or its paths disagree."""
    pre_activation: str = ""
    """The module whose output the activation reads (the root layer or its BatchNorm), "" when the activation
    reads something else (a residual sum, a scaled or permuted tensor)."""
    tails: tuple[tuple[str, str | None, str], ...] = ()
    """``(depthwise conv, its activation, its pre-activation)`` for each depthwise conv of the group: the
    channels leave the group through the last of them (an inverted residual's expand -> depthwise)."""
    readers: tuple[tuple[str, str | None], ...] = ()
    """``(norm, its activation)`` for each BatchNorm on these channels other than :attr:`pre_activation`: where
    later layers read them, e.g. the BN -> ReLU -> conv of each DenseNet layer reading a concatenation
    (activation None when none, or not read directly from that norm)."""

    # the surgery group's own attributes, as plain values
    name = _OfGroup[str](str)
    layers = _OfGroup[tuple[str, ...]](tuple)
    consumers = _OfGroup[tuple[str, ...]](tuple)
    size = _OfGroup[int](int)
    chunks = _OfGroup[int](int)
    heads = _OfGroup[int](int)
    head_dim = _OfGroup[int](int)


@dataclass
class NetworkAnalysis:
    """Every prunable group with its contents, the residual blocks, and the groups that cannot be pruned."""

    groups: list[GroupInfo]
    blocks: list[str]
    unprunable: dict[str, str] = field(default_factory=dict)
    """Group name -> why the surgery cannot prune it (reaches the output, unsupported layer, ...)."""

    def usable(self, why_not: Callable[[GroupInfo], str]) -> tuple[list[GroupInfo], dict[str, str]]:
        """The groups ``why_not`` accepts (returns "") and ``{group: reason}`` for the others."""
        ok, skipped = [], {}
        for g in self.groups:
            reason = why_not(g)
            if reason:
                skipped[g.name] = reason
            else:
                ok.append(g)
        return ok, skipped


def _activations(dg: Any, layers: Sequence[str], names: dict[Any, str]) -> tuple[set[str], set[str]]:
    """Activations reached from the output of ``layers`` through norms, scales, sums and layout changes, and
    the module whose output each activation reads when that path holds only modules (root, BatchNorm): its
    pre-activation ("" when it passes a sum, a scale or a layout change)."""
    mod_of = {n: m for m, n in names.items()}
    found: set[str] = set()
    pre: set[str] = set()
    todo: list[Any] = []
    seen: set[Any] = set()
    for layer in layers:
        node = dg.module2node.get(mod_of.get(layer))
        if node is not None:
            todo.extend((o, 0, layer) for o in node.outputs)
    while todo:
        node, depth, last = todo.pop()
        if id(node) in seen or depth > 8:
            continue
        seen.add(id(node))
        fn = type(getattr(node, "grad_fn", None)).__name__.replace("Backward0", "").replace("Backward1", "")
        module = node.module
        if fn in ACTIVATIONS:
            found.add(ACTIVATIONS[fn])
            pre.add(last)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            todo.extend((o, depth + 1, names.get(module, "")) for o in node.outputs)
        elif fn.startswith(_PASS) or isinstance(module, nn.LayerNorm | nn.GroupNorm):
            todo.extend((o, depth + 1, "") for o in node.outputs)
        else:
            found.add("")  # a layer, a matmul, a concat...: no element-wise activation on this path
    return found, pre


def analyse(model: nn.Module, example_inputs: Any) -> NetworkAnalysis:
    """Trace ``model`` (the surgery's graph) and describe every channel group, block and activation."""
    from prunekit.surgery import residual_blocks
    from prunekit.surgery.graph import analyse as graph_analyse
    from prunekit.surgery.graph import build_graph

    an = graph_analyse(model, example_inputs)
    dg = build_graph(model, example_inputs)
    names = {m: n for n, m in dg.model.named_modules()}
    mods = dict(model.named_modules())
    groups, unprunable = [], {}
    for raw in an.groups:
        if not raw.prunable:
            unprunable[raw.name] = raw.reason
            continue
        g = raw.public()
        norms = tuple(n for n in g.norms if n in mods)
        params = tuple(n for n in g.norms if n not in mods)
        renorm = tuple(n for n in norms if isinstance(mods[n], nn.LayerNorm | nn.GroupNorm))
        dw = tuple(n for n in g.layers if isinstance(mods[n], nn.modules.conv._ConvNd)
                   and mods[n].groups > 1 and mods[n].groups == mods[n].out_channels == mods[n].in_channels)
        acts, pre = _activations(dg, [g.name], names)  # the root's path (an SE gate's sigmoid is another)
        act = next(iter(acts)) if len(acts) == 1 and "" not in acts else None
        before = next(iter(pre)) if act and len(pre) == 1 else ""
        tails = []
        for d in dw:
            a, p = _activations(dg, [d], names)
            tails.append((d, next(iter(a)) if len(a) == 1 and "" not in a else None,
                          next(iter(p)) if len(a) == 1 and "" not in a and len(p) == 1 else ""))
        readers = []
        for n in norms:
            if n != before and isinstance(mods[n], nn.modules.batchnorm._BatchNorm):
                a, p = _activations(dg, [n], names)
                readers.append((n, next(iter(a)) if len(a) == 1 and "" not in a and p == {n} else None))
        groups.append(GroupInfo(g, norms, params, renorm, dw, act, before, tuple(tails), tuple(readers)))
    try:
        blocks = list(residual_blocks(model, example_inputs))
    except PrunekitError:  # a block analysis that cannot run means no blocks, never a failed analysis
        blocks = []
    return NetworkAnalysis(groups, blocks, unprunable)


def foreign_params(model: nn.Module, info: GroupInfo) -> list[str]:
    """Owners of the group's bare per-channel parameters that are not torch layers (e.g. HF's GRN): they may
    compute over all the channels, so removing some is not masking them; :func:`removal_refusal` tells."""
    owners = []
    for p in info.params:
        owner = p.rpartition(".")[0]
        mod = model.get_submodule(owner) if owner else model
        if owner and not type(mod).__module__.startswith("torch.") and owner not in owners:
            owners.append(owner)
    return owners


def removal_refusal(model: nn.Module, example_inputs: Any, info: GroupInfo) -> str:
    """Why removing half of the group's channels (whole heads, the same share of every chunk) from a copy of
    ``model`` is refused by the surgery's removal-equals-masking check, or is only approximate (checked
    against a renormalised reference), "" when it is exact. Bind-time methods call it for groups they doubt."""
    import copy

    from prunekit.surgery import remove_channels

    twin = copy.deepcopy(model)
    unit = info.head_dim or 1  # half of the channels (whole heads; the same share of every chunk)
    per = info.size // max(1, info.chunks)
    half = max(unit, (per // 2) // unit * unit)
    chans = [c * per + i for c in range(max(1, info.chunks)) for i in range(half)]
    try:
        report = remove_channels(twin, {info.name: chans}, example_inputs)
    except PrunekitError as exc:
        return str(exc).split("; the model was restored")[0]
    if report.approximate:  # checked only against a renormalised reference: not plain masking
        why = next(iter(report.approximate.values()))
        return f"removing channels of group {info.name!r} is not masking them: {why}"
    return ""


def skipped_lines(skipped: dict[str, str]) -> list[str]:
    """``"group: reason"`` lines for a report."""
    return [f"{k}: {v}" for k, v in skipped.items()]


__all__ = ["ACTIVATIONS", "RELU_LIKE", "ZERO_AT_ZERO", "GroupInfo", "NetworkAnalysis", "analyse", "foreign_params",
           "removal_refusal", "skipped_lines"]
