"""Training checkpoints: one safetensors file (weights, optimizer and method tensors, RNG states) whose
metadata holds the JSON part (position, history, architecture). Written atomically; never pickled."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from prunekit import io
from prunekit.errors import PrunekitError

FORMAT = "prunekit-checkpoint/1"


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` (nested dicts/lists of JSON values and tensors) atomically to ``path``."""
    tensors: dict[str, torch.Tensor] = {}
    doc = io.flatten_state(state, "s", tensors)
    io.write_safetensors(path, tensors, {"format": FORMAT, "state": doc})
    return Path(path)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; a damaged file is one PrunekitError."""
    tensors, doc = io.read_safetensors(path)
    if doc.get("format") != FORMAT:
        raise PrunekitError(f"{path}: not a prunekit checkpoint (format {doc.get('format')!r})")
    state = io.unflatten_state(doc.get("state"), tensors)
    if not isinstance(state, dict):
        raise PrunekitError(f"{path}: checkpoint state is malformed")
    return state
