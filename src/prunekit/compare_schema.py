"""The typed schema of a comparison config (``prunekit compare``): keys, types and bounds, one-line errors.

The method-specific rules (which target kinds a method supports, its own options) are checked by the
harness with the methods themselves; this schema is what an editor can complete (``prunekit schema compare``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field, ValidationError

from prunekit.config import MAX_EPOCHS, ExperimentConfig, Section, error_line, normalize
from prunekit.configio import short
from prunekit.errors import PrunekitError

KINDS = ("macs", "params")
MAX_SEEDS = 100
MAX_LATENCY_BATCH = 4096
MAX_LATENCY_ROUNDS = 10_000
MAX_THREADS = 1024


def _distinct(v: list[int]) -> list[int]:
    if len(set(v)) != len(v):
        raise ValueError("must be distinct")
    return v


def _target(v: Any) -> Any:
    """One ``{kind: fraction}`` pair (checked before the types, for one message that shows the form)."""
    ok = isinstance(v, dict) and len(v) == 1 and next(iter(v)) in KINDS
    f = next(iter(v.values())) if ok else None
    if not (ok and isinstance(f, int | float) and not isinstance(f, bool) and 0 < f < 1):
        raise ValueError("expected {macs: f} or {params: f} with 0 < f < 1 (the fraction of the dense network kept)")
    return v


def _base(v: dict[str, Any]) -> dict[str, Any]:
    if "method" in v:
        raise ValueError("base must not set a method; list methods under 'methods'")
    normalize(v, prefix="compare config: base")  # one line of its own (a PrunekitError passes through)
    return v


Fraction = Annotated[float, Field(gt=0, lt=1)]
Kind = Literal["macs", "params"]


def _default_targets() -> list[dict[Kind, float]]:
    return [{"macs": 0.5}]


def _default_methods() -> dict[str, dict[str, Any] | None]:
    return {"dense": {}}


class CompareConfig(Section):
    """A comparison grid: methods x targets x seeds on one experiment (``base``), at the same budget."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
    name: str | None = None
    out: str | None = None
    seeds: Annotated[list[Annotated[int, Field(ge=0, lt=2**63)]], Field(min_length=1, max_length=MAX_SEEDS),
                     AfterValidator(_distinct)] = Field(default_factory=lambda: [0])
    base: Annotated[dict[str, Any], AfterValidator(_base)] = Field(
        default_factory=dict, description="an experiment config without method (see: prunekit schema)")
    dense_epochs: Annotated[int, Field(ge=1, le=MAX_EPOCHS)] = 10
    budget_epochs: Annotated[int, Field(ge=1, le=MAX_EPOCHS)] = 10
    targets: Annotated[list[Annotated[dict[Kind, Fraction], BeforeValidator(_target)]],
                       Field(max_length=100)] = Field(default_factory=_default_targets)
    methods: Annotated[dict[str, dict[str, Any] | None], Field(min_length=1)] = Field(default_factory=_default_methods)
    latency: bool = True
    latency_batch: Annotated[int, Field(ge=1, le=MAX_LATENCY_BATCH)] = 64
    latency_rounds: Annotated[int, Field(ge=1, le=MAX_LATENCY_ROUNDS)] = 15
    latency_threads: Annotated[int, Field(ge=1, le=MAX_THREADS)] = 1
    latency_deployed: bool = True
    tolerance: Annotated[float, Field(gt=0, lt=1)] = 0.05


def check(cfg: Any) -> CompareConfig:
    """Validate a comparison config mapping against the schema; one ``compare config:`` line on error."""
    if not isinstance(cfg, dict):
        raise PrunekitError(f"compare config: must be a mapping of keys, got {short(cfg)}")
    try:
        return CompareConfig.model_validate(cfg)
    except ValidationError as exc:
        raise PrunekitError(error_line(exc, CompareConfig, "compare config")) from None


def schema() -> dict[str, Any]:
    """JSON Schema of a comparison config; ``base`` is described by the experiment schema."""
    out = CompareConfig.model_json_schema()
    exp = ExperimentConfig.model_json_schema()
    defs = out.setdefault("$defs", {})
    defs.update(exp.pop("$defs", {}))
    exp["properties"].pop("method", None)
    defs["ExperimentBase"] = exp
    out["properties"]["base"] = {"$ref": "#/$defs/ExperimentBase", "description": "an experiment config without "
                                                                                  "method"}
    return out
