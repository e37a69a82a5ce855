"""Latency, accuracy and on-disk size."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from prunekit.errors import PrunekitError
from prunekit.metrics.counting import batch_size_of, eval_mode, model_device, prepare_inputs


def latency(model: nn.Module, example_inputs: torch.Tensor | tuple[Any, ...], *, repeats: int = 30,
            warmup: int = 5, threads: int | None = None, clock: str = "wall") -> dict[str, Any]:
    """Time ``repeats`` forward passes (after ``warmup`` untimed ones) in eval mode under inference_mode.

    CPU: wall clock around each pass, with ``torch.set_num_threads(threads)`` fixed for the measurement
    (default: the current count) and restored afterwards. CUDA: CUDA events around each pass, synchronised.
    ``clock="thread"`` (CPU, one thread only) times the calling thread's CPU time instead of the wall clock:
    the same figure on an idle machine, but immune to other processes sharing the cores.
    Returns ``median_ms``, ``p10_ms``, ``p90_ms``, ``mean_ms``, ``min_ms`` (one pass over the whole batch),
    plus ``repeats``, ``warmup``, ``threads``, ``batch_size`` and ``device``.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if clock not in ("wall", "thread"):
        raise ValueError(f"clock must be 'wall' or 'thread', got {clock!r}")
    device = model_device(model)
    if clock == "thread" and (device.type != "cpu" or (threads or torch.get_num_threads()) != 1):
        raise PrunekitError("latency: clock='thread' measures one CPU thread; use threads=1 on the CPU")
    if device.type == "meta":
        raise PrunekitError("latency: the model is on the meta device (no weights); move it to cpu or cuda")
    args = prepare_inputs(model, example_inputs)
    old_threads = torch.get_num_threads()
    used = threads if threads is not None else old_threads
    cuda = device.type == "cuda"
    times: list[float] = []
    try:
        torch.set_num_threads(used)
        with eval_mode(model), torch.inference_mode():
            for _ in range(warmup):
                model(*args)
            if cuda:
                torch.cuda.synchronize(device)
                for _ in range(repeats):
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    model(*args)
                    end.record()
                    end.synchronize()
                    times.append(start.elapsed_time(end))
            else:
                timer = time.perf_counter if clock == "wall" else time.thread_time
                for _ in range(repeats):
                    t0 = timer()
                    model(*args)
                    times.append((timer() - t0) * 1000.0)
    finally:
        torch.set_num_threads(old_threads)
    arr = np.asarray(times)
    return {
        "median_ms": float(np.median(arr)), "p10_ms": float(np.percentile(arr, 10)),
        "p90_ms": float(np.percentile(arr, 90)), "mean_ms": float(arr.mean()), "min_ms": float(arr.min()),
        "repeats": repeats, "warmup": warmup, "threads": used, "batch_size": batch_size_of(args),
        "device": str(device), "clock": clock,
    }


#: a model's output -> its logits (``[batch, classes]``)
OutputTransform = Callable[[Any], torch.Tensor]


def logits_of(out: Any) -> torch.Tensor:
    """The logits in a model's output, by the Hugging Face convention: a tensor as is, ``.logits`` of a
    ``ModelOutput`` (or any object with that attribute), ``["logits"]`` of a mapping, else the first element
    of a tuple / list / mapping. Anything else is refused in one line."""
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(out, Mapping):
        first = out["logits"] if "logits" in out else next(iter(out.values()), None)
    elif isinstance(out, tuple | list):
        first = out[0] if out else None
    else:
        first = None
    if isinstance(first, torch.Tensor):
        return first
    raise PrunekitError(f"the model returned a {type(out).__name__} without logits (a tensor, .logits, a "
                        "'logits' key or a tensor first); pass output_transform= to say where they are")


def input_key_of(model: nn.Module) -> str | None:
    """The keyword a model takes its input by, by the Hugging Face convention (``main_input_name``, e.g.
    ``pixel_values``); None: positional, as plain PyTorch modules take it."""
    name = getattr(getattr(model, "module", model), "main_input_name", None)
    return name if isinstance(name, str) else None


def forward_logits(model: nn.Module, x: torch.Tensor, *, input_key: str | None = "auto",
                   output_transform: OutputTransform | None = None) -> torch.Tensor:
    """``model``'s logits for inputs ``x``: ``input_key="auto"`` passes ``x`` by the model's
    :func:`input_key_of` (positionally when it has none), a name passes it by that keyword, None positionally;
    the output goes through ``output_transform`` (default :func:`logits_of`)."""
    key = input_key_of(model) if input_key == "auto" else input_key
    out = model(**{key: x}) if key else model(x)
    return (output_transform or logits_of)(out)


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, topk: Sequence[int]) -> torch.Tensor:
    """For each k, how many rows of ``logits`` rank their label among the k highest (a tensor, on the device;
    a k above the number of classes counts every row). Shared by :func:`accuracy` and the engine."""
    kmax = min(max(topk), logits.shape[1])
    hits = logits.topk(kmax, dim=1).indices == labels[:, None]
    return torch.stack([hits[:, :min(k, kmax)].any(dim=1).sum() for k in topk])


def accuracy(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
             topk: tuple[int, ...] = (1, 5), *, input_key: str | None = "auto",
             output_transform: OutputTransform | None = None) -> dict[str, float]:
    """Top-k accuracy (fractions in [0, 1]) over ``(inputs, labels)`` batches, in eval mode without grad.

    The model may return a HF ``ModelOutput``, a dict or a tuple and take its input by keyword (see
    :func:`forward_logits` for ``input_key`` and ``output_transform``).

    Returns ``{"top1": ..., "top5": ..., "samples": n}``. A k above the number of classes counts every
    sample as correct. Each module's train/eval flag is restored afterwards.
    """
    if not topk or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in topk):
        raise ValueError(f"topk must be positive integers, got {topk!r}")
    device = model_device(model)
    correct = dict.fromkeys(topk, 0)
    n = 0
    with eval_mode(model), torch.inference_mode():
        for x, y in batches:
            logits = forward_logits(model, x.to(device), input_key=input_key, output_transform=output_transform)
            y = y.to(logits.device).reshape(-1)
            if logits.dim() != 2 or logits.shape[0] != y.shape[0]:
                raise PrunekitError(f"accuracy: model output has shape {tuple(logits.shape)} for "
                                    f"{y.shape[0]} labels; expected (batch, classes)")
            for k, c in zip(topk, topk_correct(logits, y, topk).tolist(), strict=True):
                correct[k] += int(c)
            n += y.shape[0]
    if n == 0:
        raise PrunekitError("accuracy: the data gave no samples; check the dataset split")
    result: dict[str, float] = {f"top{k}": correct[k] / n for k in topk}
    result["samples"] = n
    return result


def file_size(path: str | os.PathLike) -> int:
    """Size in bytes of a file, or of all files under a directory (an export that spans several files)."""
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    raise PrunekitError(f"{p}: no such file or directory; export the model first")
