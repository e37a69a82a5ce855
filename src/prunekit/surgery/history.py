"""The record of every structural change made to a network, so it can be replayed on a fresh instance.

Each successful :func:`~prunekit.surgery.remove_channels` / :func:`~prunekit.surgery.remove_blocks` call
appends one JSON-able operation to the root module it was given:

* ``{"op": "channels", "removed": {root_layer: [channel, ...]}, "input_shapes": [[...], ...]}``: the
  resolved removal (after ``clamp`` / ``round_to``), in the numbering the layers had before that call;
* ``{"op": "blocks", "names": [block, ...], "input_shapes": [...]}``.

Replaying the operations in order on an unpruned instance of the same network class rebuilds the pruned
shapes whatever its module types, so saving a pruned user network needs no registration of its classes
and loading it executes nothing from the file.
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

ATTR = "_prunekit_surgery"


def record(model: nn.Module, op: dict[str, Any]) -> None:
    """Append one structural operation (JSON-able dict with an ``"op"`` key) to ``model``'s history."""
    ops = model.__dict__.setdefault(ATTR, [])
    ops.append(copy.deepcopy(op))


def history(model: nn.Module) -> list[dict[str, Any]]:
    """A copy of the structural operations applied to ``model`` so far (oldest first)."""
    return copy.deepcopy(model.__dict__.get(ATTR, []))
