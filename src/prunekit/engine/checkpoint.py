"""Training checkpoints: one safetensors file (weights, optimizer and method tensors, RNG states) whose
metadata holds the JSON part (position, history, architecture). Written atomically; never pickled.

A checkpoint whose weights hold NaN or inf is never written (the last good one stays on disk), and a
checkpoint read back is checked for the structure the trainer restores from, so a damaged or forged file
is one :class:`PrunekitError`, not a crash half-way through a resume.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch

from prunekit import io
from prunekit._atomic import sweep_stale
from prunekit.errors import PrunekitError

FORMAT = "prunekit-checkpoint/1"
_POSITION_KEYS = ("stage_index", "stage_epoch", "epoch", "step", "batch_in_epoch")


def _nonfinite_tensor(state: dict[str, Any]) -> str | None:
    """The name of the first model tensor holding NaN or inf, or None."""
    model = state.get("model")
    if not isinstance(model, dict):
        return None
    for key, t in model.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return str(key)
    return None


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` (nested dicts/lists of JSON values and tensors) atomically to ``path``.

    Refuses (PrunekitError naming the step) when ``state["model"]`` holds NaN or inf, so a diverged run never
    replaces the last good checkpoint with a bad one.
    """
    bad = _nonfinite_tensor(state)
    if bad is not None:
        pos = state.get("position") if isinstance(state.get("position"), dict) else {}
        raise PrunekitError(
            f"weights became NaN/inf ({bad}) at epoch {pos.get('epoch', '?')} step {pos.get('step', '?')}: "
            f"not writing the checkpoint, the last good one ({path}) is intact; lower the learning rate "
            "(optim.lr) or check the data")
    tensors: dict[str, torch.Tensor] = {}
    doc = io.flatten_state(state, "s", tensors)
    io.write_safetensors(path, tensors, {"format": FORMAT, "state": doc})
    return Path(path)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; a damaged file is one PrunekitError.

    Reading a checkpoint means a run resumes in its folder: temporary files that a killed writer left there
    (``.log.jsonl.<pid>-<random>.tmp`` and the like) are removed first.
    """
    sweep_stale(Path(path).parent, legacy=True)
    tensors, doc = io.read_safetensors(path)
    if doc.get("format") != FORMAT:
        raise PrunekitError(f"{path}: not a prunekit checkpoint (format {doc.get('format')!r})")
    state = io.unflatten_state(doc.get("state"), tensors)
    if not isinstance(state, dict):
        raise PrunekitError(f"{path}: checkpoint state is malformed")
    if "position" in state:
        check_trainer_state(path, state)
    return state


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def check_trainer_state(path: str | os.PathLike, st: dict[str, Any]) -> None:
    """Check the parts of a :class:`~prunekit.engine.Trainer` checkpoint that a resume relies on."""
    def need(cond: bool, what: str) -> None:
        if not cond:
            raise PrunekitError(f"{path}: checkpoint is malformed ({what}); it was not written by this prunekit "
                                "or is damaged: start a new output folder")

    pos = st.get("position")
    need(isinstance(pos, dict) and all(type(pos.get(k)) is int and 0 <= pos[k] < 2**53 for k in _POSITION_KEYS),
         "position")
    need(isinstance(st.get("stages"), list) and all(isinstance(s, dict) for s in st["stages"]), "stages")
    need(pos["stage_index"] <= len(st["stages"]), "position beyond the schedule")
    model = st.get("model")
    need(isinstance(model, dict) and all(isinstance(v, torch.Tensor) for v in model.values()), "model weights")
    need(st.get("architecture") is None or isinstance(st["architecture"], dict), "architecture")
    if pos["stage_index"] < len(st["stages"]):
        epochs = st["stages"][pos["stage_index"]].get("epochs")
        need(type(epochs) is int and pos["stage_epoch"] <= epochs, "position beyond its stage")
    opts = st.get("optimizers", [])
    need(isinstance(opts, list) and all(
        isinstance(o, dict) and isinstance(o.get("state"), dict) and isinstance(o.get("param_groups"), list)
        and all(isinstance(g, dict) and isinstance(g.get("params"), list)
                and all(type(i) is int for i in g["params"]) for g in o["param_groups"])
        for o in opts), "optimizer states")
    base = st.get("base_lrs", [])
    need(isinstance(base, list) and all(isinstance(b, list) and all(_is_num(x) for x in b) for b in base),
         "base learning rates")
    if "base_lrs" in st and "optimizers" in st:
        need(len(base) == len(opts) and all(len(b) == len(o["param_groups"]) for b, o in zip(base, opts, strict=True)),
             "base learning rates do not match the optimizers")
    need(_is_num(st.get("built_lr", 0.0)), "learning rate")
    need(isinstance(st.get("callbacks", []), list) and all(isinstance(c, dict) for c in st.get("callbacks", [])),
         "callback states")
    need(isinstance(st.get("history", []), list), "history")
    rng = st.get("rng")
    ref = torch.get_rng_state()
    need(isinstance(rng, dict) and isinstance(rng.get("torch"), torch.Tensor)
         and rng["torch"].dtype == ref.dtype and rng["torch"].shape == ref.shape, "RNG state")
    cuda = rng.get("cuda")
    need(cuda is None or (isinstance(cuda, list) and all(isinstance(t, torch.Tensor) and t.dtype == torch.uint8
                                                        and t.dim() == 1 for t in cuda)), "CUDA RNG state")
