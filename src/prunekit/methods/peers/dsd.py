"""DSD: Dense-Sparse-Dense training (Han et al., ICLR 2017, arXiv 1607.04381): IHT's nearest neighbour.

Schedule: (1) dense training; (2) sparse: keep the k largest-magnitude weights per layer (same ``O_k`` as
IHT's phase I), train with the others frozen at 0; (3) re-dense: restore the pruned connections from zero
and train the whole network at a lower learning rate (the paper: 1/10 of the original). DSD is a
regulariser: it **ends dense**, so its deliverable is a dense model (``FinalizeResult.sparse`` is False)
and its report counts the non-zeros it really has.

Where we follow the paper: one sparse phase between two dense ones, per-layer magnitude pruning,
re-dense from zero, re-dense lr = 0.1 x the run's lr (``redense_lr_scale``). Our choices: keep 0.5 by
default (the paper used 30-50% sparsity; 50% matches SDNN-2x), the budget is split in thirds (the
remainder goes to the first dense phase), and momentum is reset at the phase switches as in IHT (the
re-dense phase always starts with a fresh optimizer, since that is where its lower learning rate is set).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch

from prunekit.engine.stages import Stage
from prunekit.errors import PrunekitError
from prunekit.methods.api import MethodConfig, TrainingLoop
from prunekit.methods.checks import check_epochs, check_lr, check_phase_lrs
from prunekit.methods.phased import PhasedHardThresholding, SparsityConfig


@dataclass
class DSDConfig(SparsityConfig):
    """Budget of the sparse phase, phase lengths in epochs (``None`` = from the budget), lrs."""

    dense_epochs: int | None = None  # (1) dense
    sparse_epochs: int | None = None  # (2) sparse
    redense_epochs: int | None = None  # (3) re-dense
    dense_lr: float | None = None  # None = the run's optim.lr
    sparse_lr: float | None = None
    redense_lr: float | None = None  # absolute; None = redense_lr_scale x the run's optim.lr
    redense_lr_scale: float = 0.1

    def validate(self) -> None:
        super().validate()
        for key in ("dense_epochs", "sparse_epochs", "redense_epochs"):
            check_epochs(getattr(self, key), key, 1)
        check_phase_lrs(self, ("dense_lr", "sparse_lr"))
        check_lr(self.redense_lr, "redense_lr")
        check_lr(self.redense_lr_scale, "redense_lr_scale")


class DenseSparseDense(PhasedHardThresholding):
    """Dense -> sparse (magnitude top-k) -> re-dense from zero at a lower learning rate. Ends dense."""

    name: ClassVar[str] = "dsd"
    Config: ClassVar[type[MethodConfig]] = DSDConfig
    ends_sparse: ClassVar[bool] = False
    budget_knobs: ClassVar[Mapping[str, str]] = {}  # ends dense: no budget to aim at

    def stages(self, epochs: int) -> list[Stage]:
        """[dense, sparse, re-dense]; unset lengths share what the set ones leave, summing to ``epochs``."""
        c = self.config
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise PrunekitError(f"dsd: the epoch budget must be a positive integer, got {epochs!r}")
        given = {"dense": c.dense_epochs, "sparse": c.sparse_epochs, "redense": c.redense_epochs}
        free = [k for k, v in given.items() if v is None]
        left = epochs - sum(v for v in given.values() if v is not None)
        n = dict(given)
        if free:
            share = left // len(free)
            for k in free:
                n[k] = share
            n[free[0]] += left - share * len(free)
        if any(v is None or v < 1 for v in n.values()) or sum(n.values()) != epochs:
            raise PrunekitError(f"dsd: {epochs} epochs cannot hold dense {c.dense_epochs}, sparse "
                                f"{c.sparse_epochs}, re-dense {c.redense_epochs} (None = from the budget; each "
                                "phase needs >= 1 epoch); raise train.epochs or make the lengths add up to it")
        return self._remember([
            self._stage("dense", n["dense"], "dense", c.dense_lr, phase="dense"),
            self._stage("sparse", n["sparse"], "sparse", c.sparse_lr, phase="sparse"),
            # the re-dense phase always starts a fresh optimizer: that is where its lower lr takes effect
            self._stage("redense", n["redense"], "dense", c.redense_lr, reset=True, phase="redense"),
        ])

    def configure_optimizers(self, trainer: TrainingLoop, lr: float) -> list[torch.optim.Optimizer] | None:
        """In the re-dense phase without an absolute ``redense_lr``: the run's SGD at ``scale x lr``."""
        stage = trainer.stage
        scale = self.config.redense_lr_scale
        if stage is None or stage.info.get("phase") != "redense" or stage.lr is not None or math.isclose(scale, 1):
            return None
        from prunekit.engine.stages import split_decay

        o = trainer.optim_cfg
        return [torch.optim.SGD(split_decay(trainer.raw_model), lr=lr * scale, momentum=o.momentum,
                                nesterov=o.nesterov and o.momentum > 0, weight_decay=o.weight_decay)]


__all__ = ["DSDConfig", "DenseSparseDense"]
