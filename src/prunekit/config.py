"""Experiment configs: a typed schema (pydantic), one YAML + ``--set key=value`` loader, one-line errors.

Schema (every key optional; defaults below; ``prunekit schema experiment`` prints it as JSON Schema)::

    seed: 0
    out: runs/<name>                # output folder (checkpoint, log, model, report)
    pretrained: null                # a prunekit model file to start from instead of a fresh init
    model:  {name: lenet5, kwargs: {}}
    data:   {name: digits, root: null, subset: 0, test_subset: 0, augment: default, download: false}
    train:  {epochs: 10, ...every field of prunekit.engine.TrainerConfig except seed: batch_size: 128,
             eval_batch_size: 512, device: auto, amp: auto, channels_last: auto, checkpoint_every_steps: 0,
             eval_every: 1, quiet: false, max_steps_per_epoch: 0}
    optim:  {...every field of prunekit.engine.OptimConfig: lr: 0.1, momentum: 0.9, nesterov: true,
             weight_decay: 5e-4, schedule: step, milestones: null, gamma: 0.1, warmup_epochs: 0}
    method: {name: none, ...the method's own options (see ``prunekit.methods.get(name).config_keys()``)}

Rules: an unknown key anywhere is rejected with the list of valid keys; types are strict (``true`` is not an
integer, ``"1"`` is not a number); numbers are finite and bounded above (a typo such as ``epochs: 1e9`` is an
error, not a week of training); cross-field rules (a ``data.subset`` smaller than one batch, method options
without a method) are checked too. The ``train`` and ``optim`` sections are derived from the engine's
``TrainerConfig`` / ``OptimConfig``, so a new engine field is a config key at once, never dropped. A method's
options are checked by the method itself (its ``Config``), plus sanity bounds on every number.

``train.batch_size`` is the global batch: under ``torchrun`` it is split across the processes, so a config
means the same run on any number of them.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import os
import typing
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, create_model
from pydantic import model_validator as _model_validator

from prunekit import configio
from prunekit.configio import parse_value, short
from prunekit.data.pipeline import RECIPES
from prunekit.engine.stages import SCHEDULES
from prunekit.engine.trainer import OptimConfig, TrainerConfig
from prunekit.errors import PrunekitError

# upper bounds: far above any real run, low enough that a typo fails here instead of hours (or GBs) later
MAX_COUNT = 2**31  # steps, sizes
MAX_EPOCHS = 100_000
MAX_BATCH = 65_536
MAX_LR = 10.0
MAX_CLASSES = 100_000
MAX_INPUT_SIZE = 4096  # pixels per side
MAX_CHANNELS = 4096
MAX_METHOD_INT = 10**7  # any integer option of a method (apoz_samples may name every ImageNet image)
MAX_METHOD_FLOAT = 1e6  # any real option of a method (penalties, ratios, tolerances)


class Section(BaseModel):
    """Base of every config section: unknown keys forbidden, strict types, finite numbers."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, validate_default=True)


def _toggle(v: Any) -> Any:
    """YAML reads ``on`` / ``off`` / ``true`` as booleans: map them back to the engine's words."""
    if isinstance(v, bool):
        return "on" if v else "off"
    if isinstance(v, str) and v.lower() in ("true", "false", "bf16", "yes", "no"):
        return "on" if v.lower() in ("true", "bf16", "yes") else "off"
    return v


def _device(v: str) -> str:
    """auto, cpu, cuda, cuda:N or mps (whether the machine has it is checked when a run starts)."""
    if v != "auto":
        import torch

        try:
            dev = torch.device(v)
        except (RuntimeError, ValueError, TypeError):
            dev = None
        if dev is None or dev.type not in ("cpu", "cuda", "mps"):
            raise ValueError("must be auto, cpu, cuda or cuda:N (or mps)")
    return v


def _path(v: str | None) -> str | None:
    if v is not None and not v.strip():
        raise ValueError("must be a path or null, not an empty string")
    return v


def _epochs_list(v: Any) -> Any:
    """Milestones: null or increasing epochs (checked before the types, for one message)."""
    if v is None:
        return v
    if not (isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= MAX_EPOCHS
                                        for x in v)):
        raise ValueError(f"must be a list of epochs (integers >= 0), at most {MAX_EPOCHS} each")
    if v != sorted(set(v)):
        raise ValueError("must be increasing epochs such as [30, 60]")
    return v


Toggle = Annotated[Literal["auto", "on", "off"], BeforeValidator(_toggle)]
Path_ = Annotated[str | None, AfterValidator(_path)]
Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]

