"""The record of every structural change made to a network, so it can be replayed on a fresh instance.

Each successful :func:`~prunekit.surgery.remove_channels` / :func:`~prunekit.surgery.remove_blocks` call
appends one JSON-able operation to the root module it was given:

* ``{"op": "channels", "removed": {root_layer: [channel, ...]}, "input_shapes": [[...], ...]}``: the
  resolved removal (after ``clamp`` / ``round_to``), in the numbering the layers had before that call;
* ``{"op": "blocks", "names": [block, ...], "input_shapes": [...]}``;
* ``{"op": "branches", "names": [branch layer, ...], "input_shapes": [...]}`` (:func:`remove_branches`).

Replaying the operations in order on an unpruned instance of the same network class rebuilds the pruned
shapes whatever its module types, so saving a pruned user network needs no registration of its classes
and loading it executes nothing from the file: :func:`replay` treats the operations as untrusted JSON and
checks every type, name, index and shape before it calls the surgery functions.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from prunekit.errors import PrunekitError

ATTR = "_prunekit_surgery"
MAX_OPS = 10_000  # operations one record may hold
MAX_INPUTS = 8  # example input tensors per operation
MAX_DIMS = 8
MAX_INPUT_ELEMENTS = 2**24  # elements of all example inputs of one operation together (64 MB as float32)
_KEYS = {"channels": {"op", "removed", "input_shapes", "num_heads"}, "blocks": {"op", "names", "input_shapes"},
         "branches": {"op", "names", "input_shapes"}}
MAX_HEADS = 2**16


def record(model: nn.Module, op: dict[str, Any]) -> None:
    """Append one structural operation (JSON-able dict with an ``"op"`` key) to ``model``'s history."""
    ops = model.__dict__.setdefault(ATTR, [])
    ops.append(copy.deepcopy(op))


def history(model: nn.Module) -> list[dict[str, Any]]:
    """A copy of the structural operations applied to ``model`` so far (oldest first)."""
    return copy.deepcopy(model.__dict__.get(ATTR, []))


# ---------------------------------------------------------------------------------------------------------
# validation of untrusted records


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _width(m: nn.Module) -> int | None:
    for attr in ("out_channels", "out_features", "num_features", "num_channels", "num_parameters"):
        v = getattr(m, attr, None)
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    shape = getattr(m, "normalized_shape", None)
    if isinstance(m, nn.LayerNorm) and isinstance(shape, tuple) and len(shape) == 1:
        return int(shape[0])
    return None


def _short(v: Any) -> str:
    """A short, escaped rendering of an untrusted value for a one-line message."""
    return ascii(v)[:80]


def _check_shapes(where: str, shapes: Any) -> list[tuple[int, ...]] | dict[str, tuple[int, ...]]:
    """Shapes of positional inputs (a list) or of keyword inputs (``{name: shape}``), bounded in size."""
    if isinstance(shapes, dict):
        if not 1 <= len(shapes) <= MAX_INPUTS or not all(isinstance(k, str) and k.isidentifier() for k in shapes):
            raise PrunekitError(f"{where}: input_shapes must name 1 to {MAX_INPUTS} keyword inputs")
        return dict(zip(shapes, _check_shapes(where, list(shapes.values())), strict=True))
    if not isinstance(shapes, list) or not 1 <= len(shapes) <= MAX_INPUTS:
        raise PrunekitError(f"{where}: input_shapes must be a list of 1 to {MAX_INPUTS} shapes")
    out, total = [], 0
    for s in shapes:
        if (not isinstance(s, list) or not 1 <= len(s) <= MAX_DIMS
                or not all(_int(d) and 1 <= d <= MAX_INPUT_ELEMENTS for d in s)):
            raise PrunekitError(f"{where}: bad input shape {_short(s)}")
        total += math.prod(s)
        if total > MAX_INPUT_ELEMENTS:
            raise PrunekitError(f"{where}: example inputs of {total:,}+ elements exceed the bound of "
                                f"{MAX_INPUT_ELEMENTS:,}")
        out.append(tuple(s))
    return out


