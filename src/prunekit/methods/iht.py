"""IHT: training Skinny Deep Neural Networks with iterative hard thresholding (Jin, Yuan, Feng, Yan 2016).

Algorithm (arXiv 1607.05423; paper symbols in brackets)::

    train the dense network for s1 epochs ("warm-up"; or start from a trained model)       [s1]
    repeat C times:                                                                          [C]
        Phase I  - hard thresholding: W <- O_k(W); keep the k largest |w| per layer          [O_k, supp(W, k)]
                   train s2 epochs; the other weights are frozen at exactly 0                [s2]
        Phase II - re-activate the frozen connections (they restart from 0) and train
                   the whole network s1 epochs                                               [s1]
    Phase I once more, so the delivered network meets the budget k exactly

SDNN-2x keeps half of each layer's weights (``target: "2x"``), SDNN-4x a quarter (``"4x"``).

Where we follow the paper: the two alternating phases; per-layer top-k by magnitude (``O_k``); frozen
connections re-activated from zero; the schedule ends with phase I.

Where we chose (the paper gives no code and the numbers below are not verified, see
``../shared/research/papers.md``):

- Which weights count: the ``weight`` of every Conv and Linear layer (the classifier included) unless
  ``layers`` / ``exclude`` say otherwise. Biases and BatchNorm parameters are never thresholded and are
  reported separately (they are < 1% of the parameters of the paper's networks).
- ``k = floor(keep * n + 0.5)``, at least 1 per layer, so a layer is never cut off entirely.
  ``scope: global`` ranks all selected weights together (one top-K over the pool; layers with a
  ``layer_keep`` override keep their own k). Ties at the threshold are broken by ``torch.topk``, so the
  mask holds exactly k entries.
- Phase lengths: the ones not set are filled from the epoch budget (see :meth:`IHT.stages`); 2 cycles by
  default. Learning rate: each phase is a Stage whose lr (``warmup_lr``, ``sparse_lr``, ``dense_lr``,
  ``final_lr``; default the run's ``optim.lr``) follows the run's schedule within the phase.
- Optimizer momentum is reset at every phase switch (SparseML's AC/DC idiom; ``reset_momentum``).
- Frozen weights are held at zero three ways, so no optimizer (momentum, Nesterov, weight decay, Adam)
  can move them: their gradient is zeroed before the step, their optimizer state (momentum buffer) is
  zeroed when the phase starts, and they are re-zeroed in place right after every step. The masks live in
  a :class:`prunekit.surgery.MaskSet` (state, checkpoints, the exact ``+0.0`` at phase start and at
  finalize); per step we multiply by a cached 1.0/0.0 copy of each mask, which on CPU is ~30x faster than
  a boolean ``masked_fill_`` (a frozen weight may then read ``-0.0`` during training; finalize writes
  ``+0.0`` so the sparse file stores none of them). No forward hooks: two elementwise passes per step.

Works in the Trainer (phases are Stages of kind ``"dense"`` / ``"sparse"``) and in a user's own loop, through
the one sequence of calls every method shares (README.md, "Library"; ``LoopState.begin_stage`` enters each
phase). The final network is sparse: save it with :func:`prunekit.surgery.save_sparse`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from prunekit.engine.stages import Stage
from prunekit.errors import PrunekitError
from prunekit.methods.api import MethodConfig
from prunekit.methods.checks import check_epochs, check_phase_lrs
from prunekit.methods.phased import (
    PhasedHardThresholding,
    SparsityConfig,
    hard_threshold_masks,
    keep_count,
    parse_target,
    prunable_layers,
    topk_mask,
)


@dataclass
class IHTConfig(SparsityConfig):
    """IHT hyperparameters. Phase lengths in epochs; ``None`` = filled from the budget (see stages)."""

    cycles: int = 2  # C: number of (phase I, phase II) pairs before the final phase I
    warmup_epochs: int | None = None  # dense training before the first threshold (0 with a trained model)
    sparse_epochs: int | None = None  # s2: phase I (sparse fine-tuning) length
    dense_epochs: int | None = None  # s1: phase II (dense re-training) length
    final_epochs: int | None = None  # the last phase I; default s2
    warmup_lr: float | None = None  # learning rate of each phase; None = the run's optim.lr
    sparse_lr: float | None = None
    dense_lr: float | None = None
    final_lr: float | None = None  # default sparse_lr

    def validate(self) -> None:
        super().validate()
        check_epochs(self.cycles, "cycles", 0, optional=False)
        check_epochs(self.warmup_epochs, "warmup_epochs", 0)
        check_epochs(self.sparse_epochs, "sparse_epochs", 1)
        check_epochs(self.dense_epochs, "dense_epochs", 1)
        check_epochs(self.final_epochs, "final_epochs", 1)
        check_phase_lrs(self, ("warmup_lr", "sparse_lr", "dense_lr", "final_lr"))


class IHT(PhasedHardThresholding):
    """Iterative hard thresholding for Skinny DNNs: [dense warm-up] + C x [phase I, phase II] + phase I."""

    name: ClassVar[str] = "iht"
    Config: ClassVar[type[MethodConfig]] = IHTConfig
    ends_sparse: ClassVar[bool] = True
    from_trained_options: ClassVar[Mapping[str, Any]] = {"warmup_epochs": 0}

    def phase_lengths(self, epochs: int) -> dict[str, int]:
        """Epochs of warm-up, s2, s1 and the final phase I for a budget of ``epochs``.

        Unset s2 and s1 get u = epochs // (2C + 2) each (2C + 1 phases when warmup_epochs is 0), the final
        phase defaults to s2, and the warm-up takes what is left (or, when the warm-up is set, the final
        phase does). The total always equals ``epochs``; a budget that cannot hold the phases is an error.
        """
        c = self.config
        C = c.cycles
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise PrunekitError(f"iht: the epoch budget must be a positive integer, got {epochs!r}")
        n_phases = 2 * C + 1 + (0 if c.warmup_epochs == 0 else 1)
        u = epochs // n_phases
        s2 = c.sparse_epochs if c.sparse_epochs is not None else u
        s1 = c.dense_epochs if c.dense_epochs is not None else u
        if C == 0:
            s1 = 0
        fixed_final = c.final_epochs
        warm, final = c.warmup_epochs, fixed_final
        if warm is None:
            final = final if final is not None else s2
            warm = epochs - C * (s1 + s2) - final
        elif final is None:
            final = epochs - warm - C * (s1 + s2)
        lengths = {"warmup": warm, "sparse": s2, "dense": s1, "final": final}
        total = warm + C * (s1 + s2) + final
        if min(s2, final) < 1 or (C > 0 and s1 < 1) or warm < 0 or total != epochs:
            raise PrunekitError(
                f"iht: {epochs} epochs cannot hold warm-up {c.warmup_epochs}, {C} cycles of sparse "
                f"{c.sparse_epochs} + dense {c.dense_epochs} and final {fixed_final} (None = from the budget; "
                f"each phase needs >= 1 epoch, so at least {n_phases}); raise train.epochs or set the phase lengths "
                "so they add up to it")
        return lengths

    def stages(self, epochs: int) -> list[Stage]:
        """The IHT schedule: warmup (dense) + C x [sparse (phase I), dense (phase II)] + final sparse."""
        c, n = self.config, self.phase_lengths(epochs)
        out = [self._stage("warmup", n["warmup"], "dense", c.warmup_lr, phase="warmup")]
        for i in range(1, c.cycles + 1):
            out.append(self._stage(f"sparse{i}", n["sparse"], "sparse", c.sparse_lr, phase="I", cycle=i))
            out.append(self._stage(f"dense{i}", n["dense"], "dense", c.dense_lr, phase="II", cycle=i))
        final_lr = c.final_lr if c.final_lr is not None else c.sparse_lr
        out.append(self._stage("final", n["final"], "sparse", final_lr, phase="I", cycle=c.cycles + 1))
        return self._remember(out)


# re-exported for callers of the earlier layout (the machinery lives in phased.py)
__all__ = ["IHT", "IHTConfig", "PhasedHardThresholding", "SparsityConfig", "hard_threshold_masks", "keep_count",
           "parse_target", "prunable_layers", "topk_mask"]
