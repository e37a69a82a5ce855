"""Scaling factors on structures (the lambda of SSS, the channel scales of Network Slimming): the factor
modules, where they go in a network, folding them into the layer before, and removing the structures whose
factor is zero. Shared by :mod:`prunekit.methods.sss` and the Network Slimming peer.

Factors are real modules (a layer becomes ``Sequential(layer, scale)``; a block factor is a ``branch`` child
named ``block_scale``; after a BatchNorm, the container is a :class:`ScaledSequential`, which computes the
pair as one batch norm; around an ``nn.MultiheadAttention``, a :class:`ScaledAttention`), registered with
:func:`prunekit.io.register_module` so that checkpoints describe them and resume is exact.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.errors import PrunekitError
from prunekit.io import register_module, set_submodule

# ---------------------------------------------------------------------------------------------------------
# the scaling factors (the paper's lambda)

NORM_LAYERS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class Scale(nn.Module):
    """Base of the factor modules: one learnable ``factor`` tensor, initialised to 1."""

    kind = "base"

    def __init__(self, size: int) -> None:
        super().__init__()
        self.factor = nn.Parameter(torch.ones(size))

    def per_channel(self, num_channels: int) -> torch.Tensor:
        """The factor of every channel of an output with ``num_channels`` channels."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lam = self.per_channel(x.shape[1])
        return x * lam.view(1, -1, *([1] * (x.dim() - 2)))


@register_module
class ChannelScale(Scale):
    """One factor per channel (conv) or neuron (linear): ``y[:, c] = lambda_c * x[:, c]``."""

    kind = "channel"

    def __init__(self, num_channels: int, layer: str = "", last: bool = False, reader: bool = False) -> None:
        super().__init__(num_channels)
        self.num_channels = num_channels
        self.layer = layer  # the conv / linear whose channels these are (placed from the analysis), or ""
        self.last = last  # channels are the last dimension (a linear layer's output, e.g. [N, tokens, C])
        self.reader = reader  # after a BN reading a concatenation (``layer`` is that BN): a channel goes when
        #                       every reader's factor of it is 0

    def per_channel(self, num_channels: int) -> torch.Tensor:
        return self.factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor if self.last else super().forward(x)

    def to_config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {"num_channels": self.num_channels}
        if self.layer:
            cfg["layer"] = self.layer
        if self.last:
            cfg["last"] = True
        if self.reader:
            cfg["reader"] = True
        return cfg

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> ChannelScale:
        layer, last, reader = cfg.get("layer", ""), cfg.get("last", False), cfg.get("reader", False)
        if not isinstance(layer, str) or not isinstance(last, bool) or not isinstance(reader, bool) or \
                set(cfg) - {"num_channels", "layer", "last", "reader"}:
            raise PrunekitError(f"ChannelScale: bad configuration {sorted(cfg)}")
        return cls(_pos_int(cfg, "num_channels"), layer, last, reader)


