"""Parameter, non-zero and MAC counts of a model *as it is* (after surgery), by forward hooks.

MAC conventions (one multiply-accumulate = one MAC; FLOPs are usually quoted as 2 x MACs):

* convolution: per output element ``in_channels / groups x kernel area`` (bias adds are not counted);
  transposed convolution: per *input* element ``out_channels / groups x kernel area``;
* linear: per output element ``in_features`` (bias not counted);
* BatchNorm / GroupNorm / LayerNorm / InstanceNorm: 1 per element (the folded scale-and-shift);
* max / average pooling: the kernel area per output element; adaptive pooling: the exact size of each
  output's window, summed;
* activations, dropout, flatten, identity and element-wise additions (residual sums) are free.

Counts are **per sample**: the totals of one forward pass on ``example_inputs`` divided by its batch size
(the first dimension of the first input tensor).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

_POOL_DIMS: tuple[tuple[type[nn.Module], int], ...] = (
    (nn.MaxPool1d, 1), (nn.AvgPool1d, 1), (nn.LPPool1d, 1),
    (nn.MaxPool2d, 2), (nn.AvgPool2d, 2), (nn.LPPool2d, 2),
    (nn.MaxPool3d, 3), (nn.AvgPool3d, 3),
)
_ADAPTIVE = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
             nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


@dataclass
class Counts:
    """What :func:`count` measures; MACs are per sample, ``macs_by_type`` keyed by the layer's class name."""

    params: int
    nonzero_params: int
    macs: int
    macs_by_type: dict[str, int] = field(default_factory=dict)

    @property
    def flops(self) -> int:
        """2 x MACs, the usual "FLOPs" of papers that count a multiply and an add."""
        return 2 * self.macs

    def macs_of(self, *type_names: str) -> int:
        """MACs of the named layer types, e.g. ``macs_of("Conv2d", "Linear")``."""
        return sum(self.macs_by_type.get(t, 0) for t in type_names)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _first_tensor(x: Any) -> torch.Tensor | None:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, list | tuple):
        for v in x:
            t = _first_tensor(v)
            if t is not None:
                return t
    if isinstance(x, dict):
        return _first_tensor(list(x.values()))
    return None


