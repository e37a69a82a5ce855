"""Deterministic, resumable, shardable mini-batches and batched CIFAR-style augmentation.

The sample order of an epoch is a function of (seed, epoch) only and each batch's augmentation draws from a
generator seeded by (seed, epoch, rank, batch index), never from global RNG state. A run resumed mid-epoch
with ``start_batch=k`` therefore gets exactly the batches an uninterrupted run would have got. With
``split="batch"`` (what the Trainer uses under DistributedDataParallel) the ranks split each global batch,
and its augmentation draws, so that together they hold exactly one process's batch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from typing import Literal

import torch
import torch.nn.functional as F

from prunekit.data.dataset import Dataset
from prunekit.errors import PrunekitError

RECIPES = ("crop_flip", "crop", "flip")
PAD = 4

BatchSize = int | Sequence[int] | Callable[[int], int]


def derive_seed(*parts: object) -> int:
    """A 63-bit seed mixed from the parts (stable across runs, platforms and Python hash seeds)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


# ------------------------------------------------------------------------------------------- augmentation


def augment_batch(x: torch.Tensor, recipe: str, generator: torch.Generator) -> torch.Tensor:
    """Augment a whole batch [B, C, H, W] at once, on ``x``'s device, with randomness from ``generator``.

    ``"crop_flip"``: zero-pad 4 pixels on each side, take a random H x W crop and flip it horizontally with
    probability 1/2 (the standard CIFAR recipe); ``"crop"`` and ``"flip"`` do one of the two. Per-sample
    offsets and flips are drawn on the CPU generator (offsets y, then x, then flips, whatever the recipe) and
    applied with tensor ops, with no per-image loop. Works for any dtype (uint8 pads with black).
    """
    if recipe not in RECIPES:
        raise PrunekitError(f"unknown augmentation {recipe!r}; valid recipes: {', '.join(RECIPES)}")
    if x.dim() != 4:
        raise PrunekitError(f"augment_batch: expected a batch [B, C, H, W], got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        return x
    offsets, flips = _draw_augment(x.shape[0], generator)
    return _apply_augment(x, recipe, offsets, flips)


def _draw_augment(b: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop offsets [2, b] and flip flags [b] of a batch of ``b``, in :func:`augment_batch`'s draw order."""
    offsets = torch.randint(0, 2 * PAD + 1, (2, b), generator=generator)
    flips = torch.rand(b, generator=generator) < 0.5
    return offsets, flips


def _apply_augment(x: torch.Tensor, recipe: str, offsets: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    b, _, h, w = x.shape
    if b == 0:
        return x
    dev = x.device
    out = x
    if "crop" in recipe:
        oy, ox = offsets.to(dev)
        # All (2P+1)^2 crops as a strided view [B, C, 2P+1, 2P+1, H, W]; pick one per sample with one gather.
        windows = F.pad(x, (PAD, PAD, PAD, PAD)).unfold(2, h, 1).unfold(3, w, 1)
        out = windows[torch.arange(b, device=dev), :, oy, ox]
    if "flip" in recipe:
        out = torch.where(flips.to(dev)[:, None, None, None], out.flip(3), out)
    return out


# ------------------------------------------------------------------------------------------- batching


def _size_fn(batch_size: BatchSize) -> Callable[[int], int]:
    """Batch index -> size, from an int, a sequence (last size repeats) or a callable."""
    if isinstance(batch_size, bool):
        raise PrunekitError(f"batch_size={batch_size!r}: expected a positive int, sequence or callable")
    if isinstance(batch_size, int):
        fn: Callable[[int], int] = lambda i: batch_size  # noqa: E731
    elif callable(batch_size):
        fn = batch_size
    elif isinstance(batch_size, Sequence) and not isinstance(batch_size, str) and len(batch_size) > 0:
        sizes = list(batch_size)
        fn = lambda i: sizes[min(i, len(sizes) - 1)]  # noqa: E731
    else:
        raise PrunekitError(
            f"batch_size={batch_size!r}: expected a positive int, a non-empty sequence or a callable"
        )

    def checked(i: int) -> int:
        size = fn(i)
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise PrunekitError(f"batch size for batch {i} is {size!r}; batch sizes must be positive ints")
        return size

    return checked


def batch_size_fn(batch_size: BatchSize) -> Callable[[int], int]:
    """The validated batch index -> size function of an int, a sequence or a callable batch size."""
    return _size_fn(batch_size)


def _bounds(total: int, batch_size: BatchSize, drop_last: bool) -> Iterator[tuple[int, int, int]]:
    """(batch index, start, end) of each batch over ``total`` samples."""
    size_of = _size_fn(batch_size)
    start, i = 0, 0
    while start < total:
        size = size_of(i)
        end = min(start + size, total)
        if drop_last and end - start < size:
            return
        yield i, start, end
        start, i = end, i + 1


def _check_shard(rank: int, world_size: int) -> None:
    ok = isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size
    if not ok:
        raise PrunekitError(
            f"rank={rank!r}, world_size={world_size!r}: need world_size >= 1 and 0 <= rank < world_size"
        )


def shard_length(n: int, world_size: int) -> int:
    """Samples per rank: every rank gets ``n // world_size`` (the remainder, < world_size, is left out)."""
    return n // world_size


def epoch_order(
    n: int, *, shuffle: bool, seed: int = 0, epoch: int = 0, rank: int = 0, world_size: int = 1
) -> torch.Tensor:
    """Indices this rank visits in this epoch: a (seed, epoch)-seeded permutation, strided across ranks.

    All ranks share the permutation and take disjoint, equally long slices of it.
    """
    _check_shard(rank, world_size)
    if shuffle:
        g = torch.Generator().manual_seed(derive_seed("order", seed, epoch))
        order = torch.randperm(n, generator=g)
    else:
        order = torch.arange(n)
    if world_size > 1:
        order = order[: shard_length(n, world_size) * world_size][rank::world_size]
    return order


SPLITS = ("dataset", "batch")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise PrunekitError(f"split={split!r}: expected one of {', '.join(SPLITS)}")


def num_batches(
    dataset: Dataset | int,
    batch_size: BatchSize,
    *,
    drop_last: bool = False,
    rank: int = 0,
    world_size: int = 1,
    split: str = "dataset",
) -> int:
    """Batches :func:`iterate` yields per epoch for these settings (the same on every rank)."""
    _check_shard(rank, world_size)
    _check_split(split)
    n = dataset if isinstance(dataset, int) else len(dataset)
    total = shard_length(n, world_size) if split == "dataset" else n
    if isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size >= 1:
        return total // batch_size if drop_last else -(-total // batch_size)
    return sum(1 for _ in _bounds(total, batch_size, drop_last))


def iterate(
    dataset: Dataset,
    batch_size: BatchSize,
    *,
    shuffle: bool,
    seed: int = 0,
    epoch: int = 0,
    augment: str | Literal["default"] | None = "default",
    device: str | torch.device = "cpu",
    start_batch: int = 0,
    drop_last: bool = False,
    rank: int = 0,
    world_size: int = 1,
    dtype: torch.dtype = torch.float32,
    split: str = "dataset",
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield normalised ``(x, y)`` batches on ``device``: x ``dtype`` [B, C, H, W], y int64 [B].

    ``batch_size`` is per rank: an int, a sequence of sizes (one per batch, the last repeats) or a callable
    batch index -> size. ``augment="default"`` uses ``dataset.augment``; None turns augmentation off.
    ``start_batch=k`` skips the first k batches without touching their data (resume mid-epoch). With
    ``world_size > 1`` each rank gets a disjoint, equally sized shard of the same permutation. Images move to
    the device as uint8 (pinned for CUDA) and are augmented and normalised there.

    ``split="batch"`` shards batch by batch instead: ``batch_size`` is then the *global* batch, the batches
    are exactly those of one process (same permutation, same sizes, same count, no sample left out), and
    rank ``r`` gets samples ``r, r + world_size, ...`` of each, augmented with the crops and flips the
    single process draws for them. Together the ranks of a step hold exactly the single process's batch
    (what DistributedDataParallel needs to reproduce a one-process run); a rank whose slice of a batch would
    be empty (a batch smaller than ``world_size``) skips that batch.
    """
    recipe = dataset.augment if augment == "default" else augment
    if recipe is not None and recipe not in RECIPES:
        raise PrunekitError(f"unknown augmentation {recipe!r}; valid recipes: {', '.join(RECIPES)}, or None")
    if isinstance(start_batch, bool) or not isinstance(start_batch, int) or start_batch < 0:
        raise PrunekitError(f"start_batch={start_batch!r}: expected an int >= 0")
    _size_fn(batch_size)  # validate eagerly, before the first batch is requested
    _check_shard(rank, world_size)
    _check_split(split)
    by_batch = split == "batch" and world_size > 1
    order = epoch_order(
        len(dataset), shuffle=shuffle, seed=seed, epoch=epoch,
        rank=0 if by_batch else rank, world_size=1 if by_batch else world_size,
    )
    return _batches(
        dataset,
        order,
        batch_size,
        recipe,
        torch.device(device),
        start_batch,
        drop_last,
        (seed, epoch, 0 if by_batch else rank),
        dtype,
        (rank, world_size) if by_batch else None,
    )


def _batches(
    dataset: Dataset,
    order: torch.Tensor,
    batch_size: BatchSize,
    recipe: str | None,
    dev: torch.device,
    start_batch: int,
    drop_last: bool,
    key: tuple[int, int, int],
    dtype: torch.dtype,
    part: tuple[int, int] | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    images, labels = dataset.images, dataset.labels
    on_cpu = images.device.type == "cpu"
    pin = on_cpu and dev.type == "cuda"
    work = torch.float64 if dtype == torch.float64 else torch.float32
    mean = torch.tensor(dataset.mean, dtype=work)
    std = torch.tensor(dataset.std, dtype=work)
    scale = (1.0 / (255.0 * std)).view(1, -1, 1, 1).to(dev)
    shift = (mean / std).view(1, -1, 1, 1).to(dev)
    order = order.to(images.device)
    for i, start, end in _bounds(len(order), batch_size, drop_last):
        if i < start_batch:
            continue
        idx = order[start:end]
        if part is not None:  # split="batch": this rank's slice of the global batch
            idx = idx[part[0]::part[1]]
            if idx.numel() == 0:
                continue
        xb = images.index_select(0, idx)
        yb = labels.index_select(0, idx.to(labels.device))
        if pin:
            xb, yb = xb.pin_memory(), yb.pin_memory()
        xb = xb.to(dev, non_blocking=pin)
        yb = yb.to(dev, non_blocking=pin)
        if recipe is not None:
            g = torch.Generator().manual_seed(derive_seed("augment", *key, i))
            if part is None:
                xb = augment_batch(xb, recipe, g)
            else:  # draw for the whole global batch, as one process does, and keep this rank's samples
                offsets, flips = _draw_augment(end - start, g)
                xb = _apply_augment(xb, recipe, offsets[:, part[0]::part[1]], flips[part[0]::part[1]])
        x = xb.to(work).mul_(scale).sub_(shift)
        if x.dtype != dtype:
            x = x.to(dtype)
        yield x, yb
