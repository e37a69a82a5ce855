"""The method contract (re-exported from :mod:`prunekit.methods.api`, where it is declared) and the shared
schedule of the penalty-then-prune peers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from prunekit.engine.stages import Stage
from prunekit.errors import PrunekitError
from prunekit.methods.api import C, FinalizeResult, MethodConfig, PruningMethod, TrainingLoop


class PenaltyThenPrune(PruningMethod[C]):
    """Shared schedule of the "train with a sparsity penalty, prune once, fine-tune" peers (Network
    Slimming, Torch-Pruning's BN-scale pruner): a ``sparse`` stage, then, when ``config.finetune_epochs``
    is set, the model is pruned and a ``finetune`` stage follows; otherwise :meth:`finalize` prunes.

    Subclasses implement :meth:`prune` (which sets ``self.report``) and apply their penalty only while
    :meth:`penalty_active` is true. Their ``Config`` needs ``finetune_epochs`` and ``finetune_lr``.
    """

    budget_knobs: ClassVar[Mapping[str, str]] = {"macs": "target_macs"}

    def __init__(self, config: C | Mapping[str, Any] | None = None, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        self.pruned = False
        self.report: dict[str, Any] = {}

    @classmethod
    def default_options(cls, epochs: int) -> dict[str, Any]:
        """A quarter of the budget fine-tunes after the prune, as in these peers' papers."""
        return {"finetune_epochs": max(1, epochs // 4)}

    def prune(self, model: nn.Module, example_inputs: torch.Tensor) -> FinalizeResult:
        """Remove the structures the penalty made unimportant; the smaller model and ``self.report``."""
        raise NotImplementedError

    def stages(self, epochs: int) -> list[Stage]:
        out = [Stage("sparse", epochs, kind="sparse")]
        ft = self.config.finetune_epochs  # type: ignore[attr-defined]
        if ft:
            out.append(Stage("finetune", ft, kind="finetune", lr=self.config.finetune_lr))  # type: ignore[attr-defined]
        return out

    def penalty_active(self, trainer: TrainingLoop) -> bool:
        """True during the sparse stage, before the model has been pruned."""
        stage = trainer.stage
        return not self.pruned and (stage is None or stage.kind != "finetune")

    def on_stage_end(self, trainer: TrainingLoop, stage: Stage) -> None:
        if stage.kind == "sparse" and self.config.finetune_epochs and not self.pruned:  # type: ignore[attr-defined]
            example = trainer.example_inputs
            if example is None:
                raise PrunekitError(f"{self.name}: the loop gives no example_inputs to prune with; set "
                                    "LoopState(example_inputs=...) in your own loop")
            trainer.replace_model(self.prune(trainer.raw_model, example).model)

    def finalize(self, model: nn.Module, example_inputs: torch.Tensor) -> FinalizeResult:
        if not self.pruned:
            model = self.prune(model, example_inputs).model
        return FinalizeResult(getattr(model, "module", model), sparse=False, report=dict(self.report))

    def state_dict(self) -> dict[str, Any]:
        return {"pruned": self.pruned, "report": self.report}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pruned = bool(state.get("pruned", False))
        self.report = dict(state.get("report", {}))


__all__ = ["FinalizeResult", "MethodConfig", "PenaltyThenPrune", "PruningMethod", "TrainingLoop"]