# the engine's fields that need more than their type: bounds, words, enumerations
_TRAIN_TYPES: dict[str, Any] = {
    "batch_size": Annotated[int, Field(ge=1, le=MAX_BATCH, description="global batch (split across processes)")],
    "eval_batch_size": Annotated[int, Field(ge=1, le=MAX_BATCH)],
    "device": Annotated[str, AfterValidator(_device), Field(description="auto | cpu | cuda | cuda:N | mps")],
    "amp": Annotated[Toggle, Field(description="bf16 autocast; auto = on CUDA only")],
    "channels_last": Toggle,
    "checkpoint_every_steps": Annotated[Count, Field(description="0: at the end of every epoch only")],
    "eval_every": Annotated[int, Field(ge=1, le=MAX_COUNT)],
    "max_steps_per_epoch": Annotated[Count, Field(description="0: the whole epoch")],
}
_OPTIM_TYPES: dict[str, Any] = {
    "lr": Annotated[float, Field(gt=0, le=MAX_LR)],
    "momentum": Annotated[float, Field(ge=0, lt=1)],
    "weight_decay": Annotated[float, Field(ge=0, le=1)],
    "schedule": Literal[SCHEDULES],
    "milestones": Annotated[list[Annotated[int, Field(ge=0, le=MAX_EPOCHS)]] | None,
                            Field(max_length=1000), BeforeValidator(_epochs_list)],
    "gamma": Annotated[float, Field(gt=0, le=1)],
    "warmup_epochs": Annotated[float, Field(ge=0, le=MAX_EPOCHS)],
}


def section_from(dc: type, name: str, types: dict[str, Any], skip: tuple[str, ...] = (),
                  extra: dict[str, Any] | None = None) -> type[Section]:
    """A config section with one key per field of the engine dataclass ``dc`` (its defaults, its types,
    tightened by ``types``), so that a field added to the engine is validated and passed on, never dropped."""
    hints = typing.get_type_hints(dc)
    fields: dict[str, Any] = dict(extra or {})
    for f in dataclasses.fields(dc):
        if f.name in skip:
            continue
        typ = types.get(f.name, hints[f.name])
        if f.default is not dataclasses.MISSING:
            fields[f.name] = (typ, f.default)
        else:
            fields[f.name] = (typ, Field(default_factory=f.default_factory))  # type: ignore[arg-type]
    return create_model(name, __base__=Section, __doc__=dc.__doc__, **fields)


TrainSection = section_from(
    TrainerConfig, "TrainSection", _TRAIN_TYPES, skip=("seed",),
    extra={"epochs": (Annotated[int, Field(ge=0, le=MAX_EPOCHS, description="the method's budget")], 10)})
OptimSection = section_from(OptimConfig, "OptimSection", _OPTIM_TYPES)

_KWARG_BOUNDS = {"num_classes": (1, MAX_CLASSES), "input_size": (1, MAX_INPUT_SIZE), "in_channels": (1, MAX_CHANNELS)}


def _model_kwargs(kw: dict[str, Any]) -> dict[str, Any]:
    for key, (lo, hi) in _KWARG_BOUNDS.items():
        if key in kw:
            v = kw[key]
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise ValueError(f"{key} must be an integer in [{lo}, {hi}], got {short(v)}")
    return kw


class ModelSection(Section):
    """A zoo model and its keyword arguments (checked by its factory; num_classes, input_size and
    in_channels are filled in from the data unless given)."""

    name: Annotated[str, Field(min_length=1)] = "lenet5"
    kwargs: Annotated[dict[str, Any], AfterValidator(_model_kwargs)] = Field(default_factory=dict)


def _augment(v: str | None) -> str | None:
    if v is not None and v != "default" and v not in RECIPES:
        raise ValueError(f"must be default, null or one of {', '.join(RECIPES)}")
    return v


class DataSection(Section):
    """The dataset: a name, where its files are, seeded random subsets (0 = all) and the augmentation."""

    name: Annotated[str, Field(min_length=1)] = "digits"
    root: Path_ = None
    subset: Count = 0
    test_subset: Count = 0
    augment: Annotated[str | None, AfterValidator(_augment),
                       Field(description=f"default | null | {' | '.join(RECIPES)}")] = "default"
    download: bool = False


class MethodSection(BaseModel):
    """``name`` (a method of :func:`prunekit.methods.names`, or none) and that method's own options."""

    model_config = ConfigDict(extra="allow", strict=True)
    name: str = "none"


LATENCY_RUNTIMES = ("eager", "deployed", "onnxruntime", "cuda")  # prunekit.metrics.runtime.RUNTIMES


