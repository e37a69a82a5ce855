"""Deployment form: fold every BatchNorm that directly follows a convolution into that convolution.

A pruned network is only as fast as its thin layers allow; in eager PyTorch a BN after each conv is a
separate pass over the activations whose cost scales with the width, not the width squared, so it eats a
large share of a thin network's time (see README's surgery figures). Inference frameworks fold it away:
``y = gamma * (conv(x) - mean) / sqrt(var + eps) + beta`` is a conv with rescaled weights and a new bias.

:func:`fold_batchnorm` does this in place on a plain module (no ``torch.fx.GraphModule`` left behind), so
the result still saves with :func:`prunekit.save`, loads as a plain network and exports to ONNX. The graph is
read with ``torch.fx.symbolic_trace`` (public API) only to find the pairs; a BN is folded when its single
input is a conv whose output feeds nothing else, and neither module is called twice. The arithmetic is
PyTorch's own ``torch.nn.utils.fusion.fuse_conv_bn_weights``.
"""

from __future__ import annotations

import copy
import statistics
from collections import Counter
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils.fusion import fuse_conv_bn_weights

from prunekit.errors import PrunekitError


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> list[tuple[str, str]]:
    """Fold each ``conv -> BN`` pair of ``model`` (in eval mode) into the conv; the BN becomes Identity.

    Returns the folded ``(conv name, bn name)`` pairs. Raises :class:`PrunekitError` when the model cannot be
    traced (data-dependent control flow) or is in training mode (folding uses the running statistics).
    """
    if model.training:
        raise PrunekitError("fold_batchnorm: call model.eval() first (folding uses BN running statistics)")
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as exc:  # torch.fx raises many types for untraceable code
        raise PrunekitError(f"fold_batchnorm: the model cannot be traced by torch.fx "
                            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    modules = dict(model.named_modules())
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    pairs: list[tuple[str, str]] = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), _BatchNorm):
            continue
        prev = node.args[0] if len(node.args) == 1 and not node.kwargs else None
        if not isinstance(prev, torch.fx.Node) or prev.op != "call_module":
            continue
        conv, bn = modules.get(prev.target), modules[node.target]
        if not isinstance(conv, nn.modules.conv._ConvNd) or len(prev.users) != 1:
            continue
        if calls[prev.target] != 1 or calls[node.target] != 1 or bn.running_mean is None:
            continue
        transpose = bool(conv.transposed)
        weight, bias = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps,
                                            bn.weight, bn.bias, transpose=transpose)
        conv.weight = weight
        conv.bias = bias
        _replace(model, node.target, nn.Identity())
        pairs.append((str(prev.target), str(node.target)))
    return pairs


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def deployed(model: nn.Module, example_inputs: Any = None, *, threads: int | None = None,
             rounds: int = 5) -> nn.Module:
    """``model`` in the form a deployment runs: eval mode, BN folded where possible, and the memory format
    (``channels_last`` or contiguous) that runs ``example_inputs`` faster.

    The format is chosen by timing both (interleaved, ``rounds`` rounds, median, ``threads`` fixed) on the
    example input, so the deployed form is never slower than the folded contiguous one (channels_last helps
    wide layers at large batches and hurts thin ones at batch 1). Without an example input the model's
    recorded ``input_shape`` at batch 1 is used; failing that, the contiguous format is kept. The choice is
    recorded as ``model.memory_format``; feed inputs in that format.
    """
    model = model.eval()
    try:
        fold_batchnorm(model)
    except PrunekitError:
        pass  # untraceable: keep the BNs (the figure is then the eager one; callers can check)
    x = _example(model, example_inputs)
    fmt = "contiguous" if x is None else _faster_format(model, x, threads, rounds)
    if fmt == "channels_last":
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    setattr(model, "memory_format", fmt)  # noqa: B010 - a plain attribute on an nn.Module
    return model


def _example(model: nn.Module, example_inputs: Any) -> torch.Tensor | None:
    if isinstance(example_inputs, tuple | list) and len(example_inputs) == 1:
        example_inputs = example_inputs[0]
    if isinstance(example_inputs, torch.Tensor):
        return example_inputs
    shape = getattr(model, "input_shape", None)
    if example_inputs is None and shape is not None:
        from prunekit.metrics.counting import model_device

        return torch.randn((1, *tuple(shape)), device=model_device(model))
    return None


def _faster_format(model: nn.Module, x: torch.Tensor, threads: int | None, rounds: int) -> str:
    """``"channels_last"`` or ``"contiguous"``: whichever runs ``x`` faster (median of interleaved rounds)."""
    if x.dim() != 4 or not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return "contiguous"
    from prunekit.metrics.evaluation import latency

    clock = "thread" if threads == 1 and x.device.type == "cpu" else "wall"  # immune to other processes
    cl = copy.deepcopy(model).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    xcl = x.contiguous(memory_format=torch.channels_last)
    xc = x.contiguous()
    times: dict[str, list[float]] = {"contiguous": [], "channels_last": []}
    try:
        latency(model, xc, repeats=1, warmup=2, threads=threads)
        latency(cl, xcl, repeats=1, warmup=2, threads=threads)
        for _ in range(max(1, rounds)):
            for key, m, xin in (("contiguous", model, xc), ("channels_last", cl, xcl)):
                times[key].append(latency(m, xin, repeats=2, warmup=0, threads=threads, clock=clock)["median_ms"])
    except Exception:  # a model that fails in one format keeps the other (contiguous is the safe default)
        return "contiguous"
    return "channels_last" if statistics.median(times["channels_last"]) < statistics.median(
        times["contiguous"]) else "contiguous"


__all__ = ["deployed", "fold_batchnorm"]