@register_module
class GroupScale(Scale):
    """One factor per group of a grouped convolution's output (contiguous blocks of channels)."""

    kind = "group"

    def __init__(self, num_channels: int, groups: int, layer: str = "") -> None:
        if num_channels % groups:
            raise PrunekitError(f"GroupScale: {num_channels} channels do not split into {groups} groups")
        super().__init__(groups)
        self.num_channels, self.groups = num_channels, groups
        self.layer = layer  # the grouped conv whose groups these are (placed from the analysis), or ""

    def per_channel(self, num_channels: int) -> torch.Tensor:
        return self.factor.repeat_interleave(self.num_channels // self.groups)

    def to_config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {"num_channels": self.num_channels, "groups": self.groups}
        if self.layer:
            cfg["layer"] = self.layer
        return cfg

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> GroupScale:
        return cls(*_split_config(cls.__name__, cfg, "groups"))


@register_module
class BlockScale(Scale):
    """One factor for a whole residual branch."""

    kind = "block"

    def __init__(self, block: str = "", fold: str = "", branch: str = "") -> None:
        super().__init__(1)
        self.block = block  # placed from the analysis: the residual block it scales the branch of
        self.fold = fold  # ... and the conv / linear / BN (model name) the factor folds into
        self.branch = branch  # one of several branches of the block's sum (a transformer layer): its layer

    def per_channel(self, num_channels: int) -> torch.Tensor:
        return self.factor.expand(num_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor

    def to_config(self) -> dict[str, Any]:
        cfg = {"block": self.block, "fold": self.fold} if self.block else {}
        if self.branch:
            cfg["branch"] = self.branch
        return cfg

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> BlockScale:
        if set(cfg) - {"block", "fold", "branch"} or not all(isinstance(v, str) for v in cfg.values()):
            raise PrunekitError(f"BlockScale: bad configuration {sorted(cfg)}")
        return cls(cfg.get("block", ""), cfg.get("fold", ""), cfg.get("branch", ""))


@register_module
class HeadScale(Scale):
    """One factor per attention head, on a value projection's output (channels last, ``head_dim`` each):
    a head's output is ``softmax(q k^T) (lambda_h v_h)``, so a zero factor silences the whole head. Counted
    with the group factors (the paper's "groups", ``gamma_group``)."""

    kind = "group"

    def __init__(self, num_channels: int, heads: int, layer: str = "") -> None:
        if num_channels % heads:
            raise PrunekitError(f"HeadScale: {num_channels} channels do not split into {heads} heads")
        super().__init__(heads)
        self.num_channels, self.heads, self.layer = num_channels, heads, layer

    def per_channel(self, num_channels: int) -> torch.Tensor:
        return self.factor.repeat_interleave(self.num_channels // self.heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.per_channel(self.num_channels)

    def to_config(self) -> dict[str, Any]:
        return {"num_channels": self.num_channels, "heads": self.heads, "layer": self.layer}

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> HeadScale:
        return cls(*_split_config(cls.__name__, cfg, "heads"))


_U = TypeVar("_U", bound="_Unconfigured")


class _Unconfigured(nn.Sequential):
    """A factor container whose children are its whole description: a checkpoint records it by name only."""

    def to_config(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_config(cls: type[_U], cfg: dict[str, Any]) -> _U:
        if cfg:
            raise PrunekitError(f"{cls.__name__}: takes no configuration, got {sorted(cfg)}")
        return cls()


@register_module
class ScaledSequential(_Unconfigured):
    """An ``nn.Sequential`` that runs each BatchNorm directly followed by a scaling factor (``Sequential(bn,
    factor)``, or a residual branch ending ``[..., bn3, block_scale]``) as one batch norm whose affine holds
    the factor: ``factor(bn(x)) == batch_norm(x, gamma * lambda, beta * lambda)`` (without affine: ``gamma =
    lambda``, no shift). The running statistics are of the input, so they update exactly as the BN's own
    forward updates them. Why: the factor's multiply costs an activation-sized pass forward and two backward,
    at every factor of every step (issue 18: SSS cost 5-7% of a ResNet-50 step, about 2% fused). The same
    function up to float rounding (the products are grouped differently).

    Same children, parameters, buffers and state-dict keys as the ``nn.Sequential`` it replaces. A pair runs
    as two modules, as before, whenever fusing could change what an observer sees: a hook on either, a
    torch.fx or TorchScript trace, a norm with its own ``forward`` (a subclass, SyncBatchNorm), a factor on
    the last dimension."""

    def forward(self, x: Any) -> Any:
        mods = list(self._modules.values())
        i = 0
        while i < len(mods):
            after = mods[i + 1] if i + 1 < len(mods) else None
            if isinstance(after, Scale) and _fusable(mods[i], after, x):
                x = _scaled_batch_norm(mods[i], after, x)
                i += 2
            else:
                x = mods[i](x)
                i += 1
        return x



@register_module
class ScaledAttention(_Unconfigured):
    """``Sequential(attention, block_scale)``: an ``nn.MultiheadAttention`` whose attention output (the first
    element of the tuple it returns) the factor scales; the attention weights pass unchanged. Why a wrapper:
    ``nn.MultiheadAttention`` reads ``out_proj``'s weight and bias without calling it, so a factor after
    ``out_proj`` would never run. Folding multiplies ``out_proj``'s weight and bias (``factor * (W a + b)``)."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out = self[0](*args, **kwargs)
        return (self[1](out[0]), *out[1:])


def _fusable(bn: nn.Module, scale: Scale, x: Any) -> bool:
    """Whether ``scale(bn(x))`` can run as one batch norm without anyone seeing a difference."""
    return (isinstance(bn, NORM_LAYERS)
            and type(bn).forward is nn.modules.batchnorm._BatchNorm.forward and not getattr(scale, "last", False)
            and not (isinstance(x, torch.fx.Proxy) or torch.jit.is_tracing() or _hooked(bn) or _hooked(scale)))


def _scaled_batch_norm(bn: Any, scale: Scale, x: torch.Tensor) -> torch.Tensor:
    """``scale(bn(x))`` as one ``F.batch_norm``; the statistics and ``num_batches_tracked`` as
    ``_BatchNorm.forward`` updates them (momentum None: cumulative average)."""
    bn._check_input_dim(x)
    momentum = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:
            momentum = 1.0 / float(bn.num_batches_tracked)
    use_batch = bn.training or (bn.running_mean is None and bn.running_var is None)
    keep = not bn.training or bn.track_running_stats  # the buffers go in only where read or updated
    lam = scale.per_channel(bn.num_features)
    weight = lam.contiguous() if bn.weight is None else bn.weight * lam
    bias = None if bn.bias is None else bn.bias * lam
    return F.batch_norm(x, bn.running_mean if keep else None, bn.running_var if keep else None, weight, bias,
                        use_batch, momentum, bn.eps)


def _hooked(m: nn.Module) -> bool:
    """Forward or backward hooks on ``m``, or on every module (``torch.nn.modules.module``'s global ones)."""
    from torch.nn.modules import module as mm

    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
                or mm._global_forward_hooks or mm._global_forward_pre_hooks or mm._global_backward_hooks
                or mm._global_backward_pre_hooks)


def wrap(target: nn.Module, scale: Scale) -> nn.Sequential:
    """``Sequential(target, scale)``: a :class:`ScaledSequential` after a BatchNorm (fused), a
    :class:`ScaledAttention` around an ``nn.MultiheadAttention`` (its tuple), else plain."""
    if isinstance(target, nn.MultiheadAttention):
        return ScaledAttention(target, scale)
    return ScaledSequential(target, scale) if isinstance(target, NORM_LAYERS) else nn.Sequential(target, scale)


def _split_config(kind: str, cfg: dict[str, Any], parts: str) -> tuple[int, int, str]:
    """``(num_channels, parts, layer)`` of a factor per contiguous part of a layer's channels (conv groups,
    attention heads), checked: the config comes from a file."""
    layer = cfg.get("layer", "")
    if not isinstance(layer, str) or set(cfg) - {"num_channels", parts, "layer"}:
        raise PrunekitError(f"{kind}: bad configuration {sorted(cfg)}")
    return _pos_int(cfg, "num_channels"), _pos_int(cfg, parts), layer


def _pos_int(cfg: dict[str, Any], key: str) -> int:
    v = cfg.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or not 0 < v <= 1 << 20:
        raise PrunekitError(f"scaling factor config: {key} must be a positive integer, got {v!r}")
    return v


FACTOR_TYPES = (ChannelScale, GroupScale, BlockScale, HeadScale)
BLOCK_CHILD = "block_scale"


def factor_modules(model: nn.Module) -> list[tuple[str, Scale]]:
    """Every scaling-factor module of ``model`` with its name, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, FACTOR_TYPES)]


def factor_parameters(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """The factor tensors by kind (``channel``, ``group``, ``block``)."""
    out: dict[str, list[nn.Parameter]] = {"channel": [], "group": [], "block": []}
    for _, m in factor_modules(model):
        out[m.kind].append(m.factor)
    return out


# ---------------------------------------------------------------------------------------------------------
# where the factors go


@dataclass
class Site:
    """One place for a factor: wrap module ``target`` (or append to block ``target``'s branch)."""

    kind: str  # channel | group | block | head
    target: str  # the module whose output is scaled (BN, or conv / linear without BN; the block)
    layer: str  # the conv / linear producing those channels ("" for a block)
    channels: int
    groups: int = 1
    block: str = ""  # analysis placement of a block factor: the block (``target`` is its branch's end)
    fold: str = ""  # ... and where the factor folds
    last: bool = False  # channels are the output's last dimension (a linear layer)
    reader: bool = False  # a factor after a BN reading a concatenation (``layer`` is that BN)


_PASS_MODULES = (nn.ReLU, nn.ReLU6, nn.Identity, nn.Dropout, nn.Dropout2d, nn.Flatten, nn.MaxPool1d,
                 nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d,
                 nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_PASS_FUNCTIONS = {F.relu, torch.relu, torch.flatten, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d,
                   F.dropout}
_PASS_METHODS = {"relu", "relu_", "flatten", "view", "reshape"}


def _block_kind(m: nn.Module) -> str | None:
    """'residual' (prunekit's ResidualBlock protocol), 'torchvision' (BasicBlock / Bottleneck), or None."""
    from prunekit.surgery.blocks import block_kind

    return block_kind(m)


def is_block(m: nn.Module) -> bool:
    return _block_kind(m) is not None


def _last_bn_name(m: nn.Module) -> str:
    """torchvision blocks: the BN whose output meets the shortcut (``bn3`` of a Bottleneck, else ``bn2``)."""
    return "bn3" if isinstance(getattr(m, "bn3", None), NORM_LAYERS) else "bn2"


def _plain_conv(m: nn.Module) -> bool:
    return isinstance(m, nn.Linear) or (isinstance(m, nn.modules.conv._ConvNd) and m.groups == 1
                                        and not m.transposed)


def _grouped_conv(m: nn.Module) -> bool:
    return (isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1 and not m.transposed
            and not (m.groups == m.in_channels == m.out_channels))


def find_sites(model: nn.Module, channels: bool = True, blocks: bool = True, groups: bool = False) -> list[Site]:
    """Where :func:`insert_factors` would put factors (see the module docstring), in module order."""
    modules = dict(model.named_modules())
    sites: list[Site] = []
    if blocks:
        for name, m in modules.items():
            kind = _block_kind(m)
            if kind == "residual":
                if not isinstance(m.branch, nn.Sequential):
                    raise PrunekitError(f"residual block {name!r}: branch must be an nn.Sequential")
                sites.append(Site("block", name, "", _out_channels(m.branch)))
            elif kind == "torchvision":
                bn = _last_bn_name(m)
                sites.append(Site("block", f"{name}.{bn}", "", getattr(m, bn).num_features))
    if channels or groups:
        for site in layer_sites(model, modules):
            if (site.kind == "channel" and channels) or (site.kind == "group" and groups):
                sites.append(site)
    order = {n: i for i, n in enumerate(modules)}
    return sorted(sites, key=lambda s: order[s.target])


def _out_channels(seq: nn.Sequential) -> int:
    for m in reversed(list(seq)):
        if isinstance(m, NORM_LAYERS):
            return m.num_features
        if isinstance(m, nn.modules.conv._ConvNd):
            return m.out_channels
        if isinstance(m, nn.Linear):
            return m.out_features
    return 0


def layer_sites(model: nn.Module, modules: dict[str, nn.Module]) -> list[Site]:
    """Channel / group sites from a ``torch.fx`` trace; a Sequential-only scan when tracing fails."""
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # any tracing failure: fall back to the conservative scan
        return _sequential_sites(modules)

    def mod(node: Any) -> nn.Module | None:
        return modules.get(node.target) if node.op == "call_module" else None

    def passes(node: Any) -> bool:
        m = mod(node)
        if m is not None:
            return isinstance(m, _PASS_MODULES)
        if node.op == "call_function":
            return node.target in _PASS_FUNCTIONS or (node.target in (torch.mean, torch.amax)
                                                      and _spatial_dims(node))
        if node.op == "call_method":
            return node.target in _PASS_METHODS or (node.target in ("mean", "amax") and _spatial_dims(node))
        return False

    def only_consumed_by_layers(node: Any) -> bool:
        terminals, todo, seen = [], [node], set()
        while todo:
            n = todo.pop()
            for u in n.users:
                if u in seen:
                    continue
                seen.add(u)
                if passes(u) and u.args and u.args[0] is n:
                    todo.append(u)
                else:
                    terminals.append((u, n))
        return bool(terminals) and all(
            (m := mod(u)) is not None and _plain_conv(m) and u.args and u.args[0] is src for u, src in terminals)

    out = []
    for node in graph.nodes:
        m = mod(node)
        if m is None or not (_plain_conv(m) or _grouped_conv(m)):
            continue
        end, target = node, node.target
        users = list(node.users)
        if len(users) == 1 and isinstance(mod(users[0]), NORM_LAYERS):
            end, target = users[0], users[0].target
        if not only_consumed_by_layers(end):
            continue
        width = _width(m)
        if _plain_conv(m):
            out.append(Site("channel", target, node.target, width))
        else:
            out.append(Site("group", target, node.target, width, int(getattr(m, "groups", 1))))
    return out


def _spatial_dims(node: Any) -> bool:
    """A reduction over explicit spatial dims only (e.g. ``x.mean((2, 3))``): channels map one to one."""
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    dims = (dims,) if isinstance(dims, int) else dims
    return isinstance(dims, tuple | list) and len(dims) > 0 and all(isinstance(d, int) and d >= 2 for d in dims)


def _sequential_sites(modules: dict[str, nn.Module]) -> list[Site]:
    """Fallback for untraceable models: inside an ``nn.Sequential``, a conv/linear (+ BN) followed by a ReLU
    and then a plain conv/linear sibling: the only consumer of those channels is that sibling."""
    out = []
    for name, seq in modules.items():
        if not isinstance(seq, nn.Sequential):
            continue
        kids = list(seq.named_children())
        for i, (cname, layer) in enumerate(kids):
            if not (_plain_conv(layer) or _grouped_conv(layer)):
                continue
            j, target = i + 1, cname
            if j < len(kids) and isinstance(kids[j][1], NORM_LAYERS):
                target, j = kids[j][0], j + 1
            if j + 1 < len(kids) and isinstance(kids[j][1], nn.ReLU) and _plain_conv(kids[j + 1][1]):
                width = _width(layer)
                prefix = f"{name}." if name else ""
                kind = "channel" if _plain_conv(layer) else "group"
                out.append(Site(kind, prefix + target, prefix + cname, width,
                                1 if kind == "channel" else int(getattr(layer, "groups", 1))))
    return out


# ---------------------------------------------------------------------------------------------------------
# placement from the shared analysis (any network the surgery can trace)


def _foldable(m: nn.Module) -> bool:
    return (isinstance(m, NORM_LAYERS) and m.affine) or isinstance(m, nn.Linear) or (
        isinstance(m, nn.modules.conv._ConvNd) and not m.transposed)


def _fused_layer(model: nn.Module, name: str) -> str:
    """The ``nn.TransformerEncoderLayer`` / ``DecoderLayer`` holding module ``name`` ("" if none): in eval its
    forward may run torch's fused kernel on its children's weights without calling them (a factor module
    there would be skipped, a removed branch would break it)."""
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        owner = ".".join(parts[:i])
        if isinstance(model.get_submodule(owner), nn.TransformerEncoderLayer | nn.TransformerDecoderLayer):
            return owner
    return ""


_VALUE_NAMES = ("value", "v_proj", "v", "to_v", "wv", "v_lin")


def _head_site(model: nn.Module, info: Any) -> tuple[Site | None, str]:
    """A per-head factor on the value projection of an attention group (found by its name)."""
    mods = dict(model.named_modules())
    values = [n for n in info.layers if n.rpartition(".")[2] in _VALUE_NAMES and isinstance(mods[n], nn.Linear)]
    if len(values) != 1:
        return None, "attention heads whose value projection cannot be told by name (no per-head factor)"
    if info.renormalising:
        return None, f"{info.renormalising[0]!r} normalises over these channels"
    return Site("head", values[0], values[0], mods[values[0]].out_features, groups=info.heads, last=True), ""


def _group_site(model: nn.Module, info: Any) -> tuple[Site | None, str]:
    """A factor per group of a grouped (non-depthwise) convolution rooting ``info``, after its output (its BN),
    when an activation with f(0) = 0 follows: a zero silences the whole conv group, removed with its inputs."""
    from prunekit.methods.analysis import ZERO_AT_ZERO

    mods = dict(model.named_modules())
    conv = mods[info.name]
    if not _grouped_conv(conv):  # other producers (an SE gate's expand conv) are checked by removal on a copy
        return None, f"a grouped convolution splits its channels into {info.chunks} chunks (its own group factors)"
    if info.activation not in ZERO_AT_ZERO:
        return None, f"no element-wise activation with f(0) = 0 after the grouped convolution ({info.activation})"
    pre = info.pre_activation
    if not pre or pre not in mods or not _foldable(mods[pre]):
        return None, f"its {info.activation} reads a sum or a rescaled tensor, not a layer's output"
    return Site("group", pre, info.name, info.size, groups=int(conv.groups)), ""


def _channel_site(model: nn.Module, info: Any) -> tuple[Site | None, str]:
    """A channel factor for group ``info`` (see :func:`analysis_sites`), or why it gets none."""
    from prunekit.methods.analysis import ZERO_AT_ZERO, foreign_params

    mods = dict(model.named_modules())
    if info.head_dim:
        return None, "attention heads (no per-head factor here)"
    if info.chunks > 1:
        return None, f"a grouped convolution splits its channels into {info.chunks} chunks (group factors)"
    if info.renormalising:
        return None, f"{info.renormalising[0]!r} normalises over these channels (a zero would not stay zero)"
    if foreign_params(model, info):
        return None, f"{foreign_params(model, info)[0]!r} computes over these channels"
    if len([n for n in info.layers if n not in info.depthwise]) > 1:
        return None, "its channels meet a residual sum (block factors scale it)"
    layer, act, pre = info.name, info.activation, info.pre_activation
    if info.tails:  # expand -> depthwise: the channels leave through the last depthwise conv
        layer, act, pre = info.tails[-1]
    if act not in ZERO_AT_ZERO:
        return None, (f"no element-wise activation with f(0) = 0 after it ({act})" if act else
                      "no element-wise activation after it (a concatenation, a sum, the model's output)")
    if not pre or pre not in mods or not _foldable(mods[pre]):
        return None, f"its {act} reads a sum or a rescaled tensor, not a layer's output"
    width = info.size
    last = isinstance(mods[pre], nn.Linear)
    return Site("channel", pre, layer, width, last=last), ""


def _reader_sites(model: nn.Module, info: Any) -> tuple[list[Site], str]:
    """The channels of a concatenated branch: a factor after every BN reading them (before its activation
    with f(0) = 0), so that a channel whose factors are all 0 is read as 0 everywhere and goes through the
    concat mapping. A factor right after the producer would not do: each reader BN adds its shift to a 0."""
    from prunekit.methods.analysis import ZERO_AT_ZERO

    mods = dict(model.named_modules())
    if not info.readers:
        return [], "no BatchNorm reads its channels after the concatenation"
    for norm, act in info.readers:
        if act not in ZERO_AT_ZERO or not _foldable(mods[norm]):
            return [], f"{norm!r} reads its channels without an activation with f(0) = 0 after it"
    return [Site("channel", n, n, _width(mods[n]), reader=True) for n, _ in info.readers], ""


def _concatenated(model: nn.Module, info: Any) -> bool:
    """The group's channels are read through a concatenation: a norm on them is wider than the group."""
    return any(n in dict(model.named_modules()) and _width(model.get_submodule(n)) != info.size
               for n in info.norms if isinstance(model.get_submodule(n), NORM_LAYERS))


def _branch_sites(model: nn.Module, name: str, info: Any) -> tuple[list[Site], dict[str, str]]:
    """One block factor per branch of a sum with several (a transformer layer: attention, then MLP), after
    the layer producing the branch (its output projection), folded into it; a zero one removes the branch
    (:func:`prunekit.surgery.remove_branches`), all of them the block."""
    sites, skipped = [], {}
    for br in info.branches:
        m = model.get_submodule(br.layer) if br.layer else None
        if isinstance(m, nn.MultiheadAttention) and br.producer:  # the factor scales its output, folds in out_proj
            sites.append(Site("block", br.layer, br.layer, 0, block=name, fold=br.layer))
        elif m is None or not br.producer or not _foldable(m):
            skipped[br.layer or name] = (f"a branch of {name!r} not produced by a conv / linear / norm layer "
                                         f"({br.layer or 'none'}) to fold a factor into")
        else:
            sites.append(Site("block", br.layer, br.layer, 0, block=name, fold=br.layer))
    return sites, skipped


def _block_site(model: nn.Module, name: str, info: Any) -> tuple[Site | None, str]:
    """A block factor at the end of block ``name``'s branch, folded into the last conv / linear / BN there."""
    if not info.removable:
        return None, info.reason
    if len(info.branch_ends) != 1:
        return None, f"its branch ends in {len(info.branch_ends)} places ({', '.join(info.branch_ends)})"
    end = info.branch_ends[0]
    mods = dict(model.named_modules())
    m = mods[end]
    if isinstance(m, nn.MultiheadAttention):  # remove_blocks zeroes a branch end's tensor output, not a tuple
        return None, f"its branch ends in {end!r} (nn.MultiheadAttention returns a tuple)"
    if _foldable(m):
        return Site("block", end, "", 0, block=name, fold=end), ""
    order = list(mods)
    inner = [n for n in order if n.startswith(end + ".") and _foldable(mods[n])]
    if not inner and not any(True for _ in m.parameters()):  # dropout / drop-path / identity
        before = [n for n in order[:order.index(end)] if n.startswith(name + ".") and _foldable(mods[n])]
        inner = before[-1:]
    if not inner:
        return None, f"no conv / linear / norm to fold a factor into at the end of its branch ({end!r})"
    return Site("block", end, "", 0, block=name, fold=inner[-1]), ""


def analysis_sites(model: nn.Module, example_inputs: Any, channels: bool = True, blocks: bool = True,
                   heads: bool = False) -> tuple[list[Site], dict[str, str]]:
    """Factor sites from the shared analysis (:mod:`prunekit.methods.analysis`, the surgery's graph; no
    ``torch.fx``), and ``{structure: why it gets no factor}``.

    * channel factor after the output (its BatchNorm, else the layer) of every conv / linear group with a
      single producing layer that an element-wise activation with f(0) = 0 follows (ReLU, GELU, SiLU, ...):
      a zero factor makes the channel exactly 0 where its consumers read it; in an expand -> depthwise
      chain, after the depthwise conv's output, where the channels leave the group;
    * block factor (one scalar) at the end of every residual block's branch (the block analysis of
      :func:`prunekit.surgery.block_analysis`), folded into the last conv / linear / BN of that branch;
    * with ``heads`` (the paper's "groups"; SSS's ``groups`` option), a factor per attention head
      (:class:`HeadScale`) on the value projection of every head-aware group: a zero silences the head,
      removed whole (query, key and value channels); and a factor per group of every grouped convolution
      (:class:`GroupScale`, after its BN when an activation with f(0) = 0 follows): a zero removes the whole
      conv group, its output channels and the input channels that feed it (``conv_group_plan``).

    Each site is checked on a copy before it is used: every factor at a random value is folded and the
    outputs compared, then half of every channel factor and every block factor set to 0 is removed by
    the surgery (verified against masking); a site that fails either is dropped with the reason.
    """
    from prunekit.methods.analysis import analyse
    from prunekit.surgery import block_analysis

    sites: list[Site] = []
    skipped: dict[str, str] = {}
    if channels or heads:
        for info in analyse(model, example_inputs).groups:
            grouped_root = info.chunks > 1 and _grouped_conv(model.get_submodule(info.name))
            if (info.head_dim or grouped_root) and not heads:
                continue
            if not (info.head_dim or grouped_root) and not channels:
                continue
            if not (info.head_dim or grouped_root or info.renormalising) and _concatenated(model, info):
                readers, why = _reader_sites(model, info)
                sites += [r for r in readers if r.target not in {s.target for s in sites}]
                if why:
                    skipped[info.name] = why
                continue
            site, why = (_head_site(model, info) if info.head_dim else _group_site(model, info) if grouped_root
                         else _channel_site(model, info))
            if site is None:
                skipped[info.name] = why
            else:
                sites.append(site)
    if blocks:
        for name, binfo in block_analysis(model, example_inputs).items():
            if not binfo.removable and "contains residual blocks" in binfo.reason:
                continue  # a stage: its blocks get their own factors
            if binfo.removable and len(binfo.branches) > 1:
                branch_sites, why_not = _branch_sites(model, name, binfo)
                sites += branch_sites
                skipped.update(why_not)
                continue
            site, why = _block_site(model, name, binfo)
            if site is None:
                skipped[name] = why
            else:
                sites.append(site)
    unique: dict[str, Site] = {}
    for site in sites:  # one factor per module output (a BN both after its conv and reading a concatenation)
        fused = _fused_layer(model, site.target)
        if fused:
            skipped[_key(site) or site.target] = (
                f"inside {type(model.get_submodule(fused)).__name__} {fused!r}, whose eval forward may run torch's "
                "fused kernel on its layers' weights without calling them (a factor there would be skipped)")
        else:
            unique.setdefault(site.target, site)
    sites = _checked(model, example_inputs, list(unique.values()), skipped)
    order = {n: i for i, n in enumerate(dict(model.named_modules()))}
    return sorted(sites, key=lambda s: order[s.target]), skipped


def _key(s: Site) -> str:
    return s.layer or s.block  # a branch factor: its layer (a block has several)


def _checked(model: nn.Module, example_inputs: Any, sites: list[Site], skipped: dict[str, str]) -> list[Site]:
    """The sites whose factors fold exactly and whose zero structures the surgery removes exactly."""
    from prunekit.surgery.structured import compare_outputs

    sites = list(sites)
    for _ in range(len(sites) + 1):
        if not sites:
            return sites
        twin = copy.deepcopy(model).eval()
        _insert(twin, sites)
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for _, m in factor_modules(twin):
                m.factor.copy_(torch.rand(m.factor.shape, generator=gen) + 0.5)
            ref = _forward(twin, example_inputs)
            fold_factors(twin)
            _, problem = compare_outputs(ref, _forward(twin, example_inputs))
        if problem:  # find the site whose fold is wrong, one at a time
            bad = next((s for s in sites if _fold_problem(model, example_inputs, s)), sites[0])
            skipped[_key(bad)] = f"its factor does not fold exactly into {bad.fold or bad.target!r}"
            sites.remove(bad)
            continue
        bad_key, why = _removal_problem(model, example_inputs, sites)
        if not bad_key:
            return sites
        skipped[bad_key] = why
        sites = [s for s in sites if _key(s) != bad_key]
    return sites


def _forward(model: nn.Module, inputs: Any) -> Any:
    from prunekit.surgery.graph import forward_fn

    return forward_fn(model, inputs)


def _fold_problem(model: nn.Module, example_inputs: Any, site: Site) -> str:
    from prunekit.surgery.structured import compare_outputs

    twin = copy.deepcopy(model).eval()
    _insert(twin, [site])
    with torch.no_grad():
        for _, m in factor_modules(twin):
            m.factor.fill_(0.5)
        ref = _forward(twin, example_inputs)
        fold_factors(twin)
        return compare_outputs(ref, _forward(twin, example_inputs))[1]


def _removal_problem(model: nn.Module, example_inputs: Any, sites: list[Site]) -> tuple[str, str]:
    """On copies: zero half of every channel / head factor (every block factor), fold, remove; the result must
    equal the copy with those factors at 0 (not only the surgery's masking: a norm reading a zeroed channel
    after a concatenation still adds its shift). ``(site key, why)`` of a structure that fails, ``("", "")``
    when all went."""
    for kind in ("channel", "group", "block", "branch", "head"):
        chosen = [s for s in sites if s.kind == kind or (kind == "branch" and s.kind == "block" and s.layer)]
        if not chosen:
            continue
        problem = _zeroed_removal(model, example_inputs, sites, kind)
        if not problem:
            continue
        for s in chosen:  # which one: each alone
            alone = _zeroed_removal(model, example_inputs, [s], kind)
            if alone:
                return _key(s), alone
        return _key(chosen[0]), problem
    return "", ""


def _zeroed_removal(model: nn.Module, example_inputs: Any, sites: list[Site], kind: str) -> str:
    from prunekit import surgery
    from prunekit.surgery.structured import compare_outputs

    twin = copy.deepcopy(model).eval()
    _insert(twin, sites)
    with torch.no_grad():
        branched: set[str] = set()
        for _, m in factor_modules(twin):
            if kind == "branch" and isinstance(m, BlockScale) and m.branch and m.block not in branched:
                branched.add(m.block)  # one branch of each block alone
                m.factor.zero_()
            elif (m.kind if not isinstance(m, HeadScale) else "head") == kind:
                m.factor[: max(1, m.factor.numel() // 2)].zero_()
        ref = _forward(twin, example_inputs)
    blocks, zeros, summary = zero_structures(twin)
    fold_factors(twin)
    try:
        if blocks:
            remove_zero_blocks(twin, blocks, summary, example_inputs)
        plan = channel_plan(twin, zeros, summary, example_inputs)
        if plan:
            surgery.remove_channels(twin, plan, example_inputs, min_channels=1, clamp=True)
    except PrunekitError as exc:
        return str(exc).split("; the model was restored")[0]
    with torch.no_grad():
        _, problem = compare_outputs(ref, _forward(twin, example_inputs))
    return f"removing its zero structures changes the output ({problem})" if problem else ""


def insert_sites(model: nn.Module, sites: list[Site]) -> None:
    """Insert factors (all 1) at ``sites`` (from :func:`analysis_sites`), in place."""
    _insert(model, sites)


def _insert(model: nn.Module, sites: list[Site]) -> None:
    """Wrap each site's target as ``Sequential(target, factor)``, the last in module order first (a factor
    around a container must not rename the targets inside it before they are wrapped)."""
    order = {n: i for i, n in enumerate(dict(model.named_modules()))}
    for s in sorted(sites, key=lambda s: -order[s.target]):
        target = model.get_submodule(s.target)
        device = next((t.device for t in list(target.parameters()) + list(target.buffers())), None)
        if s.kind == "block":
            scale: Scale = BlockScale(s.block, s.fold, s.layer)
        elif s.kind == "head":
            scale = HeadScale(s.channels, s.groups, s.layer)
        elif s.kind == "group":
            scale = GroupScale(s.channels, s.groups, s.layer)
        else:
            scale = ChannelScale(s.channels, s.layer, s.last, s.reader)
        set_submodule(model, s.target, wrap(target, scale.to(device) if device else scale))


def insert_factors(model: nn.Module, channels: bool = True, blocks: bool = True,
                   groups: bool = False, example_inputs: Any = None) -> list[Site]:
    """Insert SSS scaling factors (all 1) into ``model`` in place; returns the sites used.

    With ``example_inputs`` the sites come from the shared analysis (:func:`analysis_sites`, any network);
    without, from the zoo's block classes and a ``torch.fx`` trace (:func:`find_sites`). A model that
    already holds factors is left as it is (so preparing twice is harmless).
    """
    if factor_modules(model):
        return []
    if example_inputs is not None:
        sites, _ = analysis_sites(model, example_inputs, channels=channels, blocks=blocks, heads=groups)
        _insert(model, sites)
        return sites
    sites = find_sites(model, channels=channels, blocks=blocks, groups=groups)
    for s in sites:
        target = model.get_submodule(s.target)
        device = next((t.device for t in list(target.parameters()) + list(target.buffers())), None)
        if s.kind == "block" and _block_kind(target) == "residual":
            _add_block_child(target, BlockScale().to(device) if device else BlockScale())
            continue
        scale: Scale
        if s.kind == "channel":
            scale = ChannelScale(s.channels)
        elif s.kind == "group":
            scale = GroupScale(s.channels, s.groups)
        else:  # a torchvision block: Sequential(last BN, BlockScale)
            scale = BlockScale()
        set_submodule(model, s.target, wrap(target, scale.to(device) if device else scale))
    return sites


def _add_block_child(block: nn.Module, scale: Scale) -> None:
    """Append a block factor to ``block.branch`` (the zoo's residual protocol). A branch ending in a BatchNorm
    becomes a :class:`ScaledSequential` (the factor fused into that BN) when it can still be recorded in an
    architecture (every child of a known or registered type), else it stays as it is."""
    from prunekit.io import module_spec

    branch = block.get_submodule("branch")
    kids = list(branch.named_children())
    if type(branch) is nn.Sequential and kids and isinstance(kids[-1][1], NORM_LAYERS):
        fused = _recast(branch, ScaledSequential)
        if module_spec(fused) is not None:
            set_submodule(block, "branch", fused)
            branch = fused
    branch.add_module(BLOCK_CHILD, scale)


def _recast(seq: nn.Sequential, cls: type[nn.Sequential]) -> nn.Sequential:
    """The children of ``seq`` (same objects, same names) in a new ``cls``, in the same train / eval mode."""
    out = cls(OrderedDict(seq.named_children()))
    out.training = seq.training
    return out


# ---------------------------------------------------------------------------------------------------------
# folding and removal


@torch.no_grad()
def _fold_into(layer: nn.Module, lam: torch.Tensor, where: str) -> None:
    """Multiply ``layer``'s output channels by ``lam`` through its parameters (exact up to rounding)."""
    if isinstance(layer, NORM_LAYERS):
        if not layer.affine:
            raise PrunekitError(f"{where}: cannot fold a factor into a BatchNorm without affine parameters")
        layer.weight.mul_(lam)
        layer.bias.mul_(lam)
    elif isinstance(layer, nn.MultiheadAttention):  # its output is out_proj(a): factor * (W a + b)
        _fold_into(layer.out_proj, lam, where)
    elif isinstance(layer, nn.Linear | nn.modules.conv._ConvNd) and not getattr(layer, "transposed", False):
        layer.weight.mul_(lam.view(-1, *([1] * (layer.weight.dim() - 1))))
        if layer.bias is not None:
            layer.bias.mul_(lam)
    else:
        raise PrunekitError(f"{where}: cannot fold a scaling factor into {type(layer).__name__}")


def fold_factors(model: nn.Module) -> int:
    """Fold every factor into the layer before it and remove the factor modules; returns how many.

    The last factor (module order) goes first and names are read again after each fold, since unwrapping a
    factor placed around a container (a branch end) renames what it holds."""
    n = 0
    while factor_modules(model):
        name, m = factor_modules(model)[-1]
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if isinstance(m, BlockScale) and m.block and isinstance(parent, nn.Sequential) and len(parent) == 2:
            set_submodule(model, parent_name, parent[0])  # unwrap the branch end, then fold where placed
            target = model.get_submodule(m.fold)
            if isinstance(target, nn.Sequential) and len(target) == 2 and isinstance(target[1], Scale):
                target = target[0]  # a channel factor still wraps it: a scalar commutes with it
            _fold_into(target, m.factor.detach().expand(_width(target)), m.fold)
        elif isinstance(m, BlockScale) and leaf == BLOCK_CHILD and isinstance(parent, nn.Sequential):
            kids = [k for k in parent.named_children() if k[0] != BLOCK_CHILD]
            if not kids:
                raise PrunekitError(f"{name}: the residual branch is empty, nothing to fold into")
            last_name, last = kids[-1]
            _fold_into(last, m.per_channel(_out_channels(parent)).detach(), f"{parent_name}.{last_name}")
            del parent._modules[BLOCK_CHILD]
            if type(parent) is ScaledSequential:  # nothing left to fuse: the branch as the network built it
                set_submodule(model, parent_name, _recast(parent, nn.Sequential))
        elif isinstance(parent, nn.Sequential) and len(parent) == 2 and parent[1] is m:
            layer = parent[0]
            _fold_into(layer, m.per_channel(_width(layer)).detach(), parent_name)
            set_submodule(model, parent_name, layer)
        else:
            raise PrunekitError(f"{name}: scaling factor is not where insert_factors puts it; cannot fold")
        n += 1
    return n


def _width(layer: nn.Module) -> int:
    if isinstance(layer, nn.MultiheadAttention):
        return int(layer.embed_dim)
    attr = ("num_features" if isinstance(layer, NORM_LAYERS) else
            "out_features" if isinstance(layer, nn.Linear) else "out_channels")
    return int(getattr(layer, attr))


def zero_structures(model: nn.Module) -> tuple[list[str], dict[str, list[int]], dict[str, dict[str, Any]]]:
    """Blocks whose factor is 0, zero channels (or conv groups) per wrapped layer, and a per-site summary."""
    blocks: list[str] = []
    zeros: dict[str, list[int]] = {}
    summary: dict[str, dict[str, Any]] = {}
    for name, m in factor_modules(model):
        lam = m.factor.detach()
        zero = (lam == 0).nonzero().flatten().tolist()
        if isinstance(m, BlockScale):
            # analysis placement names its block; else <block>.branch.block_scale / <block>.bn3.1
            block = m.block or name.rpartition(".")[0].rpartition(".")[0]
            key = m.branch or block  # one of several branches: keyed by its layer
            summary[key] = {"kind": "block", "factor": float(lam.item())}
            if m.branch:
                summary[key]["block"] = block
            if zero:
                blocks.append(key)
            continue
        wrapper = name.rpartition(".")[0]
        summary[wrapper] = {"kind": m.kind, "factors": int(lam.numel()), "zero": len(zero)}
        if isinstance(m, ChannelScale | HeadScale | GroupScale) and m.layer:
            summary[wrapper]["layer"] = m.layer
        if isinstance(m, HeadScale):
            summary[wrapper]["head_dim"] = m.num_channels // m.heads
        if isinstance(m, ChannelScale) and m.reader:
            summary[wrapper]["reader"] = True
        if zero:
            zeros[wrapper] = zero
    return blocks, zeros, summary


def remove_blocks(model: nn.Module, names: list[str], example_inputs: Any = None) -> None:
    """Drop the branch of each block: identity-shortcut blocks become their activation (surgery), a block
    with a projection shortcut becomes ``Sequential(shortcut, act)`` (exact, since its branch is 0). With
    ``example_inputs`` the blocks are any the graph finds, removed and verified by the surgery."""
    from prunekit import surgery

    if example_inputs is not None:
        surgery.remove_blocks(model, names, example_inputs)
        return
    plain = set(surgery.removable_blocks(model))
    if any(n in plain for n in names):
        surgery.remove_blocks(model, [n for n in names if n in plain])
    for n in names:
        if n not in plain:
            block = model.get_submodule(n)
            if _block_kind(block) == "residual":
                shortcut, act = block.get_submodule("shortcut"), block.get_submodule("act")
            else:
                shortcut, act = block.get_submodule("downsample"), copy.deepcopy(block.get_submodule("relu"))
                vars(act)["inplace"] = False
            set_submodule(model, n, nn.Sequential(OrderedDict([("shortcut", shortcut), ("act", act)])))


def remove_zero_blocks(model: nn.Module, names: list[str], summary: dict[str, dict[str, Any]],
                       example_inputs: Any, zoo: bool = False) -> tuple[list[str], list[str]]:
    """Remove the zero structures ``names`` of :func:`zero_structures`: blocks, and branches of blocks whose sum
    has several (all of a block's branches at 0: the block). ``zoo``: blocks placed by :func:`insert_factors`
    (removed without the graph). ``(blocks removed, branches removed)``."""
    from prunekit import surgery

    block_of = {k: v["block"] for k, v in summary.items() if v.get("block")}
    zero_branches = [n for n in names if n in block_of]
    infos = surgery.block_analysis(model, example_inputs) if zero_branches else {}
    whole = [b for b in dict.fromkeys(block_of[n] for n in zero_branches)  # every branch at 0, not only the
             if b in infos and {br.layer for br in infos[b].branches} <= set(names)]  # factored ones
    blocks = [n for n in names if n not in block_of] + whole
    branches = [n for n in names if n in block_of and block_of[n] not in whole]
    if blocks:
        remove_blocks(model, blocks, None if zoo else example_inputs)
    if branches:
        surgery.remove_branches(model, branches, example_inputs)
    return blocks, branches


def channel_plan(model: nn.Module, zeros: dict[str, list[int]], summary: dict[str, dict[str, Any]],
                  example_inputs: torch.Tensor) -> dict[str, list[int]]:
    """Surgery plan (keyed by the producing conv / linear) for zero channel factors and zero group factors."""
    from prunekit import surgery

    plan = _reader_plan(model, zeros, summary, example_inputs)
    zeros = {w: z for w, z in zeros.items() if not summary[w].get("reader")}
    placed = {w: v["layer"] for w, v in summary.items() if v.get("layer")}  # analysis placement: no trace
    layer_of = {} if all(w in placed for w in zeros) else {
        s.target: s.layer for s in layer_sites(model, dict(model.named_modules()))}
    layer_of.update(placed)
    modules = dict(model.named_modules())
    for wrapper, zero in zeros.items():
        layer = layer_of.get(wrapper)
        if layer is None or layer not in modules:  # inside a removed block, or no longer a separable layer
            continue
        if "head_dim" in summary[wrapper]:  # whole heads (keep one: it outputs zeros)
            hd, heads = summary[wrapper]["head_dim"], summary[wrapper]["factors"]
            zero = zero[:-1] if len(zero) == heads else zero
            plan.setdefault(layer, []).extend(h * hd + j for h in zero for j in range(hd))
        elif summary[wrapper]["kind"] == "group":
            conv = model.get_submodule(layer)
            if len(zero) == conv.groups:
                zero = zero[:-1]  # keep one group (it outputs zeros)
            if zero:
                for k, v in surgery.conv_group_plan(model, example_inputs, layer, zero).items():
                    plan.setdefault(k, []).extend(v)
        else:
            plan.setdefault(layer, []).extend(zero)
    return plan


def _reader_plan(model: nn.Module, zeros: dict[str, list[int]], summary: dict[str, dict[str, Any]],
                 example_inputs: Any) -> dict[str, list[int]]:
    """Plan for the factors after BNs reading a concatenation (folded already: the wrappers are those BNs): a
    channel of a group goes when its factor is 0 after every one of them that reads it (one kept per group)."""
    readers = {w for w, v in summary.items() if v.get("reader")}
    if not any(w in readers for w in zeros):
        return {}
    from prunekit.surgery import channel_groups

    plan: dict[str, list[int]] = {}
    for g in channel_groups(model, example_inputs):
        rs = [n for n in g.norms if n in readers]
        if not rs:
            continue
        zero = {n: set(zeros.get(n, ())) for n in rs}
        chans = [c for c in range(g.size) if any(g.index[n][c] >= 0 for n in rs)
                 and all(g.index[n][c] < 0 or g.index[n][c] in zero[n] for n in rs)]
        if chans:
            plan[g.name] = chans[:-1] if len(chans) == g.size else chans
    return {k: v for k, v in plan.items() if v}


# ---------------------------------------------------------------------------------------------------------
# the report of a finalize


def is_zoo(model: nn.Module) -> bool:
    """A prunekit zoo network, or one holding blocks of the zoo / torchvision kinds (placed by
    :func:`insert_factors`)."""
    return type(model).__module__.startswith("prunekit.models") or any(is_block(m) for m in model.modules())


def width_of(model: nn.Module, name: str) -> int | None:
    """Output width of module ``name`` (None when it is gone or has none)."""
    try:
        m = model.get_submodule(name)
    except AttributeError:
        return None
    if isinstance(m, (*NORM_LAYERS, nn.Linear, nn.modules.conv._ConvNd)):
        return _width(m)
    return None


def structure_report(model: nn.Module, summary: dict[str, dict[str, Any]], widths_before: dict[str, int | None],
                     all_blocks: list[str], blocks: list[str], branches: list[str], channels: Any) -> dict[str, Any]:
    """What a finalize removed: blocks and branches, each block factor, blocks kept per stage (the container
    holding them, e.g. ``layer2``), the width of every factored layer before and after, the channel surgery."""
    stages: dict[str, dict[str, int]] = OrderedDict()
    for b in all_blocks:
        st = stages.setdefault(b.rpartition(".")[0] or "<root>", {"blocks": 0, "kept": 0})
        st["blocks"] += 1
        st["kept"] += b not in blocks
    widths = [{"layer": k, "kind": v["kind"], "before": widths_before.get(k), "after": width_of(model, k),
               "factors": v["factors"], "zero_factors": v["zero"]} for k, v in summary.items() if v["kind"] != "block"]
    return {"blocks_removed": list(blocks), "branches_removed": list(branches),
            "block_factors": {k: v["factor"] for k, v in summary.items() if v["kind"] == "block"},
            "depth_per_stage": dict(stages), "width_per_layer": widths, "channel_surgery": _jsonable(channels)}


def _jsonable(x: Any) -> Any:
    if x is None or isinstance(x, bool | int | float | str):
        return x
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if hasattr(x, "to_dict"):
        return _jsonable(x.to_dict())
    if hasattr(x, "__dataclass_fields__"):
        import dataclasses

        return _jsonable(dataclasses.asdict(x))
    return str(x)


__all__ = ["BLOCK_CHILD", "FACTOR_TYPES", "NORM_LAYERS", "BlockScale", "ChannelScale", "GroupScale", "HeadScale",
           "Scale", "ScaledAttention", "ScaledSequential", "Site",
           "analysis_sites", "channel_plan", "factor_modules", "factor_parameters", "find_sites", "fold_factors",
           "insert_factors", "insert_sites", "is_block", "is_zoo", "layer_sites", "remove_blocks", "remove_zero_blocks",
           "structure_report", "width_of", "wrap", "zero_structures"]