def default_latency_runtime() -> str:
    """A latency target's runtime when none is given: ONNX Runtime when it is installed, else PyTorch eager."""
    import importlib.util

    return "onnxruntime" if importlib.util.find_spec("onnxruntime") is not None else "eager"


class LatencyTargetSpec(Section):
    """A latency target: ``latency`` of the dense network's latency measured in ``runtime`` at ``batch`` with
    ``threads`` (:class:`prunekit.metrics.latency_model.LatencyTarget`; widths snap to the runtime's preferred
    multiple unless ``round_to`` is given)."""

    latency: Annotated[float, Field(gt=0, le=1)]
    runtime: Literal["eager", "deployed", "onnxruntime", "cuda"] | None = None  # None: default_latency_runtime()
    batch: Annotated[int, Field(ge=1, le=MAX_BATCH)] = 1
    threads: Annotated[int, Field(ge=1, le=1024)] = 1
    round_to: Annotated[int, Field(ge=1, le=MAX_CHANNELS)] | None = None
    tol: Annotated[float, Field(gt=0, le=0.5)] = 0.05
    corrections: Annotated[int, Field(ge=0, le=20)] = 3
    rounds: Annotated[int, Field(ge=1, le=10_000)] = 15
    clock: Literal["auto", "wall", "thread"] = "auto"
    min_keep: Annotated[int, Field(ge=1, le=MAX_CHANNELS)] = 1
    cache: str | None = None


def latency_target(value: Any, where: str = "latency") -> dict[str, Any]:
    """A latency target from ``0.5`` or ``{latency: 0.5, runtime: ..., batch: ..., threads: ...}``, checked
    against :class:`LatencyTargetSpec` (one line naming ``where`` on error), every key filled in (the runtime
    resolved), as the plain mapping a method's ``latency`` option holds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = {"latency": float(value)}
    if not isinstance(value, dict):
        raise PrunekitError(f"{where}: a latency target is a fraction or a mapping with a 'latency' fraction, "
                            f"got {short(value)}")
    if isinstance(value.get("latency"), int) and not isinstance(value.get("latency"), bool):
        value = {**value, "latency": float(value["latency"])}
    try:
        spec = LatencyTargetSpec.model_validate(value)
    except ValidationError as exc:
        raise PrunekitError(error_line(exc, LatencyTargetSpec, where)) from None
    out = spec.model_dump()
    out["runtime"] = out["runtime"] or default_latency_runtime()
    return out


class ExperimentConfig(Section):
    """One experiment: model, data, training, optimizer and the pruning method."""

    seed: Annotated[int, Field(ge=0, lt=2**63)] = 0
    out: Path_ = None
    pretrained: Path_ = None
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection = Field(default_factory=DataSection)
    train: TrainSection = Field(default_factory=TrainSection)  # type: ignore[valid-type]
    optim: OptimSection = Field(default_factory=OptimSection)  # type: ignore[valid-type]
    method: MethodSection = Field(default_factory=MethodSection)

    @_model_validator(mode="after")
    def _cross_field(self) -> ExperimentConfig:
        options = self.method.model_extra or {}
        if self.method.name == "none" and options:
            raise ValueError(f"method options {', '.join(map(str, options))} given but method.name is none; "
                             "set method.name or drop them")
        subset, batch = self.data.subset, self.train.batch_size  # type: ignore[attr-defined]
        if 0 < subset < batch:
            raise ValueError(f"data.subset={subset} is smaller than one batch (train.batch_size={batch}): every "
                             "epoch would train 0 steps; raise data.subset or lower train.batch_size")
        return self


DEFAULTS: dict[str, Any] = ExperimentConfig().model_dump()
_LAYER_OPTIONS = ("layers", "exclude", "layer_keep")


def _field_at(model: type[BaseModel], loc: tuple[Any, ...]) -> tuple[type[BaseModel] | None, Any]:
    """(the section model, the field) at ``loc``; the model is None when ``loc`` leaves the typed schema."""
    field = None
    for part in loc:
        if model is None:
            return None, None
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None)
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None  # type: ignore[assignment]
    return model, field


def _bound(v: float) -> str:
    if isinstance(v, int):
        return f"2**{v.bit_length() - 1}" if v >= 2**31 and v & (v - 1) == 0 else str(v)
    return f"{v:g}"


def _range(field: Any) -> str | None:
    """``an integer in [0, 100000]`` / ``a number in (0, 10]`` from a field's type and bounds."""
    if field is None or field.annotation not in (int, float):
        return None
    lo = hi = None
    lo_open = hi_open = False
    for m in field.metadata:
        for attr, is_lo, is_open in (("ge", True, False), ("gt", True, True), ("le", False, False),
                                     ("lt", False, True)):
            v = getattr(m, attr, None)
            if v is not None:
                if is_lo:
                    lo, lo_open = v, is_open
                else:
                    hi, hi_open = v, is_open
    if lo is None and hi is None:
        return None
    what = "an integer" if field.annotation is int else "a number"
    left = "(-inf" if lo is None else f"{'(' if lo_open else '['}{_bound(lo)}"
    right = "inf)" if hi is None else f"{_bound(hi)}{')' if hi_open else ']'}"
    return f"{what} in {left}, {right}"