def _adaptive_window_sum(size_in: int, size_out: int) -> int:
    """Total window length of adaptive pooling along one dimension (PyTorch's start/end rule)."""
    return sum(math.ceil((i + 1) * size_in / size_out) - (i * size_in) // size_out for i in range(size_out))


def module_macs(m: nn.Module, inputs: tuple[Any, ...], output: Any) -> int | None:
    """MACs of one call of ``m`` for the whole batch, or None if ``m`` is not a counted layer type."""
    out = _first_tensor(output)
    inp = _first_tensor(inputs)
    if out is None:
        return None
    if isinstance(m, nn.modules.conv._ConvNd):
        k = math.prod(m.kernel_size)
        if m.transposed:
            return 0 if inp is None else inp.numel() * (m.out_channels // m.groups) * k
        return out.numel() * (m.in_channels // m.groups) * k
    if isinstance(m, nn.Linear):
        return out.numel() * m.in_features
    if isinstance(m, nn.Bilinear):
        return out.numel() * m.in1_features * m.in2_features
    if isinstance(m, _NORMS):
        return out.numel()
    for cls, dims in _POOL_DIMS:
        if isinstance(m, cls):
            ks = m.kernel_size
            area = math.prod(ks) if isinstance(ks, tuple | list) else ks**dims
            return out.numel() * area
    if isinstance(m, _ADAPTIVE) and inp is not None:
        dims = int(type(m).__name__[-2]) if type(m).__name__[-2].isdigit() else out.dim() - 2
        s_in, s_out = inp.shape[-dims:], out.shape[-dims:]
        per_map = math.prod(_adaptive_window_sum(a, b) for a, b in zip(s_in, s_out, strict=True))
        return out.numel() // max(1, math.prod(s_out)) * per_map
    return None


@dataclass
class _Record:
    type: str
    macs: int = 0  # whole batch, summed over calls
    calls: int = 0
    output_shape: tuple[int, ...] | None = None


def _as_args(example_inputs: Any) -> tuple[Any, ...]:
    return tuple(example_inputs) if isinstance(example_inputs, tuple | list) else (example_inputs,)


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter or buffer (CPU for a stateless model)."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def prepare_inputs(model: nn.Module, example_inputs: Any) -> tuple[Any, ...]:
    """Positional arguments for ``model``, tensors moved to the model's device."""
    device = model_device(model)
    return tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in _as_args(example_inputs))


def batch_size_of(args: tuple[Any, ...]) -> int:
    t = _first_tensor(args)
    if t is None or t.dim() == 0:
        raise ValueError("example_inputs must hold a tensor whose first dimension is the batch")
    return max(1, int(t.shape[0]))


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode and restore each one's own flag afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in modes:
            m.training = flag


def _trace(model: nn.Module, example_inputs: Any) -> tuple[dict[str, _Record], int]:
    """Run one forward pass (eval mode, no grad) recording each module's MACs and output shape."""
    args = prepare_inputs(model, example_inputs)
    batch = batch_size_of(args)
    records: dict[str, _Record] = {}
    handles = []

    def hook_for(name: str):
        def hook(m: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            rec = records.setdefault(name, _Record(type(m).__name__))
            macs = module_macs(m, inputs, output)
            rec.macs += macs or 0
            rec.calls += 1
            out = _first_tensor(output)
            rec.output_shape = tuple(out.shape) if out is not None else None
        return hook

    try:
        for name, m in model.named_modules():
            handles.append(m.register_forward_hook(hook_for(name)))
        with eval_mode(model), torch.no_grad():
            model(*args)
    finally:
        for h in handles:
            h.remove()
    return records, batch


def _nonzero(t: torch.Tensor) -> int:
    """Non-zero entries; a meta tensor has no values, so all of it counts as non-zero."""
    return t.numel() if t.is_meta else int(torch.count_nonzero(t.detach()).item())


def count(model: nn.Module, example_inputs: torch.Tensor | tuple[Any, ...]) -> Counts:
    """Parameters, non-zero parameters and per-sample MACs of ``model`` run on ``example_inputs``.

    Parameters shared between layers count once. The forward pass runs in eval mode without gradients
    (each module's train/eval flag is restored); inputs move to the model's device, so a model built under
    ``torch.device("meta")`` can be counted without memory (its non-zero count then equals ``params``).
    See the module docstring for what one MAC is.
    """
    records, batch = _trace(model, example_inputs)
    by_type: dict[str, int] = {}
    for rec in records.values():
        if rec.macs:
            by_type[rec.type] = by_type.get(rec.type, 0) + rec.macs // batch
    params = list(model.parameters())
    return Counts(params=sum(p.numel() for p in params), nonzero_params=sum(_nonzero(p) for p in params),
                  macs=sum(by_type.values()), macs_by_type=dict(sorted(by_type.items())))


def layer_table(model: nn.Module, example_inputs: torch.Tensor | tuple[Any, ...]) -> list[dict[str, Any]]:
    """One row per layer: leaves that ran, plus any module holding parameters of its own.

    Keys: ``name``, ``type``, ``output_shape`` (with the batch dimension, None if it did not run),
    ``params`` and ``nonzero_params`` (the module's own), ``macs`` (per sample, summed over calls) and
    ``sparsity`` (share of zeros among its own parameters). Rows follow ``named_modules()`` order; their
    params and MACs add up to :func:`count`'s.
    """
    records, batch = _trace(model, example_inputs)
    rows = []
    for name, m in model.named_modules():
        own = list(m.parameters(recurse=False))
        is_leaf = next(iter(m.children()), None) is None
        rec = records.get(name)
        if not own and not (is_leaf and rec is not None):
            continue
        n = sum(p.numel() for p in own)
        nz = sum(_nonzero(p) for p in own)
        rows.append({
            "name": name or "(model)",
            "type": type(m).__name__,
            "output_shape": rec.output_shape if rec else None,
            "params": n,
            "nonzero_params": nz,
            "macs": rec.macs // batch if rec else 0,
            "sparsity": (n - nz) / n if n else 0.0,
        })
    return rows


def sparsity(model: nn.Module) -> dict[str, float]:
    """Share of exact zeros in each named parameter, plus ``"global"`` over all parameters."""
    out: dict[str, float] = {}
    zeros = total = 0
    for name, p in model.named_parameters():
        n = p.numel()
        z = n - _nonzero(p)
        out[name] = z / n if n else 0.0
        zeros, total = zeros + z, total + n
    out["global"] = zeros / total if total else 0.0
    return out


# ---------------------------------------------------------------------------------------------- bounds

DEFAULT_MAX_MACS = 20 * 10**9  # per sample: above every zoo network (VGG-16 on ImageNet: 15.5 G)
DEFAULT_MAX_ACTIVATION = 2**26  # values in one layer's output per sample (256 MB in float32; VGG-16: 3.2 M)
MACS_ENV = "PRUNEKIT_MAX_MACS"
ACTIVATION_ENV = "PRUNEKIT_MAX_ACTIVATION"


@dataclass
class Bounds:
    """What :func:`check_bounds` measured on the meta device (per sample)."""

    macs: int
    largest_activation: int
    largest_layer: str


def _limit(value: float | int | None, env: str, default: int) -> int:
    from prunekit.errors import PrunekitError

    if value is None:
        text = os.environ.get(env, "").strip()
        if not text:
            return default
        try:
            value = float(text)
        except ValueError:
            raise PrunekitError(f"{env}={text!r}: expected a number such as 5e10") from None
    if isinstance(value, bool) or not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise PrunekitError(f"limit {value!r} ({env}): expected a positive number such as 5e10")
    return int(value)


def check_bounds(model: nn.Module, input_shape: tuple[int, ...], *, max_macs: float | None = None,
                 max_activation: float | None = None, what: str = "the model") -> Bounds | None:
    """Refuse (one PrunekitError) a network whose forward pass on one sample of ``input_shape`` would cost more
    than ``max_macs`` MACs or produce a layer output of more than ``max_activation`` values.

    Measured from the architecture alone, on the meta device: nothing is computed or allocated, so a small
    hostile file (a convolution with padding 1500) is refused before ``info`` / ``eval`` / ``export`` run it.
    The limits default to :data:`DEFAULT_MAX_MACS` / :data:`DEFAULT_MAX_ACTIVATION`, or ``$PRUNEKIT_MAX_MACS``
    / ``$PRUNEKIT_MAX_ACTIVATION``; raise them for a network that really is that large. Returns the figures,
    or None when the network cannot run on the meta device (then the real run reports its own errors).
    """
    from torch.func import functional_call

    from prunekit.errors import PrunekitError

    mac_limit = _limit(max_macs, MACS_ENV, DEFAULT_MAX_MACS)
    act_limit = _limit(max_activation, ACTIVATION_ENV, DEFAULT_MAX_ACTIVATION)
    shape = tuple(int(v) for v in input_shape)
    where = f"at input {','.join(map(str, shape))}"
    if math.prod(shape) > act_limit:
        raise PrunekitError(f"{what}: an input of {','.join(map(str, shape))} holds {math.prod(shape):,} values per "
                            f"sample, more than the limit of {act_limit:,}; raise it with {ACTIVATION_ENV}=N if "
                            "this is intended")
    totals = {"macs": 0, "act": 0, "layer": ""}

    def hook(name: str):
        def record(m: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            totals["macs"] += module_macs(m, inputs, output) or 0
            out = _first_tensor(output)
            if out is not None and out.numel() > totals["act"]:
                totals["act"], totals["layer"] = out.numel(), name or "(model)"
        return record

    named = [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
    state = {k: torch.empty_like(v, device="meta") for k, v in named}
    handles = [m.register_forward_hook(hook(name)) for name, m in model.named_modules()]
    try:
        with eval_mode(model), torch.no_grad():
            functional_call(model, state, (torch.empty((1, *shape), device="meta"),), tie_weights=False)
    except Exception:  # an op without a meta kernel, or a shape the network does not take: not ours to judge
        return None
    finally:
        for h in handles:
            h.remove()
    bounds = Bounds(int(totals["macs"]), int(totals["act"]), str(totals["layer"]))
    if bounds.macs > mac_limit:
        raise PrunekitError(f"{what}: {bounds.macs:,} MACs per sample {where}, more than the limit of {mac_limit:,}; "
                            f"raise it with --max-macs N or {MACS_ENV}=N if this network really is that large")
    if bounds.largest_activation > act_limit:
        raise PrunekitError(f"{what}: layer {bounds.largest_layer!r} outputs {bounds.largest_activation:,} values per "
                            f"sample {where}, more than the limit of {act_limit:,}; raise it with "
                            f"{ACTIVATION_ENV}=N if this network really is that large")
    return bounds
