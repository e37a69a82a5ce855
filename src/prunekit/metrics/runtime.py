"""Latency in the runtime a network is deployed with: PyTorch eager, the deployed PyTorch form, ONNX Runtime
(CPU) or CUDA, measured side by side.

Why: the runtime changes both the absolute latency and the speed-up that pruning buys (ONNX Runtime runs a
dense ResNet-56 at batch 1 several times faster than PyTorch eager), so a pruned network is judged where it
will run. Runtimes:

* ``eager``: the model as it is, in eval mode under ``torch.inference_mode``.
* ``deployed``: :func:`prunekit.surgery.deployed` (BN folded into the convs; memory format chosen by
  measurement on the example input, so it is never slower than the folded contiguous form).
* ``onnxruntime``: exported with ``torch.onnx.export`` (TorchScript exporter, dynamic batch) and run by an
  ``onnxruntime.InferenceSession`` on the CPU, all graph optimisations on, ``intra_op_num_threads`` fixed.
  Needs the ``onnx`` extra (``pip install prunekit[onnx]``).
* ``cuda``: the deployed form on the first CUDA device (timed with CUDA events).

:func:`measure` times every (model, runtime, batch) interleaved round-robin, after warm-up, and reports
medians, so machine load hits every row alike. Threads are fixed for every runtime (``torch.set_num_threads``
and ORT's ``intra_op_num_threads``). The clock: ``wall``, or ``thread`` (the calling thread's CPU time; one
thread on the CPU only, where both ONNX Runtime and PyTorch run every op on the calling thread): equal to the
wall latency on an idle machine, but not inflated when other processes share the cores. ``auto`` (default)
takes ``thread`` for one CPU thread and ``wall`` otherwise.
"""

from __future__ import annotations

import copy
import io
import statistics
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import nn

from prunekit.errors import PrunekitError
from prunekit.metrics.evaluation import latency

RUNTIMES = ("eager", "deployed", "onnxruntime", "cuda")
ONNX_EXTRA = "pip install prunekit[onnx]"


CLOCKS = ("auto", "wall", "thread")


def resolve_clock(clock: str, runtime: str, threads: int) -> str:
    """``wall`` or ``thread`` for ``clock`` (``auto``: thread for one CPU thread)."""
    if clock not in CLOCKS:
        raise PrunekitError(f"unknown clock {clock!r}; choose from {', '.join(CLOCKS)}")
    if clock == "auto":
        return "thread" if threads == 1 and runtime != "cuda" else "wall"
    if clock == "thread" and (threads != 1 or runtime == "cuda"):
        raise PrunekitError("clock thread times one CPU thread: use --threads 1 and a CPU runtime")
    return clock


def require_onnxruntime() -> ModuleType:
    """The ``onnxruntime`` module, or one clear error naming the extra that installs it."""
    try:
        import onnxruntime  # type: ignore[import-untyped]
    except ImportError:
        raise PrunekitError(f"runtime onnxruntime needs the onnxruntime package: {ONNX_EXTRA}") from None
    return onnxruntime


def check_runtimes(names: Sequence[str]) -> list[str]:
    """Validated runtime names (unknown ones, a missing onnxruntime or a missing CUDA device are errors)."""
    out = []
    for n in names:
        n = n.strip()
        if n not in RUNTIMES:
            raise PrunekitError(f"unknown runtime {n!r}; choose from {', '.join(RUNTIMES)}")
        if n == "onnxruntime":
            require_onnxruntime()
        if n == "cuda" and not torch.cuda.is_available():
            raise PrunekitError("runtime cuda: no CUDA device is available on this machine")
        if n not in out:
            out.append(n)
    if not out:
        raise PrunekitError(f"no runtime given; choose from {', '.join(RUNTIMES)}")
    return out


def onnx_bytes(model: nn.Module, example: torch.Tensor) -> bytes:
    """``model`` (eval mode, on the CPU) exported to ONNX in memory, with a dynamic batch dimension."""
    buf = io.BytesIO()
    model = model.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(model, (example.cpu().contiguous(),), buf,  # type: ignore[arg-type]
                              dynamo=False, input_names=["input"], output_names=["output"],
                              dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    except Exception as exc:  # the exporter raises many types for unsupported code
        raise PrunekitError(f"runtime onnxruntime: the model cannot be exported to ONNX "
                            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})") from None
    return buf.getvalue()


def ort_session(model_bytes: bytes, threads: int) -> Any:
    """An ONNX Runtime CPU session with every graph optimisation and a fixed number of intra-op threads."""
    ort = require_onnxruntime()
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])


@dataclass
class Prepared:
    """One model made ready in one runtime at one input: ``forward()`` runs it once and returns NumPy."""

    runtime: str
    forward: Callable[[], np.ndarray]
    time_ms: Callable[[int], list[float]]  # ``time_ms(n)``: n timed forwards, milliseconds each


