"""Pruning methods as plug-ins: ``prunekit.methods.get(name)`` returns the method class.

Built-in names resolve lazily, so a broken optional dependency of one method never breaks the others.
"""

from __future__ import annotations

import importlib

from prunekit.errors import PrunekitError
from prunekit.methods.api import FinalizeResult, MethodConfig, PruningMethod, TrainingLoop

# name -> "module:Class". The four papers first, then the peers they are compared with.
_BUILTIN: dict[str, str] = {
    "iht": "prunekit.methods.iht:IHT",
    "trimming": "prunekit.methods.trimming:NetworkTrimming",
    "sss": "prunekit.methods.sss:SparseStructureSelection",
    "sght": "prunekit.methods.sght:SGHT",
    # peers
    "magnitude": "prunekit.methods.peers.magnitude:OneShotMagnitude",
    "dsd": "prunekit.methods.peers.dsd:DenseSparseDense",
    "slimming": "prunekit.methods.peers.slimming:NetworkSlimming",
    "tp-bnscale": "prunekit.methods.peers.tp_bnscale:TPBNScale",
    "l1-filter": "prunekit.methods.peers.l1_filter:L1FilterPruning",
    "sfp": "prunekit.methods.peers.sfp:SoftFilterPruning",
    "tp-magnitude": "prunekit.methods.peers.tp_magnitude:TPMagnitude",
    # controls every comparison needs
    "random-filter": "prunekit.methods.peers.random_filter:RandomFilterPruning",
    "torch-global": "prunekit.methods.peers.torch_global:TorchGlobalMagnitude",
}
_REGISTERED: dict[str, type[PruningMethod]] = {}


def register(cls: type[PruningMethod]) -> type[PruningMethod]:
    """Class decorator: make a user's own method available by ``cls.name``."""
    _REGISTERED[cls.name] = cls
    return cls


def unregister(name: str) -> None:
    """Forget a method registered with :func:`register` (built-ins stay)."""
    _REGISTERED.pop(name, None)


def register_builtin(name: str, target: str) -> None:
    """Add a lazily imported built-in (``"module:Class"``)."""
    _BUILTIN[name] = target


def names() -> list[str]:
    """Every method name, built-in and registered."""
    return sorted(set(_BUILTIN) | set(_REGISTERED))


def get(name: str) -> type[PruningMethod]:
    """The method class called ``name``."""
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name not in _BUILTIN:
        raise PrunekitError(f"unknown method {name!r}; choose one of: {', '.join(names())}")
    module, _, cls = _BUILTIN[name].partition(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise PrunekitError(f"method {name!r} is not available in this installation ({exc})") from None
    return getattr(mod, cls)


__all__ = ["FinalizeResult", "MethodConfig", "PruningMethod", "TrainingLoop", "get", "names", "register",
           "register_builtin", "unregister"]
