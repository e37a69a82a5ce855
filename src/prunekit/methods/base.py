"""The method plug-in interface shared by every pruning method and peer baseline.

A method is a :class:`~prunekit.engine.Callback` with a hyperparameter dataclass (``Config``, the paper's
defaults), a schedule (:meth:`PruningMethod.stages`), and an end step (:meth:`PruningMethod.finalize`) that
turns the trained network into the deliverable (structures removed for real, or a sparse model). Optional
hooks the engine looks for: ``prepare(model)`` (e.g. insert scaling factors), ``configure_optimizers(trainer,
lr)`` (e.g. SSS's APG for the factors) and ``batch_size_schedule(trainer)`` (SGHT's growing batches).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from prunekit.engine.callbacks import Callback
from prunekit.engine.stages import Stage
from prunekit.errors import PrunekitError


@dataclass
class FinalizeResult:
    """What a method delivers: the final model, whether it is meant to be stored sparse, and a report."""

    model: nn.Module
    sparse: bool = False
    report: dict[str, Any] = field(default_factory=dict)


@dataclass
class MethodConfig:
    """Base of every method's hyperparameters; subclasses add fields with the paper's defaults."""


class PruningMethod(Callback):
    """Base class. Subclasses set ``name``, ``Config`` and override the hooks they need."""

    name: ClassVar[str] = "base"
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    #: True when the paper trains from a random initialisation (SSS, SGHT); False when it starts from a
    #: trained dense network (IHT, Network Trimming, L1-filter). Drivers (demo, comparison harness) use it.
    from_scratch: ClassVar[bool] = False

    def __init__(self, config: MethodConfig | Mapping[str, Any] | None = None, **overrides: Any) -> None:
        if config is None or isinstance(config, Mapping):
            values = dict(config or {})
            values.update(overrides)
            config = self.config_from_dict(values)
        elif overrides:
            config = dataclasses.replace(config, **overrides)
        self.config = config

    @classmethod
    def config_keys(cls) -> list[str]:
        """Names of the hyperparameters this method accepts."""
        return [f.name for f in dataclasses.fields(cls.Config)]

    @classmethod
    def config_from_dict(cls, values: Mapping[str, Any]) -> MethodConfig:
        """Build ``Config`` from a mapping, rejecting unknown keys with the list of valid ones."""
        valid = cls.config_keys()
        unknown = sorted(set(values) - set(valid))
        if unknown:
            raise PrunekitError(f"method {cls.name!r} has no option {', '.join(map(repr, unknown))}; "
                                f"valid options: {', '.join(valid)}")
        try:
            cfg = cls.Config(**values)
        except (TypeError, ValueError) as exc:
            raise PrunekitError(f"method {cls.name!r}: {exc}") from None
        validate = getattr(cfg, "validate", None)
        if validate is not None:
            validate()
        return cfg

    # -- schedule and deliverable ---------------------------------------------------------------
    def stages(self, epochs: int) -> list[Stage]:
        """The method's training schedule for a budget of ``epochs`` (default: one plain stage)."""
        return [Stage("train", epochs)]

    def finalize(self, model: nn.Module, example_inputs: torch.Tensor) -> FinalizeResult:
        """Turn the trained network into the deliverable (default: unchanged)."""
        return FinalizeResult(model)

    # -- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"


class PenaltyThenPrune(PruningMethod):
    """Shared schedule of the "train with a sparsity penalty, prune once, fine-tune" peers (Network
    Slimming, Torch-Pruning's BN-scale pruner): a ``sparse`` stage, then, when ``config.finetune_epochs``
    is set, the model is pruned and a ``finetune`` stage follows; otherwise :meth:`finalize` prunes.

    Subclasses implement :meth:`prune` (which sets ``self.report``) and apply their penalty only while
    :meth:`penalty_active` is true. Their ``Config`` needs ``finetune_epochs`` and ``finetune_lr``.
    """

    def __init__(self, config: MethodConfig | Mapping[str, Any] | None = None, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        self.pruned = False
        self.report: dict[str, Any] = {}

    def prune(self, model: nn.Module, example_inputs: torch.Tensor) -> nn.Module:
        """Remove the structures the penalty made unimportant; returns the smaller model."""
        raise NotImplementedError

    def stages(self, epochs: int) -> list[Stage]:
        out = [Stage("sparse", epochs, kind="sparse")]
        ft = self.config.finetune_epochs  # type: ignore[attr-defined]
        if ft:
            out.append(Stage("finetune", ft, kind="finetune", lr=self.config.finetune_lr))  # type: ignore[attr-defined]
        return out

    def penalty_active(self, trainer: Any) -> bool:
        """True during the sparse stage, before the model has been pruned."""
        stage = getattr(trainer, "stage", None)
        return not self.pruned and (stage is None or stage.kind != "finetune")

    def on_stage_end(self, trainer: Any, stage: Stage) -> None:
        if stage.kind == "sparse" and self.config.finetune_epochs and not self.pruned:  # type: ignore[attr-defined]
            trainer.replace_model(self.prune(trainer.raw_model, trainer.example_inputs))

    def finalize(self, model: nn.Module, example_inputs: torch.Tensor) -> FinalizeResult:
        if not self.pruned:
            model = self.prune(model, example_inputs)
        return FinalizeResult(getattr(model, "module", model), sparse=False, report=dict(self.report))

    def state_dict(self) -> dict[str, Any]:
        return {"pruned": self.pruned, "report": self.report}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pruned = bool(state.get("pruned", False))
        self.report = dict(state.get("report", {}))