def _check_heads(where: str, heads: Any, modules: dict[str, nn.Module]) -> dict[str, int]:
    if not isinstance(heads, dict) or not heads or len(heads) > len(modules):
        raise PrunekitError(f"{where}: num_heads must map module names to head counts")
    for name, n in heads.items():
        if not isinstance(name, str) or not name or name not in modules:
            raise PrunekitError(f"{where}: num_heads names no module of the model ({_short(name)})")
        if not _int(n) or not 1 <= n <= MAX_HEADS:
            raise PrunekitError(f"{where}: num_heads[{name!r}] must be an integer from 1 to {MAX_HEADS}")
    return dict(heads)


def _check_channels(where: str, model: nn.Module, removed: Any, modules: dict[str, nn.Module]
                    ) -> dict[str, list[int]]:
    if not isinstance(removed, dict) or not removed or len(removed) > len(modules):
        raise PrunekitError(f"{where}: 'removed' must map layer names to channel lists")
    plan: dict[str, list[int]] = {}
    for name, idxs in removed.items():
        if not isinstance(name, str) or not name or name not in modules:
            raise PrunekitError(f"{where}: the model has no layer {_short(name)}")
        width = _width(modules[name])
        if not isinstance(idxs, list) or not idxs or not all(_int(i) for i in idxs):
            raise PrunekitError(f"{where}: layer {name!r}: channels must be a non-empty list of integers")
        if len(set(idxs)) != len(idxs):
            raise PrunekitError(f"{where}: layer {name!r}: a channel is listed twice")
        bound = width if width is not None else 2**31
        bad = [i for i in idxs if not 0 <= i < bound]
        if bad:
            raise PrunekitError(f"{where}: layer {name!r}: channel {_short(bad[0])} is out of range "
                                f"({width} channels)")
        if width is not None and len(idxs) >= width:
            raise PrunekitError(f"{where}: layer {name!r}: removes all {width} channels")
        plan[name] = list(idxs)
    return plan


def _check_blocks(where: str, names: Any, modules: dict[str, nn.Module]) -> list[str]:
    if not isinstance(names, list) or not names or len(names) > len(modules):
        raise PrunekitError(f"{where}: 'names' must be a non-empty list of block names")
    for n in names:
        if not isinstance(n, str) or not n or n not in modules:
            raise PrunekitError(f"{where}: the model has no block {_short(n)}")
    if len(set(names)) != len(names):
        raise PrunekitError(f"{where}: a block is listed twice")
    return list(names)


def validate(model: nn.Module, op: Any, where: str = "structural change") -> dict[str, Any]:
    """Check one untrusted operation against ``model`` as it is now; return it in canonical form."""
    if not isinstance(op, dict) or op.get("op") not in _KEYS:
        raise PrunekitError(f"{where}: not a structural operation (want op 'channels' or 'blocks')")
    kind = op["op"]
    extra = set(op) - _KEYS[kind]
    if extra:
        raise PrunekitError(f"{where}: unexpected fields {_short(sorted(map(str, extra))[:5])}")
    modules = dict(model.named_modules())
    shapes = op.get("input_shapes")
    if kind == "channels":
        plan = _check_channels(where, model, op.get("removed"), modules)
        if shapes in (None, [], {}):
            raise PrunekitError(f"{where}: made with example inputs that were not tensors, so it cannot be replayed")
        out = {"op": kind, "removed": plan, "input_shapes": _check_shapes(where, shapes)}
        if "num_heads" in op:
            out["num_heads"] = _check_heads(where, op["num_heads"], modules)
        return out
    names = _check_blocks(where, op.get("names"), modules)
    return {"op": kind, "names": names,
            "input_shapes": None if shapes in (None, [], {}) else _check_shapes(where, shapes)}


def validate_all(ops: Any) -> list[Any]:
    """The structure of a record (a list of at most :data:`MAX_OPS` objects); ops are checked on replay."""
    if not isinstance(ops, list) or len(ops) > MAX_OPS:
        raise PrunekitError(f"the structural history must be a list of at most {MAX_OPS:,} operations")
    return ops


