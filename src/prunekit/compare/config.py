"""Comparison configs: the typed schema (keys, types, bounds; ``prunekit schema compare``), the
method rules checked with the methods themselves, and the one YAML + ``--set`` loader."""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field, ValidationError

from prunekit import config as pconfig
from prunekit import configio
from prunekit.config import MAX_EPOCHS, ExperimentConfig, Section, error_line, normalize
from prunekit.configio import short
from prunekit.errors import PrunekitError

KINDS = ("macs", "params", "latency")
RESERVED = ("kinds", "start", "sweep")  # keys of a method's entry that are not its options
MAX_SEEDS = 100
MAX_LATENCY_BATCH = 4096
MAX_LATENCY_ROUNDS = 10_000
MAX_THREADS = 1024


def _distinct(v: list[int]) -> list[int]:
    if len(set(v)) != len(v):
        raise ValueError("must be distinct")
    return v


LATENCY_TARGET_KEYS = ("latency", "runtime", "batch", "threads", "round_to", "tol")


def _target(v: Any) -> Any:
    """One ``{kind: fraction}`` pair, or ``{latency: f}`` with optional ``runtime`` / ``batch`` / ``threads`` /
    ``round_to`` (checked before the types, for one message that shows the form)."""
    form = ("expected {macs: f}, {params: f} or {latency: f, runtime: ..., batch: ..., threads: ...} with 0 < f < 1 "
            "(the fraction of the dense network kept)")
    if isinstance(v, dict) and "latency" in v:
        extra = sorted(set(v) - set(LATENCY_TARGET_KEYS))
        if extra:
            raise ValueError(f"unknown key(s) {', '.join(map(str, extra))} in a latency target; valid keys: "
                             f"{', '.join(LATENCY_TARGET_KEYS)}")
        f = v["latency"]
        if not (isinstance(f, int | float) and not isinstance(f, bool) and 0 < f < 1):
            raise ValueError(form)
        try:
            pconfig.latency_target(v)
        except PrunekitError as exc:
            raise ValueError(str(exc).removeprefix("latency: ")) from None
        return v
    ok = isinstance(v, dict) and len(v) == 1 and next(iter(v)) in KINDS
    f = next(iter(v.values())) if ok else None
    if not (ok and isinstance(f, int | float) and not isinstance(f, bool) and 0 < f < 1):
        raise ValueError(form)
    return v


def _base(v: dict[str, Any]) -> dict[str, Any]:
    if "method" in v:
        raise ValueError("base must not set a method; list methods under 'methods'")
    normalize(v, prefix="compare config: base")  # one line of its own (a PrunekitError passes through)
    return v


Fraction = Annotated[float, Field(gt=0, lt=1)]
Kind = Literal["macs", "params", "latency"]


def _default_targets() -> list[dict[str, Any]]:
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
    targets: Annotated[list[Annotated[dict[str, Any], BeforeValidator(_target)]],
                       Field(max_length=100)] = Field(default_factory=_default_targets)
    methods: Annotated[dict[str, dict[str, Any] | None], Field(min_length=1)] = Field(default_factory=_default_methods)
    latency: bool = True
    latency_batch: Annotated[int, Field(ge=1, le=MAX_LATENCY_BATCH)] = 64
    latency_rounds: Annotated[int, Field(ge=1, le=MAX_LATENCY_ROUNDS)] = 15
    latency_threads: Annotated[int, Field(ge=1, le=MAX_THREADS)] = 1
    latency_deployed: bool = True
    # where rows are timed: None = PyTorch (deployed form when latency_deployed), else a prunekit runtime
    latency_runtime: Literal["eager", "deployed", "onnxruntime", "cuda"] | None = None
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


DEFAULTS: dict[str, Any] = CompareConfig().model_dump()  # every key with its default


def load(path: str | os.PathLike, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Read and validate a comparison config (``--set key=value`` overrides as for experiment configs)."""
    p = Path(path)
    user = configio.read_yaml(p, "comparison config")
    unknown = sorted(set(user) - set(DEFAULTS))
    if unknown:
        raise PrunekitError(f"{p}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(DEFAULTS)}")
    cfg = {**copy.deepcopy(DEFAULTS), **user}
    cfg["name"] = cfg["name"] or p.stem
    for o in overrides:
        head = o.partition("=")[0].strip().split(".")[0]
        if "=" in o and head not in DEFAULTS:
            raise PrunekitError(f"--set {configio.short(o.partition('=')[0])}: unknown key {configio.short(head)}; "
                                f"valid keys: {', '.join(DEFAULTS)}")
        configio.apply_override(cfg, o)
    validate(cfg)
    return cfg


def validate(cfg: dict[str, Any]) -> None:
    """Check a comparison config: the typed schema, then each method's entry (known name, target kinds it
    supports, start, sweep), with one line per mistake."""
    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise PrunekitError(f"compare config: {msg}")

    check(cfg)  # keys, types and bounds (the typed schema); the rules of each method's entry follow
    from prunekit import methods as pmethods

    for name, opts in cfg["methods"].items():
        need(opts is None or isinstance(opts, dict), f"methods.{name}: options must be a mapping")
        opts = opts or {}
        knobs = pmethods.get(name).budget_knobs if name != "dense" else {}  # an unknown name fails here
        kinds = opts.get("kinds")
        need(kinds is None or (isinstance(kinds, list) and all(k in KINDS for k in kinds)),
             f"methods.{name}.kinds must be a list drawn from {list(KINDS)}")
        for k in kinds or []:
            need(k in knobs, f"methods.{name}: cannot be set to a {k} target (it supports "
                             f"{sorted(knobs) or 'none: use sweep'})")
        need(opts.get("start", "auto") in ("auto", "dense", "scratch"),
             f"methods.{name}.start must be auto, dense or scratch")
        sweep = opts.get("sweep")
        need(sweep is None or (isinstance(sweep, dict) and bool(sweep) and all(isinstance(v, list) and v
                                                                                for v in sweep.values())),
             f"methods.{name}.sweep must map option names to non-empty lists of values")


def base_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The shared experiment config (prunekit.config defaults + ``base``), validated."""
    base = pconfig.complete(cfg["base"])
    base["method"] = {"name": "none"}
    pconfig.validate(base)
    return base