_NUMERIC = ("int_type", "int_from_float", "int_parsing", "float_type", "float_parsing", "finite_number",
            "greater_than", "greater_than_equal", "less_than", "less_than_equal")


def error_line(exc: ValidationError, model: type[BaseModel], prefix: str) -> str:
    """A pydantic error as one line: ``prefix: key.path must be ..., got <short value>`` (first three errors)."""
    parts = []
    errors = exc.errors(include_url=False)
    for e in errors[:3]:
        loc = tuple(x for x in e["loc"] if not (isinstance(x, str) and x.startswith("function-")))
        where = ".".join(map(str, loc))
        kind, msg, got = e["type"], e["msg"], e.get("input")
        _, field = _field_at(model, loc)
        if kind == "extra_forbidden":
            parent, _ = _field_at(model, loc[:-1])
            listing = f"; valid keys here: {', '.join(sorted(parent.model_fields))}" if parent else ""
            parts.append(f"unknown config key {short(where)}{listing}")
            continue
        msg = msg.removeprefix("Value error, ").replace("Input should be", "must be")
        if kind in ("model_type", "model_attributes_type", "dict_type"):
            msg = "must be a mapping of keys"
            if got is None:
                parts.append(f"{where!r} is None, not a section (a mapping of keys)")
                continue
        elif kind in _NUMERIC and _range(field):
            msg = f"must be {_range(field)}"
        elif kind in ("int_type", "int_from_float") and isinstance(got, bool | float):
            msg = "must be an integer"
        elif kind == "bool_type":
            msg = "must be true or false"
        elif kind == "literal_error":
            msg = "must be one of " + str(e.get("ctx", {}).get("expected", "")).replace("'", "").replace(" or ", ", ")
        head = f"{where} " if where else ""
        tail = "" if kind == "value_error" and (not where or ", got " in msg) else f", got {short(got)}"
        parts.append(f"{head}{msg}{tail}")
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return f"{prefix}: {'; '.join(parts)}{more}"


def _check_method_numbers(options: dict[str, Any]) -> None:
    """Sanity bounds on a method's numbers (on top of its own checks): finite, and not absurdly large."""
    def walk(key: str, v: Any) -> None:
        if isinstance(v, dict):
            for k, x in v.items():
                walk(f"{key}.{k}", x)
        elif isinstance(v, list | tuple):
            for x in v:
                walk(key, x)
        elif isinstance(v, int) and not isinstance(v, bool):
            leaf = key.split(".")[0]
            most = MAX_EPOCHS if ("epochs" in leaf or leaf in ("iterations", "cycles")) else MAX_METHOD_INT
            if abs(v) > most:
                raise PrunekitError(f"config: method.{key}: {short(v)} is out of range (at most {most:,})")
        elif isinstance(v, float):
            hi = MAX_LR if key.split(".")[0].endswith("lr") else MAX_METHOD_FLOAT
            if not math.isfinite(v) or abs(v) > hi:
                raise PrunekitError(f"config: method.{key}: {short(v)} must be a finite number of at most {hi:g}")

    for k, v in options.items():
        walk(str(k), v)


def _check_method(cfg: dict[str, Any]) -> None:
    """The method's own validation (its ``Config``), then the layer names against the model."""
    m = cfg["method"]
    if m["name"] == "none":
        return
    from prunekit import methods

    cls = methods.get(m["name"])
    options = {k: v for k, v in m.items() if k != "name"}
    _check_method_numbers(options)
    try:
        cls.config_from_dict(options)
    except PrunekitError as exc:
        msg = str(exc)
        raise PrunekitError(msg if len(msg) <= 400 else msg[:397] + "...") from None
    except (TypeError, ValueError, KeyError, AttributeError, ArithmeticError) as exc:
        # a method's own range check tripped over a value of the wrong type
        raise PrunekitError(f"config: method {m['name']!r}: an option has a value of the wrong type "
                            f"({short(str(exc))}); valid options: {', '.join(cls.config_keys())}") from None
    _check_layer_names(cfg)