# ---------------------------------------------------------------------------------------------------------
# replay


def example_inputs(model: nn.Module, shapes: list[tuple[int, ...]] | dict[str, tuple[int, ...]], seed: int = 0
                   ) -> Any:
    """Inputs of ``shapes`` for a replay (a tensor, a tuple, or keyword inputs for a dict of shapes): empty
    on a meta model, seeded random values otherwise."""
    ref = next(iter(list(model.parameters()) + list(model.buffers())), None)
    device = ref.device if ref is not None else torch.device("cpu")
    dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
    gen = torch.Generator().manual_seed(seed)

    def one(s: tuple[int, ...]) -> torch.Tensor:
        if device.type == "meta":
            return torch.empty(s, device="meta", dtype=dtype)
        return torch.randn(s, generator=gen, dtype=dtype).to(device)

    if isinstance(shapes, dict):
        return {k: one(s) for k, s in shapes.items()}
    xs = [one(s) for s in shapes]
    return xs[0] if len(xs) == 1 else tuple(xs)


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def replay(model: nn.Module, ops: Any) -> nn.Module:
    """Apply recorded structural operations to ``model`` (an unpruned instance of the network), in place.

    ``ops`` comes from a file: every operation is validated against the model as it stands before that
    operation (types, names that exist, channel ranges, bounded input shapes), then replayed with
    :func:`~prunekit.surgery.remove_channels` / :func:`~prunekit.surgery.remove_blocks` on example inputs
    of the recorded shapes. Works on a ``meta`` model too (nothing allocated). Any failure is one
    :class:`PrunekitError` naming the operation.
    """
    from prunekit.surgery import remove_blocks, remove_channels

    ops = validate_all(ops)
    # the surgery functions' optional keywords, read once: blocks may take example inputs, channels head
    # counts. The numerical check (removal equals masking) ran when the change was made on the real weights;
    # a replay only rebuilds shapes (on meta, or on a fresh instance whose weights the file then replaces),
    # so it is skipped: the shapes are checked against the file, and the network by a shape pass at load
    ch_kw: dict[str, Any] = {}
    bl_kw: dict[str, Any] = {}
    for fn, kw in ((remove_channels, ch_kw), (remove_blocks, bl_kw)):
        if _accepts(fn, "check"):
            kw["check"] = False
    blocks_take_inputs = _accepts(remove_blocks, "example_inputs")
    channels_take_heads = _accepts(remove_channels, "num_heads")
    for i, raw in enumerate(ops):
        where = f"structural change {i + 1} of {len(ops)}"
        op = validate(model, raw, where)
        try:
            if op["op"] == "channels":
                x = example_inputs(model, op["input_shapes"])
                kw = dict(ch_kw)
                if "num_heads" in op:
                    if not channels_take_heads:
                        raise PrunekitError("this prunekit cannot replay head counts (num_heads)")
                    kw["num_heads"] = op["num_heads"]
                rep = remove_channels(model, op["removed"], x, **kw)
                if sorted(rep.removed.items()) != sorted(op["removed"].items()):
                    raise PrunekitError(f"removed {_short(rep.removed)} instead of {_short(op['removed'])}")
            elif op["op"] == "branches":
                from prunekit.surgery.blocks import remove_branches

                if op["input_shapes"] is None:
                    raise PrunekitError("a branch removal needs its example input shapes")
                remove_branches(model, op["names"], example_inputs(model, op["input_shapes"]), check=False)
            else:
                kw = dict(bl_kw)
                if blocks_take_inputs and op["input_shapes"] is not None:
                    kw["example_inputs"] = example_inputs(model, op["input_shapes"])
                remove_blocks(model, op["names"], **kw)
        except PrunekitError as exc:
            raise PrunekitError(f"{where} cannot be replayed on this network: {exc}") from None
        except Exception as exc:  # anything a hostile record provokes in the user's own forward
            first = str(exc).splitlines()[0][:200] if str(exc) else ""
            raise PrunekitError(f"{where} cannot be replayed on this network ({type(exc).__name__}: "
                                f"{ascii(first)[1:-1]})") from None
    return model
