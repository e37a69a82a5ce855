"""Data-Driven Sparse Structure Selection (SSS; Huang & Wang, ECCV 2018) with scaling factors and APG.

Algorithm (paper section 3, authors' MXNet code)::

    insert a scaling factor lambda (init 1) after each structure: a channel / neuron, a group of a grouped
        convolution, a residual block (multiplies the branch output before the shortcut addition)
    minimise  loss(W, lambda) + wd/2 * ||W||^2 + sum_types gamma_type * ||lambda_type||_1
        W:      Nesterov momentum SGD with weight decay                      (configure_optimizers)
        lambda: the modified stochastic APG (soft-thresholding prox, momentum), no weight decay  (apg.APG)
    remove the structures whose factor is exactly 0; the rest of the factors fold into the layer before

What :func:`insert_factors` puts where (zoo models, and any model ``torch.fx`` can trace):

* block factor (:class:`BlockScale`, one scalar) appended at the end of every
  :class:`~prunekit.models.common.ResidualBlock`'s ``branch``, i.e. after its last BN, before the
  addition (verified placement); in torchvision's BasicBlock / Bottleneck it wraps ``bn2`` / ``bn3``;
* channel factor (:class:`ChannelScale`) after the BN of each conv / linear layer (after the layer itself
  when it has no BN, e.g. LeNet-5), where that output reaches, through ReLU / pooling / dropout / flatten
  only, nothing but other conv / linear layers: then a zero factor removes exactly one channel and its
  consumers' input weights. So the stem of a ResNet and every layer feeding a residual sum gets none
  (those channels are tied to the shortcut; SSS handles them with block factors), nor does the classifier;
* group factor (:class:`GroupScale`, one per group) after the BN of a grouped, non-depthwise convolution
  (ResNeXt), with ``groups=True``.

The placement of channel factors is unverified in the paper (its VGG/CIFAR runs); ours is "after the BN
that feeds a ReLU", extended to BN-free layers and restricted to channels that can be removed on their own.

Choices of ours: factors are real modules (wrapping the layer as ``Sequential(layer, scale)``; block
factors are a ``branch`` child named ``block_scale``), registered with :func:`prunekit.io.register_module`
so checkpoints of a zoo model describe them and resume is exact. For a user's own (non-zoo) model, call
:meth:`SparseStructureSelection.prepare` on it *before* building the Trainer so that a resumed run finds
the same modules (``prepare`` is idempotent). ``finalize`` first folds every factor into the layer before
it (BN weight and bias, or the conv / linear weight and bias), which turns a zero factor into a channel
that outputs exactly zero, then removes zero blocks and zero channels with :mod:`prunekit.surgery`, so the
result has no scale modules and the same outputs.

Where we follow the paper exactly: factors start at 1, get no weight decay, are updated by APG (the authors'
eq. 10-12, see :mod:`prunekit.methods.apg`) with the weights' learning rate and momentum, are kept
non-negative (``nonnegative``, as the authors' code), one gamma per structure type. Where we chose: a zero
block whose shortcut is a projection (first block of a stage) cannot simply vanish; it becomes
``Sequential(shortcut, act)``, which is what it computes once its branch is 0 (its convs are gone);
channel factors sit inside residual blocks as well as in plain nets (the paper uses block factors alone
for ResNet, and channel factors for VGG): set ``channels: false`` for the paper's ResNet setting.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.engine.distributed import check_same
from prunekit.engine.stages import Stage
from prunekit.errors import PrunekitError
from prunekit.io import register_module, set_submodule
from prunekit.methods.apg import APG
from prunekit.methods.api import FinalizeResult, MethodConfig, PruningMethod, TrainingLoop

# ---------------------------------------------------------------------------------------------------------
# the scaling factors (the paper's lambda)


class _Scale(nn.Module):
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
class ChannelScale(_Scale):
    """One factor per channel (conv) or neuron (linear): ``y[:, c] = lambda_c * x[:, c]``."""

    kind = "channel"

    def __init__(self, num_channels: int) -> None:
        super().__init__(num_channels)
        self.num_channels = num_channels

    def per_channel(self, num_channels: int) -> torch.Tensor:
        return self.factor

    def to_config(self) -> dict[str, Any]:
        return {"num_channels": self.num_channels}

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> ChannelScale:
        return cls(_pos_int(cfg, "num_channels"))


@register_module
class GroupScale(_Scale):
    """One factor per group of a grouped convolution's output (contiguous blocks of channels)."""

    kind = "group"

    def __init__(self, num_channels: int, groups: int) -> None:
        if num_channels % groups:
            raise PrunekitError(f"GroupScale: {num_channels} channels do not split into {groups} groups")
        super().__init__(groups)
        self.num_channels, self.groups = num_channels, groups

    def per_channel(self, num_channels: int) -> torch.Tensor:
        return self.factor.repeat_interleave(self.num_channels // self.groups)

    def to_config(self) -> dict[str, Any]:
        return {"num_channels": self.num_channels, "groups": self.groups}

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> GroupScale:
        return cls(_pos_int(cfg, "num_channels"), _pos_int(cfg, "groups"))


@register_module
class BlockScale(_Scale):
    """One factor for a whole residual branch."""

    kind = "block"

    def __init__(self) -> None:
        super().__init__(1)

    def per_channel(self, num_channels: int) -> torch.Tensor:
        return self.factor.expand(num_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor

    def to_config(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> BlockScale:
        if cfg:
            raise PrunekitError(f"BlockScale takes no configuration, got keys {sorted(cfg)}")
        return cls()


def _pos_int(cfg: dict[str, Any], key: str) -> int:
    v = cfg.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or not 0 < v <= 1 << 20:
        raise PrunekitError(f"scaling factor config: {key} must be a positive integer, got {v!r}")
    return v


FACTOR_TYPES = (ChannelScale, GroupScale, BlockScale)
BLOCK_CHILD = "block_scale"


def factor_modules(model: nn.Module) -> list[tuple[str, _Scale]]:
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

    kind: str  # channel | group | block
    target: str  # the module whose output is scaled (BN, or conv / linear without BN; the block)
    layer: str  # the conv / linear producing those channels ("" for a block)
    channels: int
    groups: int = 1


_PASS_MODULES = (nn.ReLU, nn.ReLU6, nn.Identity, nn.Dropout, nn.Dropout2d, nn.Flatten, nn.MaxPool1d,
                 nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d,
                 nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_PASS_FUNCTIONS = {F.relu, torch.relu, torch.flatten, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d,
                   F.dropout}
_PASS_METHODS = {"relu", "relu_", "flatten", "view", "reshape"}
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _block_kind(m: nn.Module) -> str | None:
    """'residual' (prunekit's ResidualBlock protocol), 'torchvision' (BasicBlock / Bottleneck), or None."""
    from prunekit.surgery.blocks import block_kind

    return block_kind(m)


def _is_block(m: nn.Module) -> bool:
    return _block_kind(m) is not None


def _last_bn_name(m: nn.Module) -> str:
    """torchvision blocks: the BN whose output meets the shortcut (``bn3`` of a Bottleneck, else ``bn2``)."""
    return "bn3" if isinstance(getattr(m, "bn3", None), _NORMS) else "bn2"


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
        for site in _layer_sites(model, modules):
            if (site.kind == "channel" and channels) or (site.kind == "group" and groups):
                sites.append(site)
    order = {n: i for i, n in enumerate(modules)}
    return sorted(sites, key=lambda s: order[s.target])


def _out_channels(seq: nn.Sequential) -> int:
    for m in reversed(list(seq)):
        if isinstance(m, _NORMS):
            return m.num_features
        if isinstance(m, nn.modules.conv._ConvNd):
            return m.out_channels
        if isinstance(m, nn.Linear):
            return m.out_features
    return 0


def _layer_sites(model: nn.Module, modules: dict[str, nn.Module]) -> list[Site]:
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
        if len(users) == 1 and isinstance(mod(users[0]), _NORMS):
            end, target = users[0], users[0].target
        if not only_consumed_by_layers(end):
            continue
        width = m.out_features if isinstance(m, nn.Linear) else m.out_channels
        if _plain_conv(m):
            out.append(Site("channel", target, node.target, width))
        else:
            out.append(Site("group", target, node.target, width, m.groups))
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
            if j < len(kids) and isinstance(kids[j][1], _NORMS):
                target, j = kids[j][0], j + 1
            if j + 1 < len(kids) and isinstance(kids[j][1], nn.ReLU) and _plain_conv(kids[j + 1][1]):
                width = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
                prefix = f"{name}." if name else ""
                kind = "channel" if _plain_conv(layer) else "group"
                out.append(Site(kind, prefix + target, prefix + cname, width,
                                1 if kind == "channel" else layer.groups))
    return out


def insert_factors(model: nn.Module, channels: bool = True, blocks: bool = True,
                   groups: bool = False) -> list[Site]:
    """Insert SSS scaling factors (all 1) into ``model`` in place; returns the sites used.

    A model that already holds factors is left as it is (so preparing twice is harmless).
    """
    if factor_modules(model):
        return []
    sites = find_sites(model, channels=channels, blocks=blocks, groups=groups)
    for s in sites:
        target = model.get_submodule(s.target)
        device = next((t.device for t in list(target.parameters()) + list(target.buffers())), None)
        if s.kind == "block" and _block_kind(target) == "residual":
            scale: _Scale = BlockScale()
            target.branch.add_module(BLOCK_CHILD, scale.to(device) if device else scale)
            continue
        if s.kind == "channel":
            scale = ChannelScale(s.channels)
        elif s.kind == "group":
            scale = GroupScale(s.channels, s.groups)
        else:  # a torchvision block: Sequential(last BN, BlockScale)
            scale = BlockScale()
        set_submodule(model, s.target, nn.Sequential(target, scale.to(device) if device else scale))
    return sites


# ---------------------------------------------------------------------------------------------------------
# folding and removal


@torch.no_grad()
def _fold_into(layer: nn.Module, lam: torch.Tensor, where: str) -> None:
    """Multiply ``layer``'s output channels by ``lam`` through its parameters (exact up to rounding)."""
    if isinstance(layer, _NORMS):
        if not layer.affine:
            raise PrunekitError(f"{where}: cannot fold a factor into a BatchNorm without affine parameters")
        layer.weight.mul_(lam)
        layer.bias.mul_(lam)
    elif isinstance(layer, nn.Linear | nn.modules.conv._ConvNd) and not getattr(layer, "transposed", False):
        layer.weight.mul_(lam.view(-1, *([1] * (layer.weight.dim() - 1))))
        if layer.bias is not None:
            layer.bias.mul_(lam)
    else:
        raise PrunekitError(f"{where}: cannot fold a scaling factor into {type(layer).__name__}")


def fold_factors(model: nn.Module) -> int:
    """Fold every factor into the layer before it and remove the factor modules; returns how many."""
    n = 0
    for name, m in factor_modules(model):
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if isinstance(m, BlockScale) and leaf == BLOCK_CHILD and isinstance(parent, nn.Sequential):
            kids = [k for k in parent.named_children() if k[0] != BLOCK_CHILD]
            if not kids:
                raise PrunekitError(f"{name}: the residual branch is empty, nothing to fold into")
            last_name, last = kids[-1]
            _fold_into(last, m.per_channel(_out_channels(parent)).detach(), f"{parent_name}.{last_name}")
            del parent._modules[BLOCK_CHILD]
        elif isinstance(parent, nn.Sequential) and len(parent) == 2 and parent[1] is m:
            layer = parent[0]
            width = layer.num_features if isinstance(layer, _NORMS) else (
                layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels)
            _fold_into(layer, m.per_channel(width).detach(), parent_name)
            set_submodule(model, parent_name, layer)
        else:
            raise PrunekitError(f"{name}: scaling factor is not where insert_factors puts it; cannot fold")
        n += 1
    return n


def _zero_structures(model: nn.Module) -> tuple[list[str], dict[str, list[int]], dict[str, dict[str, Any]]]:
    """Blocks whose factor is 0, zero channels (or conv groups) per wrapped layer, and a per-site summary."""
    blocks: list[str] = []
    zeros: dict[str, list[int]] = {}
    summary: dict[str, dict[str, Any]] = {}
    for name, m in factor_modules(model):
        lam = m.factor.detach()
        zero = (lam == 0).nonzero().flatten().tolist()
        if isinstance(m, BlockScale):
            block = name.rpartition(".")[0].rpartition(".")[0]  # <block>.branch.block_scale / <block>.bn3.1
            summary[block] = {"kind": "block", "factor": float(lam.item())}
            if zero:
                blocks.append(block)
            continue
        wrapper = name.rpartition(".")[0]
        summary[wrapper] = {"kind": m.kind, "factors": int(lam.numel()), "zero": len(zero)}
        if zero:
            zeros[wrapper] = zero
    return blocks, zeros, summary


def _remove_blocks(model: nn.Module, names: list[str]) -> None:
    """Drop the branch of each block: identity-shortcut blocks become their activation (surgery), a block
    with a projection shortcut becomes ``Sequential(shortcut, act)`` (exact, since its branch is 0)."""
    from prunekit import surgery

    plain = set(surgery.removable_blocks(model))
    if any(n in plain for n in names):
        surgery.remove_blocks(model, [n for n in names if n in plain])
    for n in names:
        if n not in plain:
            block = model.get_submodule(n)
            if _block_kind(block) == "residual":
                shortcut, act = block.shortcut, block.act
            else:
                shortcut, act = block.downsample, copy.deepcopy(block.relu)
                act.inplace = False
            set_submodule(model, n, nn.Sequential(OrderedDict([("shortcut", shortcut), ("act", act)])))


def _channel_plan(model: nn.Module, zeros: dict[str, list[int]], summary: dict[str, dict[str, Any]],
                  example_inputs: torch.Tensor) -> dict[str, list[int]]:
    """Surgery plan (keyed by the producing conv / linear) for zero channel factors and zero group factors."""
    from prunekit import surgery

    layer_of = {s.target: s.layer for s in _layer_sites(model, dict(model.named_modules()))}
    plan: dict[str, list[int]] = {}
    for wrapper, zero in zeros.items():
        layer = layer_of.get(wrapper)
        if layer is None:  # inside a removed block, or no longer a separable layer
            continue
        if summary[wrapper]["kind"] == "group":
            conv = model.get_submodule(layer)
            if len(zero) == conv.groups:
                zero = zero[:-1]  # keep one group (it outputs zeros)
            if zero:
                for k, v in surgery.conv_group_plan(model, example_inputs, layer, zero).items():
                    plan.setdefault(k, []).extend(v)
        else:
            plan.setdefault(layer, []).extend(zero)
    return plan


# ---------------------------------------------------------------------------------------------------------
# the method


@dataclass
class SSSConfig(MethodConfig):
    """SSS hyperparameters. The paper's ImageNet ResNet-50 run: block factors, gamma 0.01, lr 0.1,
    momentum 0.9, wd 1e-4, batch 128 (set those in the recipe's ``optim`` / ``train`` sections)."""

    channels: bool = True  # factors on channels / neurons
    blocks: bool = True  # factors on residual blocks
    groups: bool = False  # factors on groups of grouped convolutions (ResNeXt)
    gamma_channel: float = 0.01  # L1 weight of each factor type
    gamma_block: float = 0.01
    gamma_group: float = 0.01
    nonnegative: bool = True  # clip factors at 0 after each APG step (authors' code)
    remove: bool = True  # finalize removes zero structures (False: fold only)

    def validate(self) -> None:
        for key in ("channels", "blocks", "groups", "nonnegative", "remove"):
            if not isinstance(getattr(self, key), bool):
                raise PrunekitError(f"method 'sss': {key} must be true or false, got {getattr(self, key)!r}")
        for key in ("gamma_channel", "gamma_block", "gamma_group"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v < float("inf"):
                raise PrunekitError(f"method 'sss': {key} must be a number >= 0, got {v!r}")
        if not (self.channels or self.blocks or self.groups):
            raise PrunekitError("method 'sss': enable at least one of channels, blocks, groups")


class SparseStructureSelection(PruningMethod):
    """SSS as a plug-in: ``prepare`` inserts factors, ``configure_optimizers`` gives [SGD(W), APG(lambda)],
    ``finalize`` folds factors and removes the structures whose factor is zero.

    In a user's own loop::

        sss = SparseStructureSelection(gamma_block=0.01)
        model = sss.prepare(model)
        sgd, apg = sss.configure_optimizers(LoopState(model), lr=0.1)  # momentum / wd: LoopState.optim_cfg
        ... loss.backward(); sgd.step(); apg.step(); zero both ...
        result = sss.finalize(model, example_inputs)
    """

    name = "sss"
    starts_from_scratch = True  # the paper trains the factors jointly with the network from a random init
    Config = SSSConfig

    def prepare(self, model: nn.Module) -> nn.Module:
        """Insert the scaling factors (idempotent)."""
        c = self.config
        insert_factors(model, channels=c.channels, blocks=c.blocks, groups=c.groups)
        if not factor_modules(model):
            raise PrunekitError("sss: the model has no structure to put a scaling factor on (no residual "
                                "block, no prunable conv / linear layer)")
        return model

    def stages(self, epochs: int) -> list[Stage]:
        return [Stage("sparse", epochs, kind="sparse")]

    def configure_optimizers(self, trainer: TrainingLoop, lr: float) -> list[torch.optim.Optimizer]:
        """[Nesterov SGD with weight decay over the weights, APG over the factors (one group per kind)]."""
        model = trainer.raw_model
        o = trainer.optim_cfg
        factors = factor_parameters(model)
        ids = {id(p) for ps in factors.values() for p in ps}
        if not ids:
            raise PrunekitError("sss: the model holds no scaling factors; call prepare(model) first")
        weights = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
        sgd = torch.optim.SGD(weights, lr=lr, momentum=o.momentum, nesterov=bool(o.nesterov and o.momentum > 0),
                              weight_decay=o.weight_decay)
        gamma = {"channel": self.config.gamma_channel, "block": self.config.gamma_block,
                 "group": self.config.gamma_group}
        groups = [{"params": ps, "gamma": gamma[k], "kind": k} for k, ps in factors.items() if ps]
        return [sgd, APG(groups, lr=lr, momentum=o.momentum, nonnegative=self.config.nonnegative)]

    def factor_summary(self, model: nn.Module) -> dict[str, Any]:
        """Number of factors and of zeros per kind (cheap; for logs)."""
        out: dict[str, Any] = {}
        for kind, ps in factor_parameters(model).items():
            if ps:
                out[kind] = {"factors": sum(p.numel() for p in ps),
                             "zero": int(sum((p == 0).sum().item() for p in ps))}
        return out

    def on_epoch_end(self, trainer: TrainingLoop, metrics: dict[str, float]) -> None:
        model = trainer.raw_model
        # under DDP the factors' gradients are all-reduced like the weights', so APG keeps them identical
        check_same([p for ps in factor_parameters(model).values() for p in ps], "SSS scaling factors")
        for kind, s in self.factor_summary(model).items():
            metrics[f"sss_zero_{kind}"] = s["zero"]

    def finalize(self, model: nn.Module, example_inputs: torch.Tensor) -> FinalizeResult:
        """Fold the factors, remove zero blocks and channels, report widths and depth per stage."""
        from prunekit import metrics, surgery

        model = getattr(model, "module", model)
        was_training = model.training
        model.eval()
        zero_blocks, zeros, summary = _zero_structures(model)
        all_blocks = [n for n, m in model.named_modules() if _is_block(m)]
        fold_factors(model)
        before = metrics.count(model, example_inputs)
        widths_before = _widths(model, summary)
        removed_blocks: list[str] = []
        channel_report: Any = None
        if self.config.remove:
            if zero_blocks:
                _remove_blocks(model, zero_blocks)
                removed_blocks = list(zero_blocks)
            plan = _channel_plan(model, zeros, summary, example_inputs)
            if plan:
                # clamp: a layer whose factors are all 0 keeps one channel (which outputs 0)
                channel_report = surgery.remove_channels(model, plan, example_inputs, min_channels=1,
                                                         clamp=True)
        after = metrics.count(model, example_inputs)
        model.train(was_training)
        widths = [{"layer": k, "kind": v["kind"], "before": widths_before.get(k),
                   "after": _width_of(model, k), "factors": v["factors"], "zero_factors": v["zero"]}
                  for k, v in summary.items() if v["kind"] != "block"]
        report = {
            "method": self.name,
            "params": {"before": before.params, "after": after.params},
            "macs": {"before": before.macs, "after": after.macs},
            "blocks_removed": removed_blocks,
            "block_factors": {k: v["factor"] for k, v in summary.items() if v["kind"] == "block"},
            "depth_per_stage": _depth_per_stage(all_blocks, removed_blocks),
            "width_per_layer": widths,
            "channel_surgery": _jsonable(channel_report),
        }
        return FinalizeResult(model, sparse=False, report=report)


def _widths(model: nn.Module, summary: dict[str, dict[str, Any]]) -> dict[str, int | None]:
    return {k: _width_of(model, k) for k, v in summary.items() if v["kind"] != "block"}


def _width_of(model: nn.Module, name: str) -> int | None:
    try:
        m = model.get_submodule(name)
    except AttributeError:
        return None
    if isinstance(m, _NORMS):
        return m.num_features
    if isinstance(m, nn.Linear):
        return m.out_features
    if isinstance(m, nn.modules.conv._ConvNd):
        return m.out_channels
    return None


def _depth_per_stage(blocks: list[str], removed: list[str]) -> dict[str, dict[str, int]]:
    """Blocks kept per stage (the container holding the blocks, e.g. ``layer2``)."""
    out: dict[str, dict[str, int]] = OrderedDict()
    for b in blocks:
        stage = b.rpartition(".")[0] or "<root>"
        s = out.setdefault(stage, {"blocks": 0, "kept": 0})
        s["blocks"] += 1
        s["kept"] += b not in removed
    return dict(out)


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


__all__ = ["BlockScale", "ChannelScale", "GroupScale", "SSSConfig", "Site", "SparseStructureSelection",
           "factor_modules", "factor_parameters", "find_sites", "fold_factors", "insert_factors"]
