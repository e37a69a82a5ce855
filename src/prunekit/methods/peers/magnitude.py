"""One-shot magnitude pruning + sparse fine-tuning (Han et al. 2015, one prune step): IHT's baseline.

Schedule: train dense, keep the k largest-magnitude weights of each layer once (the same ``O_k`` as IHT's
phase I), then fine-tune the sparse network with the other weights frozen at exactly 0 until the end. It is
IHT with zero cycles; the IHT paper argues that alternating with dense phases beats it at the same size.
For a fair comparison give it the same total epochs as the IHT run (``stages(epochs)`` spends all of them).

Our choices: by default the budget is split in half (dense, then sparse; the odd epoch goes to the sparse
fine-tune); ``dense_epochs: 0`` prunes at the start (a ``pretrained`` model). Budget, layers, scope, masks
and optimizer handling are shared with :mod:`prunekit.methods.iht`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from prunekit.engine.stages import Stage
from prunekit.errors import PrunekitError
from prunekit.methods.api import MethodConfig
from prunekit.methods.checks import check_epochs, check_phase_lrs
from prunekit.methods.phased import PhasedHardThresholding, SparsityConfig


@dataclass
class MagnitudeConfig(SparsityConfig):
    """Budget (``target`` / ``keep``), phase lengths in epochs (``None`` = from the budget), lrs."""

    dense_epochs: int | None = None  # before the one prune; default epochs // 2
    sparse_epochs: int | None = None  # fine-tuning after it; default the rest of the budget
    dense_lr: float | None = None  # None = the run's optim.lr
    sparse_lr: float | None = None

    def validate(self) -> None:
        super().validate()
        check_epochs(self.dense_epochs, "dense_epochs", 0)
        check_epochs(self.sparse_epochs, "sparse_epochs", 1)
        check_phase_lrs(self, ("dense_lr", "sparse_lr"))


class OneShotMagnitude(PhasedHardThresholding):
    """Dense training, one magnitude prune (per layer top-k), sparse fine-tuning."""

    name: ClassVar[str] = "magnitude"
    Config: ClassVar[type[MethodConfig]] = MagnitudeConfig
    ends_sparse: ClassVar[bool] = True
    from_trained_options: ClassVar[Mapping[str, Any]] = {"dense_epochs": 0}

    def stages(self, epochs: int) -> list[Stage]:
        """[dense (d epochs), sparse (epochs - d)]; the lengths add up to ``epochs``."""
        c = self.config
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise PrunekitError(f"magnitude: the epoch budget must be a positive integer, got {epochs!r}")
        d = c.dense_epochs
        s = c.sparse_epochs
        if d is None:
            d = epochs - s if s is not None else epochs // 2
        if s is None:
            s = epochs - d
        if d < 0 or s < 1 or d + s != epochs:
            raise PrunekitError(f"magnitude: dense_epochs {c.dense_epochs} + sparse_epochs {c.sparse_epochs} "
                                f"must add up to the budget of {epochs} epochs (sparse >= 1); leave one unset")
        return self._remember([self._stage("dense", d, "dense", c.dense_lr, phase="dense"),
                               self._stage("sparse", s, "sparse", c.sparse_lr, phase="sparse")])


__all__ = ["MagnitudeConfig", "OneShotMagnitude"]
