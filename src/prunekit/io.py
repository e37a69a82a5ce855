"""Safe model files: safetensors weights plus a JSON description of the (pruned) architecture.

A model built by :func:`prunekit.models.create` remembers its factory (zoo name and keyword arguments).
:func:`save` stores the weights and, in the file's metadata, the factory plus a *spec* of every module that
differs from what the factory builds (a thinner conv, a block replaced by its shortcut, an inserted scaling
layer). :func:`load` rebuilds the factory model on the ``meta`` device, applies the recorded specs, checks
every tensor's shape against the file, and assigns the weights: no pickle, no code from the file, and a
forged file cannot make us allocate more than the tensors it really holds.

Only whitelisted module types can appear in a spec (torch's common layers plus classes registered with
:func:`register_module`), so a malicious file cannot name an arbitrary class.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, cast

import torch
from torch import nn

from prunekit.atomic import atomic_path
from prunekit.errors import PrunekitError

FORMAT = "prunekit-model/1"
# torch.save writes a zip archive (PK..) or, with the legacy format, a raw pickle (protocol 2+ starts with 0x80)
_PICKLE_MAGIC = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")
_MAX_SPECS = 100_000  # modules an architecture record may describe
_MAX_DEPTH = 64  # nesting of module specs
_MAX_STATE_DEPTH = 200  # nesting of a checkpoint's JSON state

# ---------------------------------------------------------------------------------------------------------
# module specs


def _conv_cfg(m: nn.modules.conv._ConvNd) -> dict[str, Any]:
    return {
        "in_channels": m.in_channels, "out_channels": m.out_channels, "kernel_size": list(m.kernel_size),
        "stride": list(m.stride), "padding": m.padding if isinstance(m.padding, str) else list(m.padding),
        "dilation": list(m.dilation), "groups": m.groups, "bias": m.bias is not None,
        "padding_mode": m.padding_mode,
    }


def _bn_cfg(m: nn.modules.batchnorm._NormBase) -> dict[str, Any]:
    return {"num_features": m.num_features, "eps": m.eps, "momentum": m.momentum, "affine": m.affine,
            "track_running_stats": m.track_running_stats}


def _pool_cfg(m: nn.Module) -> dict[str, Any]:
    keys = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "count_include_pad", "output_size")
    return {k: getattr(m, k) for k in keys if hasattr(m, k)}


# each config function takes its own class (hence Any: a Callable over nn.Module would not accept _conv_cfg)
_TORCH_TYPES: dict[str, tuple[type[nn.Module], Callable[[Any], dict[str, Any]]]] = {
    "Conv1d": (nn.Conv1d, _conv_cfg),
    "Conv2d": (nn.Conv2d, _conv_cfg),
    "Conv3d": (nn.Conv3d, _conv_cfg),
    "Linear": (nn.Linear, lambda m: {"in_features": m.in_features, "out_features": m.out_features,
                                     "bias": m.bias is not None}),
    "BatchNorm1d": (nn.BatchNorm1d, _bn_cfg),
    "BatchNorm2d": (nn.BatchNorm2d, _bn_cfg),
    "GroupNorm": (nn.GroupNorm, lambda m: {"num_groups": m.num_groups, "num_channels": m.num_channels,
                                           "eps": m.eps, "affine": m.affine}),
    "LayerNorm": (nn.LayerNorm, lambda m: {"normalized_shape": list(m.normalized_shape), "eps": m.eps,
                                           "elementwise_affine": m.elementwise_affine}),
    "Identity": (nn.Identity, lambda m: {}),
    "ReLU": (nn.ReLU, lambda m: {"inplace": m.inplace}),
    "ReLU6": (nn.ReLU6, lambda m: {"inplace": m.inplace}),
    "Dropout": (nn.Dropout, lambda m: {"p": m.p, "inplace": m.inplace}),
    "Flatten": (nn.Flatten, lambda m: {"start_dim": m.start_dim, "end_dim": m.end_dim}),
    "MaxPool2d": (nn.MaxPool2d, _pool_cfg),
    "AvgPool2d": (nn.AvgPool2d, _pool_cfg),
    "AdaptiveAvgPool2d": (nn.AdaptiveAvgPool2d, _pool_cfg),
    "Sequential": (nn.Sequential, lambda m: {}),
    "MultiheadAttention": (nn.MultiheadAttention, lambda m: {
        "embed_dim": m.embed_dim, "num_heads": m.num_heads, "dropout": m.dropout, "bias": m.in_proj_bias is not None,
        "add_bias_kv": m.bias_k is not None, "add_zero_attn": m.add_zero_attn, "kdim": m.kdim, "vdim": m.vdim,
        "batch_first": m.batch_first}),
}



class Configurable(Protocol):
    """What :func:`register_module` requires of a class besides being an ``nn.Module``."""

    def to_config(self) -> dict[str, Any]: ...

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> nn.Module: ...


_CUSTOM_TYPES: dict[str, type[nn.Module]] = {}


def register_module(cls: type[nn.Module]) -> type[nn.Module]:
    """Class decorator: allow ``cls`` in saved architectures.

    The class must define ``to_config(self) -> dict`` (JSON values only) and a classmethod
    ``from_config(cls, cfg) -> module``. Its name must be unique among registered classes.
    """
    if not (hasattr(cls, "to_config") and hasattr(cls, "from_config")):
        raise TypeError(f"{cls.__name__} needs to_config() and from_config() to be registered")
    _CUSTOM_TYPES[cls.__qualname__] = cls
    return cls


def module_spec(m: nn.Module) -> dict[str, Any] | None:
    """JSON description of a module (recursing into Sequential), or None if its type is not known."""
    for key, (cls, cfg) in _TORCH_TYPES.items():
        if type(m) is cls:
            spec: dict[str, Any] = {"type": key, "config": cfg(m)}
            break
    else:
        if type(m).__qualname__ in _CUSTOM_TYPES and type(m) is _CUSTOM_TYPES[type(m).__qualname__]:
            spec = {"type": type(m).__qualname__, "config": cast(Configurable, m).to_config()}  # registered
        else:
            return None
    if isinstance(m, nn.Sequential) or spec["type"] in _CUSTOM_TYPES:
        children = {}
        for name, child in m.named_children():
            cs = module_spec(child)
            if cs is None:
                return None
            children[name] = cs
        if children:
            spec["children"] = children
    return spec


def _check_json_scalar(v: Any, where: str) -> None:
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return
    if isinstance(v, int):
        if abs(v) > 2**31:
            raise PrunekitError(f"{where}: value {v} is out of range")
        return
    if isinstance(v, float):
        if not math.isfinite(v):
            raise PrunekitError(f"{where}: value {v} is not finite")
        return
    if isinstance(v, list | tuple):
        for x in v:
            _check_json_scalar(x, where)
        return
    raise PrunekitError(f"{where}: unexpected value of type {type(v).__name__}")


def build_module(spec: Any, where: str = "module", _budget: list[int] | None = None, _depth: int = 0
                 ) -> nn.Module:
    """Construct a module from :func:`module_spec` output, accepting only whitelisted types.

    The spec is untrusted: its size (modules in all) and nesting depth are bounded, names must be plain
    identifiers, and any failure of a constructor on the values given becomes a :class:`PrunekitError`.
    """
    budget = [_MAX_SPECS] if _budget is None else _budget
    budget[0] -= 1
    if budget[0] < 0:
        raise PrunekitError(f"{where}: the architecture describes more than {_MAX_SPECS:,} modules")
    if _depth > _MAX_DEPTH:
        raise PrunekitError(f"{where}: modules nested more than {_MAX_DEPTH} deep")
    if not isinstance(spec, dict) or not isinstance(spec.get("type"), str):
        raise PrunekitError(f"{where}: malformed module spec")
    if set(spec) - {"type", "config", "children"}:
        extra = sorted(map(str, set(spec) - {"type", "config", "children"}))
        raise PrunekitError(f"{where}: unexpected fields {extra[:5]}")
    kind, cfg = spec["type"], spec.get("config", {})
    if kind not in _TORCH_TYPES and kind not in _CUSTOM_TYPES:
        raise PrunekitError(f"{where}: module type {kind[:100]!r} is not allowed in a prunekit model file "
                            f"(allowed: {', '.join(sorted(_TORCH_TYPES))} and registered prunekit modules)")
    if not isinstance(cfg, dict):
        raise PrunekitError(f"{where}: malformed config")
    for k, v in cfg.items():
        if not isinstance(k, str) or not k.isidentifier():
            raise PrunekitError(f"{where}: bad config key {str(k)[:100]!r}")
        _check_json_scalar(v, f"{where}.{k}")
    try:
        if kind == "Sequential":
            if cfg:
                raise PrunekitError(f"{where}: Sequential takes no configuration")
            m: nn.Module = nn.Sequential()
        elif kind in _TORCH_TYPES:
            m = _TORCH_TYPES[kind][0](**cfg)
        else:
            m = cast(type[Configurable], _CUSTOM_TYPES[kind]).from_config(cfg)  # register_module checked it
    except PrunekitError:
        raise
    except Exception as exc:  # hostile values reach torch's constructors: any failure is bad input
        raise PrunekitError(f"{where}: cannot build {kind} from {str(cfg)[:200]}: "
                            f"{str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}") from None
    children = spec.get("children", {})
    if not isinstance(children, dict):
        raise PrunekitError(f"{where}: malformed children")
    for name, cs in children.items():
        if not _plain_name(name):
            raise PrunekitError(f"{where}: bad child name {str(name)[:100]!r}")
        m.add_module(name, build_module(cs, f"{where}.{name}", budget, _depth + 1))
    return m


def _plain_name(name: Any) -> bool:
    """A module name part: a non-dunder identifier or a decimal index (what nn.Module names look like)."""
    return (isinstance(name, str) and 0 < len(name) <= 200 and not name.startswith("__")
            and (name.isidentifier() or (name.isdigit() and name.isascii())))


def set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule at dotted ``name`` by ``new``."""
    parent_name, _, leaf = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, leaf, new)


