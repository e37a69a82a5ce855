"""prunekit.data: named datasets held in memory as uint8 tensors, and fast deterministic mini-batches.

>>> from prunekit import data
>>> train = data.load("digits", "train")                # or "mnist", "cifar10", "imagefolder", ...
>>> for x, y in data.iterate(train, 64, shuffle=True, epoch=0):
...     pass                                            # x: normalised float [B, C, H, W]; y: int64 [B]

Files are untrusted input (headers, counts, sizes and labels are checked; nothing is unpickled), decoded
arrays are cached as ``.npz`` so later loads are fast, and batch order and augmentation depend only on
(seed, epoch, batch index), so training can resume mid-epoch exactly.
"""

from prunekit.data.dataset import Dataset
from prunekit.data.loaders import describe, load, names, search_dirs
from prunekit.data.pipeline import RECIPES, augment_batch, derive_seed, epoch_order, iterate, num_batches

__all__ = [
    "RECIPES",
    "Dataset",
    "augment_batch",
    "derive_seed",
    "describe",
    "epoch_order",
    "iterate",
    "load",
    "names",
    "num_batches",
    "search_dirs",
]
