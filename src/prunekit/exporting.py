"""Export a (pruned) network for deployment: ONNX, or a dense / sparse prunekit file.

:func:`export` is the library form of ``prunekit export``. The format comes from ``format=`` or the file
name (``.onnx``; ``.sparse.safetensors``; ``.safetensors``). ONNX files are checked against torch on the
example inputs with onnxruntime when it is installed, and written atomically only once they match.
Optional packages that are missing are one :class:`PrunekitError` line naming the extra to install.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from prunekit.errors import PrunekitError

FORMATS = ("onnx", "dense", "sparse")


@dataclass
class Exported:
    """What :func:`export` wrote."""

    path: Path
    format: str
    max_abs_diff: float | None = None
    """ONNX only: largest difference between onnxruntime's and torch's outputs on the example inputs (None
    when onnxruntime is not installed and ``check`` was not required)."""


def require(module: str, purpose: str, extra: str = "onnx") -> ModuleType:
    """Import an optional dependency, or raise one line naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise PrunekitError(f"{purpose} needs the optional package {module!r}, which is not installed: "
                            f"pip install prunekit[{extra}]") from None


def format_of(path: str | os.PathLike, format: str | None = None) -> str:
    """The export format: ``format`` if given, else from the file name."""
    if format is not None:
        if format not in FORMATS:
            raise PrunekitError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
        return format
    name = Path(path).name.lower()
    if name.endswith(".onnx"):
        return "onnx"
    if name.endswith(".sparse.safetensors"):
        return "sparse"
    if name.endswith(".safetensors"):
        return "dense"
    raise PrunekitError(f"{ascii(str(path))[:200]}: cannot tell the export format from the file name; use a "
                        ".onnx, .sparse.safetensors or .safetensors name, or pass format=")


def export(model: nn.Module, example_inputs: Any, path: str | os.PathLike, *, format: str | None = None,
           base: nn.Module | None = None, extra: dict[str, Any] | None = None, check: bool | None = None,
           atol: float = 1e-4, rtol: float = 1e-4, opset: int | None = None) -> Exported:
    """Write ``model`` to ``path`` as ONNX or as a dense / sparse prunekit file.

    ``example_inputs`` (a tensor or a tuple of tensors) drive the ONNX trace (batch dimension dynamic) and
    its check; dense and sparse files do not need them. ``base`` (dense / sparse, a user's network as
    built) records the structural history so that ``prunekit.load(path, model=fresh)`` rebuilds the pruned
    shapes. ``check``: verify the ONNX file with onnxruntime (None: when installed; True: required). A
    network that cannot be exported raises one :class:`PrunekitError` naming the layer; nothing is written.
    """
    fmt = format_of(path, format)
    model = getattr(model, "module", model)
    path = Path(path)
    if fmt == "dense":
        from prunekit import io

        io.save(model, path, extra=extra, base=base)
        return Exported(path, fmt)
    if fmt == "sparse":
        from prunekit.surgery import save_sparse

        save_sparse(model, path, extra=extra, base=base)
        return Exported(path, fmt)
    return _onnx(model, example_inputs, path, check, atol, rtol, opset)


# ---------------------------------------------------------------------------------------------------------
# ONNX


def _inputs(example_inputs: Any) -> tuple[torch.Tensor, ...]:
    xs = example_inputs if isinstance(example_inputs, list | tuple) else (example_inputs,)
    if not xs or not all(isinstance(x, torch.Tensor) for x in xs):
        raise PrunekitError("ONNX export needs example inputs: a tensor or a tuple of tensors (the model's "
                            "positional arguments)")
    return tuple(xs)


def _flatten(out: Any) -> list[tuple[str, torch.Tensor]]:
    """Every tensor of a model output (tensor, tuple / list, dict or HF ``ModelOutput``), with a name."""
    if isinstance(out, torch.Tensor):
        return [("logits", out)]
    items: list[tuple[str, Any]]
    if isinstance(out, Mapping):
        items = [(str(k), v) for k, v in out.items() if v is not None]
    elif isinstance(out, list | tuple):
        items = [(f"output_{i}", v) for i, v in enumerate(out) if v is not None]
    else:
        raise PrunekitError(f"cannot export an output of type {type(out).__name__} to ONNX")
    flat: list[tuple[str, torch.Tensor]] = []
    for k, v in items:
        if isinstance(v, torch.Tensor):
            flat.append((k, v))
        else:
            flat += [(f"{k}_{n}", t) for n, t in _flatten(v)]
    return flat