# ---------------------------------------------------------------------------------------------------------
# architecture record


FACTORY_ATTR = "_prunekit_factory"
"""The model attribute holding how it was made (underscored so it cannot collide with the model's own; read and
written only through :func:`factory_of` and :func:`remember_factory`)."""


def remember_factory(model: nn.Module, factory: dict[str, Any]) -> None:
    """Record on ``model`` the ``{"name", "kwargs"}`` :func:`prunekit.models.create` builds it from."""
    vars(model)[FACTORY_ATTR] = dict(factory)  # a plain attribute, not a registered module or parameter


def factory_of(model: nn.Module) -> dict[str, Any] | None:
    """The ``{"name", "kwargs"}`` a zoo model was created with, or None for a user's own module."""
    f = getattr(model, FACTORY_ATTR, None)
    return dict(f) if f else None


def architecture(model: nn.Module, base: nn.Module | None = None) -> dict[str, Any] | None:
    """Describe ``model`` so that :func:`build_from_architecture` rebuilds its (pruned) shapes.

    A zoo model is described as factory + overrides (the modules that differ from what the factory builds):
    a self-contained record. A user's own network has no factory: pass ``base``, the network as the user
    built it (e.g. before pruning). The record then holds the structural operations made since ``base``
    (:mod:`prunekit.surgery.history`: which channels, which blocks), replayed on a fresh instance whatever
    its module types, plus overrides for any other change (whitelisted / registered module types only). The
    replay is checked here, at save time; where the history cannot rebuild ``model`` every change is
    described by overrides instead, and a change neither can describe is refused, naming the layer. Without
    factory or base, returns None.
    """
    factory = factory_of(model)
    if factory is None and base is None:
        return None
    ops: list[dict[str, Any]] = []
    why = ""
    if factory is not None:
        from prunekit import models

        with torch.device("meta"):
            ref = models.create(factory["name"], **factory["kwargs"])
    else:
        from prunekit.surgery import history

        assert base is not None
        ops, base_ops = history.history(model), history.history(base)
        if ops[:len(base_ops)] != base_ops:
            why = "base= is not an earlier state of this model (its structural history differs)"
        ops = ops[len(base_ops):]
        for i, op in enumerate(ops):
            if not why and op.get("op") == "channels" and not op.get("input_shapes"):
                why = (f"structural change {i + 1} was made with example inputs that are not float tensors, so it "
                       "cannot be replayed")
        ref = _twin(base, "base")
        if not why:
            try:
                history.replay(ref, ops)
            except PrunekitError as exc:
                why = str(exc)
        if why:  # the history cannot rebuild the model: describe every change as an override instead
            ops, ref = [], _twin(base, "base")
    try:
        overrides = _overrides(model, ref)
    except PrunekitError as exc:
        raise PrunekitError(f"{exc} ({why})" if why else str(exc)) from None
    rec: dict[str, Any] = {"factory": factory, "overrides": overrides}
    if factory is None:
        rec["history"] = ops
    return rec


