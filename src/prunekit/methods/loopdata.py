"""Data a method reads from the training loop (a :class:`~prunekit.methods.api.TrainingLoop`): batches of a
split, top-1 accuracy on the validation data, and example inputs. The built-in Trainer holds prunekit
datasets; a user's own loop may hold any re-iterable of ``(x, y)`` batches (a ``DataLoader``), a callable
returning one, or nothing."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from prunekit.errors import PrunekitError
from prunekit.methods.api import TrainingLoop


def batches_of(data: Any, loop: TrainingLoop, *, batch_size: int = 0, samples: int = 0) -> Iterable[Any]:
    """Batches of ``data`` in order, without augmentation: a prunekit dataset (its first ``samples`` when
    given) is iterated at ``batch_size`` (default the loop's evaluation batch), split across the loop's
    processes so that together they see it once; a callable is called; anything else is iterated as is."""
    from prunekit import data as pdata

    if isinstance(data, pdata.Dataset):
        if samples:
            data = data.subset(samples)
        return pdata.iterate(data, batch_size or loop.eval_batch_size, shuffle=False, augment=None,
                             device=loop.device, rank=loop.rank, world_size=loop.world_size, split="batch")
    if callable(data):
        return data()
    return data


def split_batches(loop: TrainingLoop, split: str, data: Any = None, *, batch_size: int = 0, samples: int = 0,
                  refusal: str = "no data") -> Iterable[Any]:
    """:func:`batches_of` ``data`` when given, else of the loop's ``split`` ("train" or "val"); when neither
    exists, one :class:`PrunekitError` line: ``refusal`` (e.g. what the data was for and how to give it)."""
    if data is None:
        data = loop.train_data if split == "train" else loop.val_data
        if data is None:
            raise PrunekitError(refusal)
    return batches_of(data, loop, batch_size=batch_size, samples=samples)


def val_top1(loop: TrainingLoop) -> float | None:
    """Top-1 accuracy (percent) of the loop's model on its validation data; None without such data."""
    from prunekit import data as pdata

    val = loop.val_data
    if val is None:
        return None
    if isinstance(val, pdata.Dataset):
        from prunekit.engine.trainer import evaluate

        return evaluate(loop.raw_model, val, batch_size=loop.eval_batch_size, device=loop.device,
                        rank=loop.rank, world_size=loop.world_size, amp=loop.amp)["top1"]
    from prunekit.metrics import accuracy

    return 100.0 * accuracy(loop.raw_model, batches_of(val, loop), topk=(1,))["top1"]


def example_inputs_of(loop: TrainingLoop, data: Any = None) -> torch.Tensor:
    """One input of batch size 1 on the model's device: the loop's ``example_inputs``, else zeros shaped like
    ``data`` / the model's ``input_shape``, else like the first batch of ``data``."""
    ex = loop.example_inputs
    if isinstance(ex, torch.Tensor):
        return ex
    shape = getattr(data, "input_shape", None) or getattr(loop.raw_model, "input_shape", None)
    if shape is None:
        if data is None:
            raise PrunekitError("cannot make example inputs: set the loop's example_inputs or give the model an "
                                "input_shape attribute")
        first = next(iter(batches_of(data, loop)))
        x = first[0] if isinstance(first, tuple | list) else first
        shape = tuple(x.shape[1:])
    p = next(loop.raw_model.parameters(), None)
    return torch.zeros((1, *shape), device=p.device if p is not None else "cpu")


__all__ = ["batches_of", "example_inputs_of", "split_batches", "val_top1"]