class _Flat(nn.Module):
    """The user's model with its outputs flattened to a tuple of tensors (what ONNX graphs return)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(t for _, t in _flatten(self.model(*xs)))


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, t in modes:
            m.training = t


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return ascii(text[0][:200])[1:-1] if text else type(exc).__name__


def _onnx(model: nn.Module, example_inputs: Any, path: Path, check: bool | None, atol: float, rtol: float,
          opset: int | None) -> Exported:
    from prunekit.atomic import atomic_path
    from prunekit.io import layer_tracker

    require("onnx", "ONNX export")
    ort = require("onnxruntime", "checking the ONNX file") if check else None
    if check is None:
        try:
            ort = importlib.import_module("onnxruntime")
        except ImportError:
            ort = None
    xs = _inputs(example_inputs)
    with _eval_mode(model):
        try:
            with torch.no_grad():
                ref = _flatten(model(*xs))
        except PrunekitError:
            raise
        except Exception as exc:
            raise PrunekitError(f"the model does not run on the example inputs ({type(exc).__name__}: "
                                f"{_one_line(exc)})") from None
        if not ref:
            raise PrunekitError("the model returns no tensor to export")
        in_names = ["input"] if len(xs) == 1 else [f"input_{i}" for i in range(len(xs))]
        out_names = [n for n, _ in ref]
        if len(set(out_names)) != len(out_names):
            out_names = [f"output_{i}" for i in range(len(ref))]
        axes = {n: {0: "batch"} for n in in_names + out_names}
        with atomic_path(path) as tmp:
            flat = _Flat(model).eval()
            # not under no_grad: nn.MultiheadAttention would take its fused fast path, which ONNX lacks
            with layer_tracker(model) as stack, warnings.catch_warnings(), _quiet_onnx_log():
                warnings.simplefilter("ignore")  # tracer warnings about Python control flow
                try:
                    kw: dict[str, Any] = {} if opset is None else {"opset_version": opset}
                    torch.onnx.export(flat, xs, str(tmp), dynamo=False, input_names=in_names,
                                      output_names=out_names, dynamic_axes=axes, **kw)
                except OSError:
                    raise  # disk full, permission denied: atomic_path names the target
                except Exception as exc:
                    layer = stack.failed or _layer_of_op(flat, xs, str(exc))
                    types = dict((n, type(m).__name__) for n, m in model.named_modules())
                    where = f"layer {layer!r} ({types.get(layer, '?')})" if layer else "the model"
                    raise PrunekitError(f"cannot export {where} to ONNX: {type(exc).__name__}: "
                                        f"{_one_line(exc)}") from None
            diff = None if ort is None else _compare(ort, tmp, in_names, xs, out_names, ref, atol, rtol)
    return Exported(path, "onnx", diff)


@contextlib.contextmanager
def _quiet_onnx_log() -> Iterator[None]:
    """The TorchScript exporter prints the whole graph from C++ when it fails (its switch to turn that off
    does not work): send file descriptors 1 and 2 to a scratch file meanwhile, keeping errors to one line."""
    import sys
    import tempfile

    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                for stream in (sys.stdout, sys.stderr):
                    with contextlib.suppress(Exception):
                        stream.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
    finally:
        for fd in saved:
            os.close(fd)


def _layer_of_op(flat: nn.Module, xs: tuple[torch.Tensor, ...], message: str) -> str | None:
    """The layer whose traced graph holds the operator an export error names (``'aten::...'``), if any."""
    m = re.search(r"'?(aten::[A-Za-z0-9_.]+)'?", message)
    if m is None:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph = torch.jit.trace(flat, xs, check_trace=False, strict=False).inlined_graph
    except Exception:
        return None
    for node in graph.nodes():
        if node.kind() == m.group(1):
            name = node.scopeName().split("/")[-1].rpartition("::")[2]
            for prefix in ("__module.", "model."):
                name = name[len(prefix):] if name.startswith(prefix) else name
            return name or None
    return None


def _compare(ort: ModuleType, file: Path, in_names: list[str], xs: tuple[torch.Tensor, ...], out_names: list[str],
             ref: list[tuple[str, torch.Tensor]], atol: float, rtol: float) -> float:
    """Run the ONNX file with onnxruntime on ``xs``; refuse unless it matches torch within tolerance."""
    try:
        sess = ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])
        got = sess.run(out_names, {n: x.detach().cpu().numpy() for n, x in zip(in_names, xs, strict=True)})
    except Exception as exc:
        raise PrunekitError(f"onnxruntime cannot run the exported model ({type(exc).__name__}: "
                            f"{_one_line(exc)})") from None
    worst = 0.0
    for name, (_, want), have in zip(out_names, ref, got, strict=True):
        want = want.detach().cpu()
        have_t = torch.from_numpy(have)
        if tuple(have_t.shape) != tuple(want.shape):
            raise PrunekitError(f"ONNX output {name!r} has shape {tuple(have_t.shape)}, torch gives "
                                f"{tuple(want.shape)}")
        if want.is_floating_point():
            d = (have_t.to(want.dtype) - want).abs()
            bound = atol + rtol * want.abs()
            if bool((d > bound).any()):
                raise PrunekitError(f"ONNX output {name!r} differs from torch by up to {float(d.max()):.3g} "
                                    f"(atol {atol:g}, rtol {rtol:g}); the file was not written")
            worst = max(worst, float(d.max()) if d.numel() else 0.0)
        elif not torch.equal(have_t.to(want.dtype), want):
            raise PrunekitError(f"ONNX output {name!r} differs from torch; the file was not written")
    return worst