def _overrides(model: nn.Module, ref: nn.Module) -> dict[str, Any]:
    """Specs of the modules of ``model`` that differ from ``ref`` (outermost first, children skipped)."""
    base_modules = dict(ref.named_modules())
    overrides: dict[str, Any] = {}
    skip: list[str] = []
    for name, m in model.named_modules():
        if not name or any(name.startswith(s + ".") for s in skip):
            continue
        b = base_modules.get(name)
        if b is not None and _same_shell(m, b):
            continue
        spec = module_spec(m)
        if spec is None:
            raise PrunekitError(
                f"cannot record layer {name!r} of type {type(m).__name__}: it differs from the network as "
                "built in a way prunekit's surgery did not make; register it with prunekit.io.register_module "
                "(to_config/from_config) so the pruned model can be saved")
        overrides[name] = spec
        skip.append(name)
    return overrides


def _same_shell(m: nn.Module, b: nn.Module) -> bool:
    """Same type, same own configuration, and no child of ``b`` missing: children are compared one by one."""
    if type(m) is not type(b) or set(dict(b.named_children())) - set(dict(m.named_children())):
        return False
    sm, sb = module_spec(m), module_spec(b)
    if sm is not None and sb is not None:
        return sm["type"] == sb["type"] and sm["config"] == sb["config"]
    return _own_shapes(m) == _own_shapes(b)


