"""APoZ: the Average Percentage of Zeros of each output channel / neuron after its ReLU (Hu et al., 2016).

For channel ``c`` over ``N`` images with ``M`` output positions per image (``H x W`` for a conv, 1 for a
fully connected neuron), ``O_{c,j}(k)`` the ReLU output at position ``j`` of image ``k``::

    APoZ_c = sum_k sum_j [O_{c,j}(k) == 0] / (N * M)

:class:`APoZCollector` keeps exact integer counts per channel in forward hooks (constant memory whatever the
dataset size, so streaming over batches gives exactly the all-at-once value), on the model's device, and
all-reduces them under ``torch.distributed``; :func:`collect_apoz` runs the one pass over a dataset in eval
mode under ``torch.inference_mode`` with a progress bar.

A measuring point is a module whose output is the activation. At an ``nn.ReLU`` / ``nn.ReLU6`` the zeros are
counted directly; at any other module (e.g. a BatchNorm whose output a functional ``relu`` consumes) the
non-positive values are counted, which are exactly the positions a following ReLU sets to zero. Several
points may be pooled under one key (channels coupled by a residual addition are scored as one group).
"""

from __future__ import annotations

import fnmatch
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prunekit.errors import PrunekitError

RELU_TYPES: tuple[type[nn.Module], ...] = (nn.ReLU, nn.ReLU6)

LayerSpec = Sequence[str] | Mapping[str, str | Sequence[str]] | None
LAST = "@last"
"""Suffix of a measuring point whose channels are its output's last dimension (a linear layer on tokens,
``[N, tokens, C]``); without it channels are dimension 1 (``[N, C, ...]``)."""


def _module_name(point: str) -> str:
    return point[: -len(LAST)] if point.endswith(LAST) else point


def _raw(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)  # unwrap DistributedDataParallel


def _normalise_layers(model: nn.Module, layers: LayerSpec) -> dict[str, list[str]]:
    """``{key: [measured module names]}`` from the accepted forms of ``layers``."""
    modules = dict(model.named_modules())
    if layers is None:
        points = {n: [n] for n, m in modules.items() if isinstance(m, RELU_TYPES)}
        if not points:
            raise PrunekitError(f"{type(model).__name__} has no nn.ReLU module to measure APoZ at "
                                "(functional relu calls cannot be hooked): pass layers= naming the modules "
                                "whose outputs feed the ReLUs")
    elif isinstance(layers, Mapping):
        points = {str(k): ([v] if isinstance(v, str) else list(v)) for k, v in layers.items()}
    elif isinstance(layers, str):
        points = {layers: [layers]}
    else:
        points = {str(n): [str(n)] for n in layers}
    for key, names in points.items():
        if not names:
            raise PrunekitError(f"APoZ layer {key!r}: no module to measure at")
        for n in map(_module_name, names):
            if n not in modules:
                raise PrunekitError(f"APoZ layer {n!r}: the model has no such module; "
                                    "give module names as in model.named_modules()")
    return points


