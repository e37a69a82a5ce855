"""Depth pruning: replace whole residual blocks by their activation.

A block computes ``act(branch(x) + shortcut(x))``. When its shortcut is the identity and its branch has
been driven to zero (SSS block factors), the block equals ``act(x)``, so replacing it by a fresh ``act``
is exact. A block whose shortcut changes the shape (stride or width) cannot be removed.

Recognised blocks: prunekit's ``ResidualBlock`` protocol (children ``branch``, ``shortcut``, ``act``) and
torchvision's ``BasicBlock`` / ``Bottleneck`` (``conv1``, ``bn1``, ..., ``relu``, ``downsample``).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

from torch import nn

from prunekit.errors import PrunekitError
from prunekit.io import set_submodule
from prunekit.surgery.structured import SurgeryReport, count_params


def block_kind(m: nn.Module) -> str | None:
    """'residual' (prunekit protocol), 'torchvision' (BasicBlock / Bottleneck), or None."""
    kids = dict(m.named_children())
    if {"branch", "shortcut", "act"} <= set(kids):
        return "residual"
    if {"conv1", "bn1", "conv2", "bn2", "relu"} <= set(kids) and hasattr(m, "downsample"):
        return "torchvision"
    return None


def _identity_shortcut(m: nn.Module, kind: str) -> bool:
    if kind == "residual":
        sc = m.shortcut
        return isinstance(sc, nn.Identity) or (isinstance(sc, nn.Sequential) and len(sc) == 0)
    return m.downsample is None


def _fresh_act(act: nn.Module) -> nn.Module:
    """A copy of the block's activation that never works in place (the block input may be saved for
    backward by the layer before it)."""
    new = copy.deepcopy(act)
    if hasattr(new, "inplace"):
        new.inplace = False
    return new


def residual_blocks(model: nn.Module) -> list[str]:
    """Names of every recognised residual block, in module order."""
    return [n for n, m in model.named_modules() if n and block_kind(m) is not None]


def removable_blocks(model: nn.Module) -> list[str]:
    """Names of the blocks :func:`remove_blocks` accepts (identity shortcut)."""
    out = []
    for n in residual_blocks(model):
        m = model.get_submodule(n)
        kind = block_kind(m)
        if kind is not None and _identity_shortcut(m, kind):
            out.append(n)
    return out


def remove_blocks(model: nn.Module, names: Iterable[str]) -> SurgeryReport:
    """Replace each named residual block (identity shortcut) by its activation, in place.

    Raises :class:`PrunekitError` naming the block when a name is unknown, is not a residual block, or
    has a projection shortcut; nothing is changed in that case.
    """
    if isinstance(names, str):
        names = [names]
    names = list(dict.fromkeys(names))
    report = SurgeryReport(params_before=count_params(model))
    todo: list[tuple[str, nn.Module]] = []
    for name in names:
        if not isinstance(name, str) or not name:
            raise PrunekitError(f"remove_blocks: {name!r} is not a block name")
        try:
            m = model.get_submodule(name)
        except AttributeError:
            raise PrunekitError(f"remove_blocks: the model has no module {name!r}") from None
        if any(name.startswith(other + ".") for other in names if other != name):
            raise PrunekitError(f"remove_blocks: {name!r} lies inside another block being removed")
        kind = block_kind(m)
        if kind is None:
            raise PrunekitError(f"remove_blocks: {name!r} ({type(m).__name__}) is not a residual block "
                                "(needs branch/shortcut/act, or torchvision's BasicBlock/Bottleneck)")
        if not _identity_shortcut(m, kind):
            raise PrunekitError(f"remove_blocks: block {name!r} has a projection shortcut that changes the "
                                "shape of its input; it cannot be removed")
        act = m.act if kind == "residual" else m.relu
        todo.append((name, _fresh_act(act)))
    for name, new in todo:
        set_submodule(model, name, new)
        report.blocks[name] = type(new).__name__
    report.params_after = count_params(model)
    if report.blocks:  # for replay on a fresh instance (prunekit.io.save with base=)
        from prunekit.surgery.history import record

        record(model, {"op": "blocks", "names": list(report.blocks), "input_shapes": []})
    return report