def _own_shapes(m: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(n, tuple(t.shape)) for n, t in list(m.named_parameters(recurse=False))
            + list(m.named_buffers(recurse=False))]


def _check_record(arch: Any) -> None:
    if not isinstance(arch, dict) or "factory" not in arch:
        raise PrunekitError("architecture record is malformed (no factory)")
    extra = set(arch) - {"factory", "overrides", "history"}
    if extra:
        raise PrunekitError(f"architecture record has unexpected fields {ascii(sorted(map(str, extra))[:5])[:100]}")


def build_from_architecture(arch: dict[str, Any], device: str | torch.device = "cpu",
                            base: nn.Module | None = None) -> nn.Module:
    """Rebuild a model (on ``device``, weights uninitialised if ``meta``) from :func:`architecture` output.

    A record without a factory (a user's own network) is applied to ``base`` (an instance of that network,
    changed in place: its structural history replayed, then the overrides built on ``device``); without
    ``base`` it is refused.
    """
    from prunekit import models
    from prunekit.surgery import history

    _check_record(arch)
    if arch.get("factory") is None:
        if base is None:
            raise PrunekitError("the architecture record is relative to a user's own network (no zoo factory); "
                                "pass model= (a fresh instance of that network) to rebuild it")
        history.replay(base, arch.get("history", []))
        return _apply_overrides(base, arch.get("overrides", {}), device)
    if not isinstance(arch.get("factory"), dict):
        raise PrunekitError("architecture record is malformed (no factory)")
    factory = arch["factory"]
    name, kwargs = factory.get("name"), factory.get("kwargs", {})
    if not isinstance(name, str) or not isinstance(kwargs, dict):
        raise PrunekitError("architecture record is malformed (factory name / kwargs)")
    for k, v in kwargs.items():
        _check_json_scalar(v, f"factory.kwargs.{k}")
    if not all(isinstance(k, str) and k.isidentifier() for k in kwargs):
        raise PrunekitError("architecture record is malformed (factory kwargs names)")
    with torch.device(device):
        try:
            model = models.create(name, **kwargs)
        except PrunekitError:
            raise
        except Exception as exc:  # hostile kwargs reach the factory: any failure is bad input
            raise PrunekitError(f"cannot build zoo model {name[:100]!r} with {str(kwargs)[:200]}: "
                                f"{str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}"
                                ) from None
    history.replay(model, arch.get("history", []))
    return _apply_overrides(model, arch.get("overrides", {}), device)