def normalize(tree: Any, prefix: str = "config") -> dict[str, Any]:
    """The full config (defaults filled in) from a possibly partial mapping, validated; one-line errors."""
    if not isinstance(tree, dict):
        raise PrunekitError(f"{prefix}: a config must be a mapping of sections, got {short(tree)}")
    try:
        typed = ExperimentConfig.model_validate(tree)
    except ValidationError as exc:
        raise PrunekitError(error_line(exc, ExperimentConfig, prefix)) from None
    cfg = typed.model_dump()
    _check_method(cfg)
    return cfg


complete = normalize


def validate(cfg: dict[str, Any]) -> None:
    """Check a full config dict (as :func:`load_config` returns it, possibly edited): one line per mistake.

    Runs before any data are loaded or any training starts.
    """
    normalize(cfg)


def load_config(path: str | os.PathLike[str] | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    """Read a YAML config (or the defaults), apply ``--set`` overrides, validate, return the full config."""
    return normalize(configio.load(path, list(overrides or [])))


def apply_override(cfg: dict[str, Any], assignment: str) -> None:
    """Apply one ``key.sub=value`` override in place (validate afterwards)."""
    configio.apply_override(cfg, assignment)


def trainer_config(cfg: dict[str, Any]) -> TrainerConfig:
    """The engine settings of a validated config: every ``TrainerConfig`` field from ``train`` (and seed)."""
    t = cfg["train"]
    return TrainerConfig(**{f.name: (cfg["seed"] if f.name == "seed" else t[f.name])
                            for f in dataclasses.fields(TrainerConfig)})


def optim_config(cfg: dict[str, Any]) -> OptimConfig:
    """The optimizer settings of a validated config (every ``OptimConfig`` field)."""
    return OptimConfig(**{f.name: cfg["optim"][f.name] for f in dataclasses.fields(OptimConfig)})


def _check_layer_names(cfg: dict[str, Any]) -> None:
    """Layer names / glob patterns in the method options must name layers of the model.

    Checked on the zoo model built on the meta device (no memory, no data), so a typo fails before any
    data are loaded or any epoch is trained. The method's own, finer check (which layer types it accepts)
    still runs when it sees the model.
    """
    m = cfg["method"]
    given = {k: m[k] for k in _LAYER_OPTIONS if m.get(k)}
    name = cfg["model"]["name"]
    if not given or cfg.get("pretrained") or name.startswith("torchvision:"):
        return
    import torch

    from prunekit import models

    try:
        with torch.device("meta"):
            model = models.create(name, **(cfg["model"].get("kwargs") or {}))
    except Exception:  # the model's own errors are reported where it is built, with the data's shapes
        return
    names = [n for n, _ in model.named_modules() if n]
    for key, value in given.items():
        patterns = list(value) if isinstance(value, dict | list | tuple) else [value]
        for pat in patterns:
            if isinstance(pat, str) and not any(fnmatch.fnmatchcase(n, pat) for n in names):
                shown = ", ".join(n for n in names if "." not in n) if len(names) > 40 else ", ".join(names)
                raise PrunekitError(f"config: method.{key}: {short(pat)} matches no layer of {name}; "
                                    f"its layers are: {shown}")


def schema() -> dict[str, Any]:
    """JSON Schema of an experiment config (for editors), with every method's options under ``method``."""
    out = ExperimentConfig.model_json_schema()
    variants: list[dict[str, Any]] = [{"type": "object", "properties": {"name": {"const": "none"}},
                                       "additionalProperties": False}]
    from pydantic import TypeAdapter

    from prunekit import methods

    for name in methods.names():
        try:
            cls = methods.get(name)
            props = TypeAdapter(cls.Config).json_schema().get("properties", {})
        except Exception:  # a method whose options have no JSON form: its name alone
            props = {}
        variants.append({"type": "object", "title": name, "properties": {"name": {"const": name}, **props},
                         "required": ["name"], "additionalProperties": not props})
    defs = out.setdefault("$defs", {})
    defs["MethodSection"] = {"title": "MethodSection", "description": MethodSection.__doc__,
                             "oneOf": variants}
    return out


dump = configio.dump
__all__ = [
    "DEFAULTS",
    "ExperimentConfig",
    "LatencyTargetSpec",
    "apply_override",
    "complete",
    "dump",
    "latency_target",
    "load_config",
    "normalize",
    "optim_config",
    "parse_value",
    "schema",
    "trainer_config",
    "validate",
]
