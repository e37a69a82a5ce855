"""The method contract: everything a pruning method may declare, and everything a training loop offers it.

A method is a :class:`PruningMethod` (a :class:`~prunekit.engine.Callback`) generic over its hyperparameter
dataclass ``Config``. Its members, each with a declared default, so that the Trainer, ``prunekit compare``
and a user's own loop call them without looking anything up by name:

=============================  =====================================================================
``name``, ``Config``           registry name; hyperparameters with the paper's defaults, checked by
                               ``Config.validate()`` in ``__init__`` whether given as object or mapping
``stages(epochs)``             the schedule for a budget of ``epochs`` (default: one plain stage)
``prepare(model, example)``    transform the network before training, given one example input batch so that
                               the shared analysis can trace any network (default: as is)
``configure_optimizers``       its own optimizer(s) (default: None, the loop's momentum SGD)
``batch_size_schedule``        its batch sizes (default: None, the loop's)
hooks ``on_*``                 the callback hooks (default: no-ops), see :mod:`prunekit.engine.callbacks`
``finalize(model, example)``   the deliverable, a :class:`FinalizeResult` (default: unchanged)
``starts_from_scratch``        True when the paper trains from a random initialisation
``ends_sparse``                True when the deliverable is a sparse (masked) network, not a smaller one
``budget_knobs``               target kind (``"macs"`` / ``"params"`` / ``"latency"``) -> the option that sets it
``target_options(...)``        the options for a budget target (default: ``{budget_knobs[kind]: fraction}``)
``from_trained_options``       options that skip its own dense phase when it starts from a trained network
``default_options(epochs)``    options a harness uses for a budget of ``epochs`` (default: none)
``state_dict`` / ``state_key`` its resumable state, stored in checkpoints under its name
=============================  =====================================================================

:class:`TrainingLoop` (a ``typing.Protocol``) is what every hook receives: the built-in Trainer and
:class:`~prunekit.engine.LoopState` (a user's own loop) both satisfy it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

import torch
from torch import nn

from prunekit.engine.callbacks import BatchSize, Callback, LoopState, TrainingLoop
from prunekit.engine.stages import Stage
from prunekit.errors import PrunekitError

KINDS = ("macs", "params", "latency")  # latency: {latency: f, runtime, batch, threads} (metrics.latency_model)


@dataclass
class FinalizeResult:
    """What a method delivers (from ``finalize`` and ``prune``): the model, whether it is meant to be stored
    sparse, and a report."""

    model: nn.Module
    sparse: bool = False
    report: dict[str, Any] = field(default_factory=dict)


@dataclass
class MethodConfig:
    """Base of every method's hyperparameters; subclasses add fields with the paper's defaults."""

    def validate(self) -> None:
        """Check the values (raise :class:`~prunekit.errors.PrunekitError` in one line); run by every
        :class:`PruningMethod` constructor, whether the config came as an object or a mapping."""


C = TypeVar("C", bound=MethodConfig)


class PruningMethod(Callback, Generic[C]):
    """Base class of every method. Subclasses set ``name`` and ``Config`` and override what they need."""

    name: ClassVar[str] = "base"
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    #: True when the paper trains from a random initialisation (SSS, SGHT); False when it starts from a
    #: trained dense network (IHT, Network Trimming, L1-filter). Drivers (demo, compare) read it.
    starts_from_scratch: ClassVar[bool] = False
    #: True when ``finalize`` delivers a sparse network (stored as such) rather than a smaller dense one.
    ends_sparse: ClassVar[bool] = False
    #: target kind ("macs" / "params") -> the option of ``Config`` that sets that budget
    budget_knobs: ClassVar[Mapping[str, str]] = {}
    #: options that skip the method's own dense phase when it starts from a trained network
    from_trained_options: ClassVar[Mapping[str, Any]] = {}
    #: alias of ``starts_from_scratch`` (its earlier name), kept in step by ``__init_subclass__``
    from_scratch: ClassVar[bool] = False

    config: C

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "from_scratch" in cls.__dict__ and "starts_from_scratch" not in cls.__dict__:
            cls.starts_from_scratch = bool(cls.__dict__["from_scratch"])
        cls.from_scratch = cls.starts_from_scratch

    def __init__(self, config: C | Mapping[str, Any] | None = None, **overrides: Any) -> None:
        if config is None or isinstance(config, Mapping):
            values = dict(config or {})
            values.update(overrides)
            cfg = self.config_from_dict(values)
        else:
            if not isinstance(config, self.Config):
                raise PrunekitError(f"method {self.name!r}: config must be a {self.Config.__name__} or a mapping, "
                                    f"got {type(config).__name__}")
            unknown = sorted(set(overrides) - set(self.config_keys()))
            if unknown:
                raise PrunekitError(f"method {self.name!r} has no option {', '.join(map(repr, unknown))}; "
                                    f"valid options: {', '.join(self.config_keys())}")
            cfg = dataclasses.replace(config, **overrides) if overrides else config
            cfg.validate()
        self.config = cfg  # type: ignore[assignment]

    @property
    def state_key(self) -> str:
        return self.name

    # -- configuration ---------------------------------------------------------------------------
    @classmethod
    def config_keys(cls) -> list[str]:
        """Names of the hyperparameters this method accepts."""
        return [f.name for f in dataclasses.fields(cls.Config)]

    @classmethod
    def config_from_dict(cls, values: Mapping[str, Any]) -> MethodConfig:
        """Build and validate ``Config`` from a mapping, rejecting unknown keys with the list of valid ones."""
        valid = cls.config_keys()
        unknown = sorted(set(values) - set(valid))
        if unknown:
            raise PrunekitError(f"method {cls.name!r} has no option {', '.join(map(repr, unknown))}; "
                                f"valid options: {', '.join(valid)}")
        try:
            cfg = cls.Config(**values)
        except (TypeError, ValueError) as exc:
            raise PrunekitError(f"method {cls.name!r}: {exc}") from None
        cfg.validate()
        return cfg

    @classmethod
    def target_options(cls, kind: str, fraction: float, model: nn.Module, options: Mapping[str, Any]
                       ) -> dict[str, Any]:
        """The options that aim this method at keeping ``fraction`` of the dense ``kind`` (macs / params) of
        ``model``; ``options`` are the others already chosen. Refuses a kind it has no knob for."""
        if kind not in cls.budget_knobs:
            raise PrunekitError(f"method {cls.name!r} has no {kind} budget (it has: "
                                f"{', '.join(sorted(cls.budget_knobs)) or 'none'})")
        if kind == "latency":
            return cls.latency_options({"latency": float(fraction)}, options)
        return {cls.budget_knobs[kind]: float(fraction)}

    @classmethod
    def latency_options(cls, spec: Mapping[str, Any], options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The options that aim this method at a latency target ``spec`` (``{latency: f, runtime, batch,
        threads, round_to, ...}``, checked, defaults filled in). A ``round_to`` among the other ``options``
        becomes the target's snap unless ``spec`` sets its own."""
        if "latency" not in cls.budget_knobs:
            raise PrunekitError(f"method {cls.name!r} has no latency budget (it has: "
                                f"{', '.join(sorted(cls.budget_knobs)) or 'none'})")
        spec = dict(spec)
        if options and options.get("round_to") not in (None, 1) and spec.get("round_to") is None:
            spec["round_to"] = options["round_to"]
        return {cls.budget_knobs["latency"]: latency_option(cls.name, spec)}

    @classmethod
    def default_options(cls, epochs: int) -> dict[str, Any]:
        """Options a comparison harness uses for a budget of ``epochs`` (a config's own override them)."""
        return {}

    # -- schedule and deliverable ------------------------------------------------------------------
    def stages(self, epochs: int) -> list[Stage]:
        """The method's training schedule for a budget of ``epochs`` (default: one plain stage)."""
        return [Stage("train", epochs)]

    def prepare(self, model: nn.Module, example_inputs: Any = None) -> nn.Module:
        """Transform the network once before training (SSS inserts its scaling factors), in place or as a
        new object the loop then trains (default: as is). ``example_inputs``: one input batch as the loop feeds
        the model; every loop passes it (the Trainer, the adapters, the README's own loop), since a network
        ``torch.fx`` cannot trace (HF models) is analysed by running it."""
        return model

    def finalize(self, model: nn.Module, example_inputs: torch.Tensor) -> FinalizeResult:
        """Turn the trained network into the deliverable (default: unchanged)."""
        return FinalizeResult(model, sparse=self.ends_sparse)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"


def latency_option(method: str, value: Any, *, macs_budget: Any = None, params_budget: Any = None
                   ) -> dict[str, Any] | None:
    """A method's ``latency`` option, normalized (``0.5`` or a mapping -> the full target mapping, the
    runtime resolved: :func:`prunekit.config.latency_target`) and checked; None stays None. A latency target
    beside a MACs / params budget is refused (one budget per run)."""
    if value is None:
        return None
    from prunekit.config import latency_target

    if macs_budget is not None or params_budget is not None:
        raise PrunekitError(f"method {method!r}: give a latency target or a macs / params budget, not both")
    return latency_target(value, f"method {method!r}: latency")


__all__ = ["KINDS", "BatchSize", "FinalizeResult", "LoopState", "MethodConfig", "PruningMethod", "TrainingLoop",
           "latency_option"]
