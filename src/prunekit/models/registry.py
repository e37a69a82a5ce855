"""Name -> factory registry (the timm idiom): ``@register("name")`` on a factory, ``create("name", **kw)``."""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from prunekit.errors import PrunekitError
from prunekit.io import remember_factory

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
TORCHVISION_PREFIX = "torchvision:"

F = TypeVar("F", bound=Callable[..., nn.Module])


def register(name: str) -> Callable[[F], F]:
    """Decorator: make the factory function available as ``create(name, ...)``.

    Factories take keyword arguments with JSON-compatible defaults only (they are stored in saved models).
    """
    if not isinstance(name, str) or not name or name.startswith(TORCHVISION_PREFIX):
        raise ValueError(f"invalid model name {name!r}")

    def deco(fn: F) -> F:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise ValueError(f"model {name!r} is already registered (by {_REGISTRY[name].__module__})")
        _REGISTRY[name] = fn
        return fn

    return deco


def names() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_REGISTRY)


def describe(name: str) -> str:
    """The documentation of model ``name`` (architecture, source paper, parameter count)."""
    return inspect.getdoc(_factory(name)) or ""


def options(name: str) -> list[str]:
    """The keyword arguments zoo model ``name`` accepts (e.g. ``num_classes``, ``input_size``)."""
    return list(inspect.signature(_factory(name)).parameters)


def _factory(name: str) -> Callable[..., nn.Module]:
    fn = _REGISTRY.get(name) if isinstance(name, str) else None
    if fn is None:
        raise PrunekitError(f"unknown model {name!r}; valid names: {', '.join(names())} "
                            f"(or '{TORCHVISION_PREFIX}<name>' where torchvision is installed)")
    return fn


def _json_kwargs(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    try:
        return json.loads(json.dumps(kwargs, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise PrunekitError(f"model {name!r}: arguments must be JSON values (numbers, strings, booleans, "
                            f"lists), got {kwargs!r} ({exc})") from None


def create(name: str, **kwargs: Any) -> nn.Module:
    """Build zoo model ``name`` (on the current default device, so ``with torch.device("meta"):`` works).

    The model remembers how it was made (:func:`prunekit.io.remember_factory`, read back by
    :func:`prunekit.io.factory_of`): :func:`prunekit.io.save` uses it to rebuild the architecture without pickle.
    """
    if isinstance(name, str) and name.startswith(TORCHVISION_PREFIX):
        model = _create_torchvision(name[len(TORCHVISION_PREFIX):], _json_kwargs(name, kwargs))
    else:
        fn = _factory(name)
        stored = _json_kwargs(name, kwargs)
        params = inspect.signature(fn).parameters
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            raise PrunekitError(f"model {name!r} has no argument(s) {', '.join(unknown)}; "
                                f"valid arguments: {', '.join(params)}")
        try:
            model = fn(**stored)
        except PrunekitError:
            raise
        except (TypeError, ValueError) as exc:
            raise PrunekitError(f"cannot build model {name!r} with {stored}: {exc}") from None
        kwargs = stored
    remember_factory(model, {"name": name, "kwargs": dict(kwargs)})
    return model


def _create_torchvision(arch: str, kwargs: dict[str, Any]) -> nn.Module:
    """A torchvision model (randomly initialised; no downloads), when torchvision imports beside this torch."""
    try:
        import torchvision
    except Exception as exc:  # a torchvision built for another torch fails with assorted error types
        raise PrunekitError(f"model '{TORCHVISION_PREFIX}{arch}' needs torchvision, which does not import "
                            f"here ({type(exc).__name__}); use a prunekit zoo model: {', '.join(names())}"
                            ) from None
    available = torchvision.models.list_models()
    if arch not in available:
        raise PrunekitError(f"unknown torchvision model {arch!r}; valid names: {', '.join(available)}")
    if kwargs.get("weights") is not None:
        raise PrunekitError(f"model '{TORCHVISION_PREFIX}{arch}': pretrained weights are not fetched by "
                            "prunekit (no network); omit 'weights' and load a checkpoint instead")
    try:
        return torchvision.models.get_model(arch, **kwargs)
    except (TypeError, ValueError) as exc:
        raise PrunekitError(f"cannot build torchvision model {arch!r} with {kwargs}: {exc}") from None
