"""The in-memory record every loader returns: uint8 images, int64 labels, and how to normalise them."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from prunekit.errors import PrunekitError


@dataclass
class Dataset:
    """A whole split held in CPU memory as compact uint8 images (normalisation happens per batch).

    ``mean``/``std`` are per-channel on the 0..1 scale and are the same for every split of a dataset, so
    train and test are normalised alike. ``augment`` names the default augmentation recipe for training
    (``"crop_flip"`` for CIFAR-like data; ``None`` for digits/MNIST and for every test split).
    """

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: str | None = None

    def __post_init__(self) -> None:
        im, lab = self.images, self.labels
        if not isinstance(im, torch.Tensor) or im.dtype != torch.uint8 or im.dim() != 4:
            raise PrunekitError(f"dataset {self.name!r}: images must be a uint8 tensor [N, C, H, W]")
        if not isinstance(lab, torch.Tensor) or lab.dtype != torch.int64 or lab.dim() != 1:
            raise PrunekitError(f"dataset {self.name!r}: labels must be an int64 tensor [N]")
        if self.images.shape[0] != self.labels.shape[0]:
            raise PrunekitError(
                f"dataset {self.name!r}: {self.images.shape[0]} images but {self.labels.shape[0]} labels"
            )
        self.classes = [str(c) for c in self.classes]
        self.mean = tuple(float(m) for m in self.mean)
        self.std = tuple(float(s) for s in self.std)
        channels = self.images.shape[1]
        if len(self.mean) != channels or len(self.std) != channels:
            raise PrunekitError(f"dataset {self.name!r}: mean/std need one value per channel ({channels})")
        if any(s <= 0 for s in self.std):
            raise PrunekitError(f"dataset {self.name!r}: std values must be positive")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, n={len(self)}, input_shape={self.input_shape}, "
            f"num_classes={self.num_classes}, augment={self.augment!r})"
        )

    @property
    def num_classes(self) -> int:
        """Number of classes (the length of ``classes``, which may exceed the largest label present)."""
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Shape of one image, (C, H, W)."""
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    def sample(self, n: int, seed: int = 0) -> Dataset:
        """A seeded random subset of ``n`` samples (in their original order).

        Unlike ``subset(n)`` (the first ``n``), this is safe on files sorted by class, such as the CIFAR-10
        image-folder archive, where the first 5,000 training images are all airplanes.
        """
        n = int(n)
        if n < 0:
            raise PrunekitError(f"sample: n must be >= 0, got {n}")
        if n >= len(self):
            return self
        g = torch.Generator().manual_seed(int(seed))
        idx = torch.randperm(len(self), generator=g)[:n].sort().values
        return self.subset(idx)

    def subset(self, n_or_indices: int | Sequence[int] | np.ndarray | torch.Tensor) -> Dataset:
        """The first ``n`` samples (clamped to the length), or the samples at the given indices, in order."""
        if isinstance(n_or_indices, (int, np.integer)) and not isinstance(n_or_indices, bool):
            n = int(n_or_indices)
            if n < 0:
                raise PrunekitError(f"subset: n must be >= 0, got {n}")
            n = min(n, len(self))
            return dataclasses.replace(self, images=self.images[:n], labels=self.labels[:n])
        idx = torch.as_tensor(n_or_indices)
        if idx.numel() == 0:
            idx = idx.long().reshape(0)
        if idx.dtype == torch.bool:
            if idx.shape != (len(self),):
                raise PrunekitError(
                    f"subset: a boolean mask needs length {len(self)}, not {tuple(idx.shape)}"
                )
            idx = idx.nonzero().flatten()
        if idx.is_floating_point() or idx.dim() != 1:
            raise PrunekitError("subset: expected an int or a 1-D sequence of integer indices")
        idx = idx.long()
        if idx.numel() and (int(idx.min()) < -len(self) or int(idx.max()) >= len(self)):
            raise PrunekitError(f"subset: index out of range for a dataset of {len(self)} samples")
        return dataclasses.replace(self, images=self.images[idx], labels=self.labels[idx])