def prepare(model: nn.Module, runtime: str, example: torch.Tensor, *, threads: int = 1,
            clock: str = "auto") -> Prepared:
    """Make a copy of ``model`` ready in ``runtime`` for inputs shaped like ``example`` (the model itself is
    not changed)."""
    if not isinstance(example, torch.Tensor):
        raise PrunekitError("runtime latency needs one input tensor (batch first)")
    if threads < 1:
        raise PrunekitError(f"threads must be >= 1, got {threads}")
    clock = resolve_clock(clock, runtime, threads)
    x = example.detach().cpu()
    if runtime == "onnxruntime":
        sess = ort_session(onnx_bytes(copy.deepcopy(model).cpu(), x), threads)
        name = sess.get_inputs()[0].name
        feed = {name: x.contiguous().numpy()}

        def ort_forward() -> np.ndarray:
            return np.asarray(sess.run(None, feed)[0])

        def ort_time(n: int) -> list[float]:
            old = torch.get_num_threads()
            out = []
            timer = time.thread_time if clock == "thread" else time.perf_counter
            try:
                torch.set_num_threads(threads)  # keeps torch's pool from competing while ORT runs
                for _ in range(n):
                    t0 = timer()
                    sess.run(None, feed)
                    out.append((timer() - t0) * 1000.0)
            finally:
                torch.set_num_threads(old)
            return out

        return Prepared(runtime, ort_forward, ort_time)
    if runtime not in ("eager", "deployed", "cuda"):
        raise PrunekitError(f"unknown runtime {runtime!r}; choose from {', '.join(RUNTIMES)}")
    m = copy.deepcopy(model).eval()
    if runtime == "cuda":
        if not torch.cuda.is_available():
            raise PrunekitError("runtime cuda: no CUDA device is available on this machine")
        m, x = m.cuda(), x.cuda()
    if runtime in ("deployed", "cuda"):
        from prunekit.surgery.fold import deployed

        m = deployed(m, x, threads=threads)
        if getattr(m, "memory_format", "contiguous") == "channels_last" and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)

    def torch_forward() -> np.ndarray:
        with torch.inference_mode():
            return m(x).detach().float().cpu().numpy()

    def torch_time(n: int) -> list[float]:
        times = []
        for _ in range(n):  # one pass per call keeps every sample (latency() reports only their summary)
            times.append(latency(m, x, repeats=1, warmup=0, threads=threads, clock=clock)["median_ms"])
        return times

    return Prepared(runtime, torch_forward, torch_time)


def measure(models: Mapping[str, nn.Module], example: Callable[[int], torch.Tensor] | torch.Tensor, *,
            runtimes: Sequence[str] = ("eager", "deployed", "onnxruntime"), batches: Sequence[int] = (1,),
            threads: int = 1, rounds: int = 10, repeats: int = 3, warmup: int = 3,
            clock: str = "auto") -> list[dict[str, Any]]:
    """Median latency of every model in every runtime at every batch, interleaved round-robin.

    ``example`` is a tensor of one sample's shape (batch first; it is repeated to each batch size) or a
    function ``batch -> input``. Each round times ``repeats`` forwards of every (model, runtime, batch) in
    turn; the median is over all rounds' samples. Rows: ``model``, ``runtime``, ``batch``, ``threads``,
    ``median_ms``, ``p10_ms``, ``p90_ms``, ``samples``, ``clock``.
    """
    runtimes = check_runtimes(runtimes)
    if rounds < 1 or repeats < 1 or warmup < 0:
        raise PrunekitError(f"need rounds >= 1, repeats >= 1, warmup >= 0; got {rounds}, {repeats}, {warmup}")
    if not batches or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in batches):
        raise PrunekitError(f"batch sizes must be positive integers, got {list(batches)!r}")

    def make(b: int) -> torch.Tensor:
        if callable(example) and not isinstance(example, torch.Tensor):
            return example(b)
        one = example[:1]
        return one.repeat(b, *([1] * (one.dim() - 1)))

    cells: dict[tuple[str, str, int], Prepared] = {}
    for b in batches:
        x = make(b)
        for name, model in models.items():
            for rt in runtimes:
                cells[(name, rt, b)] = prepare(model, rt, x, threads=threads, clock=clock)
    for p in cells.values():
        p.time_ms(warmup)
    samples: dict[tuple[str, str, int], list[float]] = {k: [] for k in cells}
    for _ in range(rounds):
        for k, p in cells.items():
            samples[k].extend(p.time_ms(repeats))
    rows = []
    for (name, rt, b), s in samples.items():
        q = statistics.quantiles(s, n=10) if len(s) > 1 else [s[0]] * 9
        rows.append({"model": name, "runtime": rt, "batch": b, "threads": threads,
                     "median_ms": statistics.median(s), "p10_ms": q[0], "p90_ms": q[-1], "samples": len(s),
                     "clock": resolve_clock(clock, rt, threads)})
    return rows


def side_by_side(rows: Sequence[Mapping[str, Any]], *, model: str, dense: str | None = None,
                 macs_ratio: float | None = None) -> list[dict[str, Any]]:
    """Rows of :func:`measure` as one table: per batch, a line of milliseconds per runtime for ``dense``
    (when given) and ``model``, then the speed-up of ``model`` over ``dense`` in each runtime and, with the
    MACs reduction ``macs_ratio`` (dense / pruned), the speed-up divided by it (1.0 = as fast as MACs say)."""
    runtimes = list(dict.fromkeys(r["runtime"] for r in rows))
    batches = sorted({int(r["batch"]) for r in rows})
    ms = {(r["model"], r["runtime"], int(r["batch"])): float(r["median_ms"]) for r in rows}
    table: list[dict[str, Any]] = []
    for b in batches:
        for name in ([dense] if dense else []) + [model]:
            table.append({"model": name, "batch": b, **{f"{rt} ms": round(ms[(name, rt, b)], 3) for rt in runtimes}})
        if dense:
            up = {rt: ms[(dense, rt, b)] / ms[(model, rt, b)] for rt in runtimes}
            table.append({"model": "speed-up", "batch": b, **{f"{rt} ms": round(up[rt], 2) for rt in runtimes}})
            if macs_ratio:
                table.append({"model": f"speed-up / MACs reduction ({macs_ratio:.2f}x)", "batch": b,
                              **{f"{rt} ms": round(up[rt] / macs_ratio, 2) for rt in runtimes}})
    return table


__all__ = ["CLOCKS", "ONNX_EXTRA", "RUNTIMES", "Prepared", "check_runtimes", "measure", "onnx_bytes", "ort_session",
           "prepare", "require_onnxruntime", "resolve_clock", "side_by_side"]