def channel_counts(b: torch.Tensor) -> torch.Tensor:
    """Number of True entries per channel (dim 1) of a bool tensor [N, C, ...], as int64 [C].

    ``b.sum(dim=(0, 2, 3))`` / ``count_nonzero`` are slow on the CPU (a byte-wise reduction across strides,
    costing about as much as a convolution). For a contiguous tensor each image's flags are read instead as
    int64 words of 8 flags and summed word-wise over up to 255 images at a time (a vectorised reduction over
    the outer dimension): every byte lane then counts the flags at its own position and cannot carry into the
    next lane, so unpacking the bytes of these partial sums and adding them up gives the exact counts.
    """
    n, c = b.shape[0], b.shape[1]
    row = b.numel() // n if n else 0  # bytes per image (C * M)
    if not b.is_contiguous() or row % 8 or n == 0 or row == 0:
        return b.sum(dim=[0, *range(2, b.dim())], dtype=torch.int64)
    words = b.view(torch.uint8).reshape(n, row).view(torch.int64)  # [N, C*M/8]
    full = n - n % 255
    parts = []
    if full:
        parts.append(words[:full].view(full // 255, 255, -1).sum(1))  # byte lanes <= 255: no carry
    if n > full:
        parts.append(words[full:].sum(0, keepdim=True))
    lanes = torch.cat(parts) if len(parts) > 1 else parts[0]
    return lanes.view(torch.uint8).view(lanes.shape[0], c, -1).sum(dim=(0, 2), dtype=torch.int64)


class APoZCollector:
    """Exact streaming zero counts per output channel at the outputs of chosen modules.

    ``layers``: None (every ``nn.ReLU``), a list of module names, or ``{key: name | [names]}`` to pool
    several measuring points (which must have the same channel count) under one key. Use as a context
    manager (hooks attached inside) around any forward passes, then call :meth:`result`.
    """

    def __init__(self, model: nn.Module, layers: LayerSpec = None, *, threads: int = 0) -> None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
            raise PrunekitError(f"APoZ: threads must be an integer >= 0, got {threads!r}")
        self.threads = threads  # torch threads for the counting on the CPU (0: whatever torch uses)
        self.model = _raw(model)
        self.points = _normalise_layers(self.model, layers)
        modules = dict(self.model.named_modules())
        self._modules = {n: modules[_module_name(n)] for names in self.points.values() for n in names}
        self._key_of = {n: k for k, names in self.points.items() for n in names}
        self._handles: list[Any] = []
        self._buffers: dict[str, torch.Tensor] = {}
        self.reset()

    # -- counters -------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget everything counted so far."""
        self.zeros: dict[str, torch.Tensor] = {}  # key -> int64 [C]: positions where the activation is 0
        self.total: dict[str, int] = {k: 0 for k in self.points}  # key -> positions per channel (N * M)
        self.calls: dict[str, int] = {n: 0 for n in self._modules}  # measured module -> forward calls

    def _hook(self, name: str) -> Callable[..., None]:
        key = self._key_of[name]
        at_relu = isinstance(self._modules[name], RELU_TYPES)
        last = name.endswith(LAST)

        def hook(_mod: nn.Module, _inp: Any, out: Any) -> None:
            t = out[0] if isinstance(out, tuple | list) else out
            if not isinstance(t, torch.Tensor) or t.dim() < 2:
                raise PrunekitError(f"APoZ layer {name!r}: output must be a tensor [N, C, ...], "
                                    f"got {getattr(t, 'shape', type(t).__name__)}")
            t = t.detach()
            if last and t.dim() > 2:  # [N, ..., C] -> [N * ..., C]: channels at dimension 1
                t = t.reshape(-1, t.shape[-1])
            positions = t.numel() // t.shape[1]  # N * M
            if t.device.type != "cpu":
                nonzero = channel_counts(t.bool() if at_relu else t > 0)
            else:
                before = torch.get_num_threads()
                if self.threads and self.threads != before:
                    torch.set_num_threads(self.threads)
                try:
                    nonzero = self._count_cpu(name, t, at_relu)
                finally:
                    if self.threads and self.threads != before:
                        torch.set_num_threads(before)
            z = self.zeros.get(key)
            if z is None:
                self.zeros[key] = positions - nonzero
            elif z.shape != nonzero.shape:
                raise PrunekitError(f"APoZ layer {key!r}: measuring points disagree on the channel count "
                                    f"({z.shape[0]} vs {nonzero.shape[0]} at {name!r})")
            else:
                z += positions - nonzero
            self.total[key] += positions
            self.calls[name] += 1

        return hook

    def _count_cpu(self, name: str, t: torch.Tensor, at_relu: bool) -> torch.Tensor:
        # at a ReLU: its non-zeros; elsewhere: the positives (what a following ReLU keeps). The flags go to a
        # reused contiguous buffer (no page faults for a fresh block every batch, any memory format in).
        buf = self._buffers.get(name)
        if buf is None or buf.shape != t.shape:
            buf = self._buffers[name] = torch.empty(t.shape, dtype=torch.bool)
        if at_relu:  # a ReLU output as bool is its != 0 test, and the conversion is cheaper than ne()
            return channel_counts(buf.copy_(t))
        return channel_counts(torch.gt(t, 0, out=buf))

    # -- hooks ----------------------------------------------------------------------------------
    def attach(self) -> APoZCollector:
        """Register the forward hooks (idempotent)."""
        if not self._handles:
            self._handles = [m.register_forward_hook(self._hook(n)) for n, m in self._modules.items()]
        return self

    def detach(self) -> None:
        """Remove the forward hooks."""
        for h in self._handles:
            h.remove()
        self._handles = []
        self._buffers = {}

    def __enter__(self) -> APoZCollector:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.detach()

    # -- results --------------------------------------------------------------------------------
    def all_reduce(self) -> None:
        """Sum the counts over all processes (a no-op unless torch.distributed is initialised).

        Every process must hold counts for the same keys (each has seen at least one batch).
        """
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        keys = list(self.points)
        missing = [k for k in keys if k not in self.zeros]
        if missing:
            raise PrunekitError(f"APoZ: no activations counted for {missing[:3]} on rank {dist.get_rank()}; "
                                "every process needs at least one batch")
        device = self.zeros[keys[0]].device
        flat = torch.cat([self.zeros[k].to(device) for k in keys]
                         + [torch.tensor([self.total[k] for k in keys], dtype=torch.int64, device=device)])
        dist.all_reduce(flat)
        i = 0
        for k in keys:
            c = self.zeros[k].numel()
            self.zeros[k] = flat[i: i + c].clone()
            i += c
        for j, k in enumerate(keys):
            self.total[k] = int(flat[i + j])

    def result(self) -> dict[str, torch.Tensor]:
        """APoZ per channel (float64, CPU, values in [0, 1]) for every key."""
        missing = [k for k in self.points if self.total[k] == 0]
        if missing:
            raise PrunekitError(f"APoZ: no activations were seen at {missing[:3]}; was the data empty (an "
                                "iterator already used up? pass a list, a Dataset or a callable returning batches)")
        return {k: self.zeros[k].cpu().double() / self.total[k] for k in self.points}

    def counts(self) -> dict[str, tuple[torch.Tensor, int]]:
        """``{key: (zero counts per channel, positions per channel)}`` on the CPU."""
        return {k: (self.zeros[k].cpu(), self.total[k]) for k in self.points if k in self.zeros}


# modules that keep channel c in channel c: an activation after them still belongs to the producing layer
_PASS_THROUGH: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._BatchNorm, nn.Dropout, nn.Dropout2d, nn.Identity, nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd, nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd,
    *RELU_TYPES)
_PRODUCERS = (nn.modules.conv._ConvNd, nn.Linear)


def activation_points(model: nn.Module, example_inputs: torch.Tensor) -> dict[str, list[str]]:
    """``{conv/linear name: [ReLU modules whose output channels are that layer's output channels]}``.

    Found by one forward pass (eval mode, no gradients) that follows tensors from each conv/linear through
    channel-preserving modules (BatchNorm, dropout, pooling, identity) to an ``nn.ReLU`` module. The ``act``
    of a :class:`~prunekit.models.common.ResidualBlock` (the ReLU after the residual addition) is assigned to
    the last conv of the block's ``branch``; surgery's channel groups then tie it to the shortcut side.
    Functional ``relu`` calls are invisible to hooks, so layers activated that way have no point here, nor do
    ReLU modules that run more than once per forward (one module, several call sites): :func:`scored_groups`
    measures those at the module whose output the activation reads.
    """
    from prunekit.models.common import ResidualBlock

    raw = _raw(model)
    names: dict[nn.Module, str] = {}
    for n, m in raw.named_modules():
        names.setdefault(m, n)
    block_of_act = {b.act: n for n, b in raw.named_modules() if isinstance(b, ResidualBlock)}
    branch_of = {b.branch: n for n, b in raw.named_modules() if isinstance(b, ResidualBlock)}
    origin: dict[int, str] = {}
    keep: list[Any] = []  # holds every traced tensor so that ids stay unique during the pass
    branch_out: dict[str, torch.Tensor] = {}
    points: dict[str, list[str]] = {}

    calls: dict[str, int] = {}

    def hook(mod: nn.Module, inp: tuple[Any, ...], out: Any) -> None:
        keep.append((inp, out))
        calls[names[mod]] = calls.get(names[mod], 0) + 1
        if not isinstance(out, torch.Tensor):
            return
        if mod in branch_of:
            branch_out[branch_of[mod]] = out
            return
        x = inp[0] if inp and isinstance(inp[0], torch.Tensor) else None
        src = origin.get(id(x)) if x is not None else None
        if isinstance(mod, _PRODUCERS):
            origin[id(out)] = names[mod]
        elif isinstance(mod, RELU_TYPES):
            if src is None and mod in block_of_act and block_of_act[mod] in branch_out:
                src = origin.get(id(branch_out[block_of_act[mod]]))
            if src is not None:
                lst = points.setdefault(src, [])
                if names[mod] not in lst:
                    lst.append(names[mod])
                origin[id(out)] = src
        elif isinstance(mod, _PASS_THROUGH) and src is not None:
            origin[id(out)] = src

    watched = [m for m in raw.modules() if isinstance(m, (*_PRODUCERS, *_PASS_THROUGH)) or m in branch_of]
    handles = [m.register_forward_hook(hook) for m in watched]
    modes = [(m, m.training) for m in raw.modules()]
    try:
        raw.eval()
        with torch.no_grad():
            raw(example_inputs)
    finally:
        for h in handles:
            h.remove()
        for m, t in modes:
            m.training = t
    once = {src: [p for p in pts if calls.get(p, 0) == 1] for src, pts in points.items()}
    return {src: pts for src, pts in once.items() if pts}


def _first(batch: Any) -> torch.Tensor:
    x = batch[0] if isinstance(batch, tuple | list) else batch
    if not isinstance(x, torch.Tensor):
        raise PrunekitError(f"APoZ data: a batch must be a tensor or an (inputs, labels) pair, got "
                            f"{type(x).__name__}")
    return x


def collect_apoz(model: nn.Module, batches: Iterable[Any], layers: LayerSpec = None, *,
                 device: str | torch.device | None = None, progress: bool = True, amp: bool = False,
                 total: int | None = None, threads: int = 0) -> dict[str, torch.Tensor]:
    """APoZ of every channel at ``layers`` (see :class:`APoZCollector`) over ``batches``, in one pass.

    ``batches`` yields input tensors or ``(inputs, labels)`` pairs; under DDP each process passes its own
    shard and the counts are summed across processes, so every process gets the same values. The model runs
    in eval mode (BatchNorm uses its running statistics and is not updated) under ``inference_mode``;
    ``amp`` runs it under bf16 autocast. Each measured module must run exactly once per forward pass.
    ``threads`` (CPU only) runs the counting with that many torch threads (0: as many as the model): on a
    small or oversubscribed machine 1 avoids thread synchronisation that can cost more than the counting.
    """
    raw = _raw(model)
    collector = APoZCollector(raw, layers, threads=threads)
    if device is None:
        p = next(raw.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    device = torch.device(device)
    dist = torch.distributed
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    if total is None and hasattr(batches, "__len__"):
        total = len(batches)  # type: ignore[arg-type]
    bar = None
    if progress and rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=total, desc="APoZ", leave=False, disable=not sys.stderr.isatty())
    modes = [(m, m.training) for m in raw.modules()]
    raw.eval()
    n_batches = 0
    try:
        with collector, torch.inference_mode():
            for batch in batches:
                x = _first(batch).to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    raw(x)
                n_batches += 1
                if bar is not None:
                    bar.update(1)
    finally:
        for m, mode in modes:
            m.training = mode
        if bar is not None:
            bar.close()
    for name, calls in collector.calls.items():
        if calls != n_batches:
            raise PrunekitError(f"APoZ layer {_module_name(name)!r} ran {calls} times in {n_batches} forward passes: "
                                "a module measured for APoZ must run once per forward (give each use its own "
                                "nn.ReLU)")
    collector.all_reduce()
    return collector.result()


@dataclass
class ScoredGroup:
    """A scorable unit: a surgery channel group and the modules whose outputs carry its channels."""

    name: str
    layers: tuple[str, ...]
    size: int
    points: list[str]
    chunks: int = 1
    """A grouped convolution splits the channels into this many equal slices: trim the same count from each."""
    rule: str = "apoz"
    """``apoz`` (zeros after a ReLU, the paper's) or ``non-positive share (ours)``: the share of non-positive
    pre-activations before a GELU / SiLU / ..., our generalisation (it equals APoZ for a ReLU)."""


GENERALISED = "non-positive share (ours)"


def _channels_last(model: nn.Module, point: str) -> bool:
    m = model.get_submodule(point)
    return isinstance(m, nn.Linear | nn.LayerNorm)


def scored_groups(model: nn.Module, example_inputs: torch.Tensor, *, reasons: dict[str, str] | None = None,
                  required: bool = False) -> tuple[list[ScoredGroup], list[str]]:
    """Every channel group of ``model`` (from the shared analysis, :mod:`prunekit.methods.analysis`, in module
    order) with its measuring points, and the names of the groups that have none (``reasons`` gets why).
    With ``required``, a model with no scorable group is refused in one line naming a group and why.

    A group is measured at the ReLU modules carrying its channels unpermuted (each run once per forward);
    otherwise at the module whose output its activation reads (its layer or that layer's BatchNorm, one
    point per call site: a shared ReLU module or a functional ``relu`` is measured where it reads), counting
    non-positive values: APoZ for a ReLU, our documented generalisation for other ReLU-like activations
    (GELU, SiLU, Hardswish, ...). Groups with neither (no activation, a sigmoid, a residual sum read by a
    functional activation) are left unscored, and so are groups whose channels a module holding per-channel
    parameters computes over (a GRN) when removing some from a copy is not masking them.
    """
    from prunekit.methods.analysis import RELU_LIKE, analyse, foreign_params, removal_refusal

    raw = _raw(model)
    points = activation_points(raw, example_inputs)
    an = analyse(raw, example_inputs)
    reasons = {} if reasons is None else reasons
    out, unscorable = [], []
    for info in an.groups:
        g = info.group
        ident = tuple(range(g.size))
        measured: list[str] = []
        for layer in g.layers:
            if layer in points and tuple(g.index.get(layer, ident)) == ident:
                measured += [p for p in points[layer] if p not in measured]
        rule = "apoz"
        if not measured and info.activation in RELU_LIKE and info.pre_activation:
            pre = info.pre_activation
            measured = [pre + LAST if _channels_last(raw, pre) else pre]
            rule = "apoz" if info.activation in ("relu", "relu6") else GENERALISED
        refused = removal_refusal(raw, example_inputs, info) if measured and foreign_params(raw, info) else ""
        if refused:  # e.g. a GRN computing over the channels: removing some is not masking them
            unscorable.append(g.name)
            reasons[g.name] = refused
            continue
        if measured and not info.head_dim:
            out.append(ScoredGroup(g.name, tuple(g.layers), g.size, measured, int(g.chunks), rule))
            continue
        unscorable.append(g.name)
        if info.head_dim:
            reasons[g.name] = "attention heads (no activation per channel)"
        elif info.activation is None:
            reasons[g.name] = "no element-wise activation after it"
        elif info.activation not in RELU_LIKE:
            reasons[g.name] = f"its activation ({info.activation}) is not ReLU-like"
        else:
            reasons[g.name] = f"its {info.activation} reads a sum or a rescaled tensor, not a layer's output"
    if required and not out:
        first = next(iter(reasons.items()), None)
        why = f"; e.g. {first[0]!r}: {first[1]}" if first else ""
        raise PrunekitError(f"trimming: no channel group of {type(model).__name__} can be scored (APoZ needs a "
                            f"ReLU-like activation after a conv / linear layer){why}")
    return out, unscorable


def per_chunk(channels: Sequence[int], apoz: torch.Tensor, chunks: int) -> list[int]:
    """Channels to trim from a group a grouped convolution splits into ``chunks`` slices: the same number from
    each slice (as many as ``channels`` allows), highest APoZ first, so the convolution keeps equal groups."""
    if chunks <= 1 or not channels:
        return sorted(channels)
    size = apoz.numel()
    per = size // chunks
    n = len(channels) // chunks
    n = min(n, per - 1)
    out: list[int] = []
    for c in range(chunks):
        part = [(-float(apoz[i]), i) for i in range(c * per, (c + 1) * per)]
        out += [i for _, i in sorted(part)[:n]]
    return sorted(out)


def choose_groups(groups: list[ScoredGroup], patterns: list[str] | None, unscorable: Sequence[str] = ()
                  ) -> list[ScoredGroup]:
    """The groups any of whose layers matches one of ``patterns`` (names or globs; None: all); a pattern
    that matches no scorable layer is refused in one line listing the scorable ones."""
    if patterns is None:
        return list(groups)
    out = [g for g in groups if any(fnmatch.fnmatchcase(layer, p) for layer in g.layers for p in patterns)]
    for p in patterns:
        if not any(fnmatch.fnmatchcase(layer, p) for g in groups for layer in g.layers):
            names = ", ".join(g.name for g in groups)
            extra = f"; not scorable (no ReLU after them): {', '.join(unscorable)}" if unscorable else ""
            raise PrunekitError(f"trimming: layers pattern {p!r} matches no scorable layer; scorable layers "
                                f"(first layer of each coupled group): {names}{extra}")
    return out


__all__ = ["GENERALISED", "LAST", "RELU_TYPES", "APoZCollector", "ScoredGroup", "activation_points", "channel_counts",
           "choose_groups", "collect_apoz", "per_chunk", "scored_groups"]