def _apply_overrides(model: nn.Module, overrides: Any, device: str | torch.device) -> nn.Module:
    """Replace the named modules of ``model`` by the (validated) specs of an architecture record."""
    if not isinstance(overrides, dict) or len(overrides) > _MAX_SPECS:
        raise PrunekitError("architecture record is malformed (overrides)")
    budget = [_MAX_SPECS]
    with torch.device(device):
        for mod_name, spec in overrides.items():
            parts = mod_name.split(".") if isinstance(mod_name, str) else []
            if not parts or not all(_plain_name(p) for p in parts):
                raise PrunekitError(f"architecture names a malformed layer {str(mod_name)[:100]!r}")
            try:
                parent = model.get_submodule(mod_name.rpartition(".")[0])
            except AttributeError:
                raise PrunekitError(f"architecture names a layer {mod_name[:100]!r} the model does not have"
                                    ) from None
            if parts[-1] not in parent._modules and hasattr(parent, parts[-1]):
                raise PrunekitError(f"architecture names a layer {mod_name[:100]!r} that would replace an "
                                    "attribute of the model")
            set_submodule(model, mod_name, build_module(spec, mod_name, budget))
    return model


# ---------------------------------------------------------------------------------------------------------
# nested state <-> (tensors, JSON)


def flatten_state(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace every tensor in a nested dict/list structure by a reference, collecting tensors by key.

    Non-string dict keys (an optimizer's integer parameter ids) survive through ``{"__items__": ...}``.
    """
    if isinstance(obj, torch.Tensor):
        key = f"{prefix}"
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: flatten_state(v, f"{prefix}/{k}", tensors) for k, v in obj.items()}
        return {"__items__": [[k, flatten_state(v, f"{prefix}/{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, list | tuple):
        out = [flatten_state(v, f"{prefix}/{i}", tensors) for i, v in enumerate(obj)]
        return {"__tuple__": out} if isinstance(obj, tuple) else out
    if isinstance(obj, float) and not math.isfinite(obj):
        return {"__float__": repr(obj)}
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} at {prefix} in a checkpoint")


def unflatten_state(obj: Any, tensors: dict[str, torch.Tensor], _depth: int = 0) -> Any:
    """Inverse of :func:`flatten_state`; a malformed document is a :class:`PrunekitError`."""
    if _depth > _MAX_STATE_DEPTH:
        raise PrunekitError(f"checkpoint state is nested more than {_MAX_STATE_DEPTH} deep")
    d = _depth + 1
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            key = obj["__tensor__"]
            if not isinstance(key, str) or key not in tensors:
                raise PrunekitError(f"checkpoint refers to a tensor {str(key)[:100]!r} it does not hold")
            return tensors[key]
        if set(obj) == {"__items__"}:
            items = obj["__items__"]
            if not isinstance(items, list) or not all(
                    isinstance(kv, list) and len(kv) == 2 and isinstance(kv[0], str | int | float | bool)
                    and kv[0] is not None for kv in items):
                raise PrunekitError("checkpoint state is malformed (__items__)")
            return {k: unflatten_state(v, tensors, d) for k, v in items}
        if set(obj) == {"__tuple__"}:
            if not isinstance(obj["__tuple__"], list):
                raise PrunekitError("checkpoint state is malformed (__tuple__)")
            return tuple(unflatten_state(v, tensors, d) for v in obj["__tuple__"])
        if set(obj) == {"__float__"}:
            if obj["__float__"] not in ("nan", "inf", "-inf"):
                raise PrunekitError(f"checkpoint state is malformed (__float__ {str(obj['__float__'])[:50]!r})")
            return float(obj["__float__"])
        return {k: unflatten_state(v, tensors, d) for k, v in obj.items()}
    if isinstance(obj, list):
        return [unflatten_state(v, tensors, d) for v in obj]
    return obj


def write_safetensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Atomically write tensors plus a JSON document (in the safetensors metadata) to ``path``."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"prunekit": json.dumps(meta)})


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a file written by :func:`write_safetensors`; any defect becomes one clear PrunekitError."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise PrunekitError(f"{path}: no such file")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # safetensors raises its own error types for every kind of corruption
        if _looks_pickled(path):
            raise PrunekitError(f"{path}: this is a pickle / torch.save file, which can run arbitrary code when "
                                "loaded; prunekit reads only safetensors model files and refuses it") from None
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise PrunekitError(f"{path}: not a valid safetensors file ({first})") from None
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise PrunekitError(f"{path}: safetensors metadata is malformed")
    try:
        doc = json.loads(meta.get("prunekit", "null"))
    except (json.JSONDecodeError, RecursionError):
        raise PrunekitError(f"{path}: prunekit metadata is not valid JSON (or nested too deeply)") from None
    if not isinstance(doc, dict):
        raise PrunekitError(f"{path}: not a prunekit file (no prunekit metadata)")
    return tensors, doc


def _looks_pickled(path: Path) -> bool:
    """Whether the file starts like a torch.save zip archive or a raw pickle (checked only after safetensors
    refused it: a valid safetensors header length can start with the same bytes)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(8).startswith(_PICKLE_MAGIC)
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------------------
# public save / load


def save(model: nn.Module, path: str | os.PathLike, extra: dict[str, Any] | None = None,
         base: nn.Module | None = None) -> Path:
    """Save ``model`` (pruned or not) to one safetensors file that :func:`load` rebuilds without its code.

    For a user's own network pass ``base`` (the network as built, before pruning): the file then records
    the structural changes made since (:mod:`prunekit.surgery.history`), and ``load(path, model=YourNet())``
    replays them on a fresh instance, whatever its module types, before loading the weights by name.
    """
    path = Path(path)
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    arch = architecture(model, base=base)
    tensors = {k: v for k, v in model.state_dict().items()}
    write_safetensors(path, tensors, {"format": FORMAT, "architecture": arch, "extra": extra or {}})
    return path


def load(path: str | os.PathLike, model: nn.Module | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """Load a model saved by :func:`save`, rebuilding its (pruned) architecture from the file.

    A sparse file (:func:`prunekit.surgery.save_sparse`) loads too, as the dense network it encodes. For a
    user's own (non-zoo) network pass ``model``, a fresh instance: when the file recorded pruned shapes
    (``save(..., base=...)``) they are rebuilt on it first, then the weights are loaded in place.

    Nothing is allocated beyond what the model needs: the structure is rebuilt and checked on the ``meta``
    device (every tensor's shape, and one shape pass through the whole network) before any layer is
    materialised.
    """
    tensors, doc = read_safetensors(path)
    if doc.get("format") == "prunekit-sparse/1":
        from prunekit.surgery.sparse import load_sparse

        return load_sparse(path, model=model, device=device)
    if doc.get("format") != FORMAT:
        raise PrunekitError(f"{path}: not a prunekit model file (format {_esc(doc.get('format'))}, want {FORMAT})")
    return model_from_state(tensors, doc.get("architecture"), str(path), model=model, device=device)


def _esc(v: Any, n: int = 100) -> str:
    """An untrusted value, escaped and cut, for a one-line message."""
    return ascii(v)[:n]


class Prepared:
    """A file's network rebuilt and checked on the ``meta`` device, ready to receive its weights.

    ``expected`` maps every state-dict key to the shape and dtype the network needs: sparse files check
    their entries against it before decoding any.
    """

    def __init__(self, structure: nn.Module, arch: Any, where: str, model: nn.Module | None) -> None:
        self.structure, self.arch, self.where, self.model = structure, arch, where, model
        self.expected = {k: (tuple(v.shape), v.dtype) for k, v in structure.state_dict().items()}

    def check(self, shapes: dict[str, tuple[tuple[int, ...], torch.dtype]]) -> None:
        """Refuse (one line) unless ``shapes`` has exactly the expected keys, shapes and dtypes."""
        missing = sorted(set(self.expected) - set(shapes))
        unexpected = sorted(set(shapes) - set(self.expected))
        if missing or unexpected:
            raise PrunekitError(f"{self.where}: weights do not fit the architecture (missing {_esc(missing[:3])}, "
                                f"unexpected {_esc(unexpected[:3])})")
        for k, (shape, dtype) in self.expected.items():
            if tuple(shapes[k][0]) != shape or shapes[k][1] != dtype:
                raise PrunekitError(f"{self.where}: tensor {_esc(k)} has shape {tuple(shapes[k][0])} "
                                    f"{shapes[k][1]}, the architecture needs {shape} {dtype}")

    def materialise(self, tensors: dict[str, torch.Tensor], device: str | torch.device = "cpu") -> nn.Module:
        """The network with ``tensors`` loaded (checked first); allocates only what the tensors hold."""
        self.check({k: (tuple(v.shape), v.dtype) for k, v in tensors.items()})
        arch, model = self.arch, self.model
        if model is None:
            model = self.structure  # built on meta from the zoo factory: take the file's tensors as they are
            load_state(model, tensors, self.where, assign=True)
            remember_factory(model, arch["factory"])
        else:
            if isinstance(arch, dict) and arch.get("factory") is None:
                from prunekit.surgery import history

                history.replay(model, arch.get("history", []))  # the same ops the meta twin took
                _apply_overrides(model, arch.get("overrides", {}), "meta")
                for name in arch.get("overrides", {}):  # checked against the file: bounded by its size
                    model.get_submodule(name).to_empty(device="cpu")
            load_state(model, tensors, self.where)
        return model.to(device).eval()


def prepare(arch: Any, where: str, model: nn.Module | None = None,
            input_shape: tuple[int, ...] | None = None) -> Prepared:
    """Rebuild the network a file describes on the ``meta`` device and check that it runs (a shape pass).

    ``model`` (a user's network) is not touched here: its record is replayed on a meta twin. The shape pass
    runs on ``input_shape`` (one sample, without the batch dimension), else the zoo model's
    ``input_shape``, else the shapes the last structural change was made with; with none known it is
    skipped.
    """
    batch_shapes: list[tuple[int, ...]] | None = None
    if model is None:
        if arch is None:
            raise PrunekitError(f"{where}: holds no architecture (not a zoo model); pass model= to load into")
        _check_record(arch)
        if arch.get("factory") is None:
            raise PrunekitError(f"{where}: the architecture record is relative to a user's own network (no zoo "
                                "factory); pass model= (a fresh instance of that network) to rebuild it")
        structure = build_from_architecture(arch, device="meta")
    else:
        rebuilds = isinstance(arch, dict) and arch.get("factory") is None and bool(
            arch.get("history") or arch.get("overrides"))
        try:
            structure = _twin(model, "model")
        except PrunekitError:
            if rebuilds:
                raise
            structure = model  # only its state-dict shapes are read below: nothing is changed or allocated
        if isinstance(arch, dict) and arch.get("factory") is None:
            _check_record(arch)
            structure = build_from_architecture(arch, device="meta", base=structure)
            for op in reversed(arch.get("history") or []):  # validated by the replay just done
                if isinstance(op, dict) and op.get("input_shapes"):
                    if isinstance(op["input_shapes"], list):  # positional inputs (keyword ones: no pass)
                        batch_shapes = [tuple(s) for s in op["input_shapes"]]
                    break
    if input_shape is None:
        input_shape = getattr(structure, "input_shape", None)
    if input_shape is not None:
        batch_shapes = [(1, *input_shape)]
    if batch_shapes is not None and structure is not model:
        shape_pass(structure, batch_shapes, where, strict=model is None)
    return Prepared(structure, arch, where, model)


class _Tracker:
    """The modules being executed, outermost first (see :func:`layer_tracker`)."""

    def __init__(self, model: nn.Module) -> None:
        self.names = {id(m): n for n, m in model.named_modules()}
        self.types = {n: type(m).__name__ for n, m in model.named_modules()}
        self.stack: list[str] = []

    @property
    def failed(self) -> str | None:
        """After an exception: the innermost named layer that was running (None: the top level)."""
        inner = [n for n in self.stack if n]
        return inner[-1] if inner else None

    @property
    def failed_type(self) -> str:
        return self.types.get(self.failed or "", "?")


@contextlib.contextmanager
def layer_tracker(model: nn.Module) -> Iterator[_Tracker]:
    """Track which layer of ``model`` is running, so an exception in a forward pass can name it."""
    tr = _Tracker(model)

    def pre(m: nn.Module, _args: Any) -> None:
        tr.stack.append(tr.names.get(id(m), ""))

    def post(m: nn.Module, _args: Any, _out: Any) -> None:
        if tr.stack:
            tr.stack.pop()

    handles = []
    for m in model.modules():
        handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    try:
        yield tr
    finally:
        for h in handles:
            h.remove()


def _twin(model: nn.Module, what: str) -> nn.Module:
    """A structural copy of ``model`` on the meta device (see :func:`prunekit.surgery.graph.meta_twin`)."""
    from prunekit.surgery.graph import meta_twin

    try:
        return meta_twin(model)
    except Exception as exc:  # an attribute deepcopy cannot copy (a lock, an open file, ...)
        raise PrunekitError(f"cannot copy the {what} network to rebuild its pruned shapes safely "
                            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''!a})"
                            ) from None


def shape_pass(model: nn.Module, shapes: list[tuple[int, ...]], where: str, strict: bool = True) -> None:
    """Run ``model`` (on the meta device) on empty inputs of ``shapes``: every layer must accept what the
    previous one produces. A failure is one PrunekitError naming the innermost layer that failed. With
    ``strict`` False an operation that has no meta implementation (data-dependent Python in a user's
    forward) makes the pass inconclusive rather than a refusal."""
    xs = [torch.empty(s, device="meta") for s in shapes]
    modes = [(m, m.training) for m in model.modules()]
    try:
        with layer_tracker(model) as tr, torch.no_grad():
            model.eval()
            try:
                model(*xs)
            except Exception as exc:
                msg = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
                if not strict and ("meta" in msg.lower() or isinstance(exc, NotImplementedError)):
                    return
                layer = f"layer {_esc(tr.failed)} ({tr.failed_type})" if tr.failed else "the top-level forward"
                raise PrunekitError(f"{where}: the network does not run on inputs of shape "
                                    f"{', '.join(str(tuple(s)) for s in shapes)}: {layer} fails: "
                                    f"{ascii(msg)[1:-1]}") from None
    finally:
        for m, t in modes:
            m.training = t


def model_from_state(tensors: dict[str, torch.Tensor], arch: Any, where: str, model: nn.Module | None = None,
                     device: str | torch.device = "cpu") -> nn.Module:
    """The network a file describes: rebuilt from its architecture record, or ``model`` (a user's network,
    given the record's pruned shapes first) with the weights loaded. Shared by dense and sparse files."""
    return prepare(arch, where, model).materialise(tensors, device)


def load_state(model: nn.Module, tensors: dict[str, torch.Tensor], where: str, assign: bool = False) -> None:
    """``load_state_dict(strict=True)`` with every mismatch reported as one PrunekitError line."""
    own = model.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    if missing or unexpected:
        raise PrunekitError(f"{where}: weights do not fit the architecture (missing {_esc(missing[:3])}, "
                            f"unexpected {_esc(unexpected[:3])})")
    for k, v in own.items():
        if tuple(v.shape) != tuple(tensors[k].shape) or v.dtype != tensors[k].dtype:
            raise PrunekitError(f"{where}: tensor {_esc(k)} has shape {tuple(tensors[k].shape)} "
                                f"{tensors[k].dtype}, the architecture needs {tuple(v.shape)} {v.dtype}")
    model.load_state_dict(tensors, strict=True, assign=assign)
    leftovers = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftovers:
        raise PrunekitError(f"{where}: no values for {leftovers[:3]}")
