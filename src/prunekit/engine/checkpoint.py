"""Training checkpoints: one safetensors file (weights, optimizer and method tensors, RNG states) whose
metadata holds the JSON part (position, history, architecture). Written atomically; never pickled.

A checkpoint whose weights hold NaN or inf is never written (the last good one stays on disk), and a
checkpoint read back is checked for the structure the trainer restores from, so a damaged or forged file
is one :class:`PrunekitError`, not a crash half-way through a resume.
"""

from __future__ import annotations

import math
import os
import reprlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from prunekit import io
from prunekit.atomic import sweep_stale
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


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Write ``state`` (nested dicts/lists of JSON values and tensors) atomically to ``path``.

    Refuses (PrunekitError naming the step) when ``state["model"]`` holds NaN or inf, so a diverged run never
    replaces the last good checkpoint with a bad one.
    """
    bad = _nonfinite_tensor(state)
    if bad is not None:
        pos: dict[str, Any] = state["position"] if isinstance(state.get("position"), dict) else {}
        raise PrunekitError(
            f"weights became NaN/inf ({bad}) at epoch {pos.get('epoch', '?')} step {pos.get('step', '?')}: "
            f"not writing the checkpoint, the last good one ({path}) is intact; lower the learning rate "
            "(optim.lr) or check the data")
    tensors: dict[str, torch.Tensor] = {}
    doc = io.flatten_state(state, "s", tensors)
    io.write_safetensors(path, tensors, {"format": FORMAT, "state": doc})
    return Path(path)


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
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


# Optimizer hyperparameters read back from a checkpoint are data from a file: a learning rate, momentum or
# decay is a finite number of a size that trains (float32 overflows near 3.4e38, so 1e308 would be inf at the
# first step), a flag is a flag, a tag is short text. Anything else is forged or damaged.
MAX_HYPER = 1e6  # far above any learning rate, momentum or decay that trains
_NUMERIC_KEYS = frozenset({"lr", "initial_lr", "momentum", "dampening", "weight_decay", "eps", "alpha", "lr_decay",
                           "gamma", "mu", "nu", "rho", "initial_accumulator_value"})
_FLAG_KEYS = frozenset({"nesterov", "maximize", "foreach", "differentiable", "fused", "capturable", "amsgrad",
                        "decoupled_weight_decay", "nonnegative", "flat"})


def _hyper_ok(v: Any) -> bool:
    return _is_num(v) and abs(v) <= MAX_HYPER


def _group_problem(g: dict[str, Any]) -> str | None:
    """Why one optimizer parameter group cannot be trusted (None when it can)."""
    for key, v in g.items():
        if key == "params":
            continue
        if key in _NUMERIC_KEYS:
            if not _hyper_ok(v):
                return f"{key} is {reprlib.repr(v)}, not a finite number up to {MAX_HYPER:g}"
        elif key in _FLAG_KEYS:
            if not (v is None or isinstance(v, bool)):
                return f"{key} is {reprlib.repr(v)}, not true/false"
        elif isinstance(v, list | tuple):
            if len(v) > 8 or not all(_hyper_ok(x) for x in v):
                return f"{key} is {reprlib.repr(v)}, not a few finite numbers"
        elif isinstance(v, str):
            if len(v) > 100 or not v.isprintable():
                return f"{key} is {reprlib.repr(v)}, not a short name"
        elif not (v is None or isinstance(v, bool) or _hyper_ok(v)):
            return f"{key} is {reprlib.repr(v)}, not a finite number up to {MAX_HYPER:g}"
    return None


def _state_problem(o: dict[str, Any], shapes: set[tuple[int, ...]]) -> str | None:
    """Why one optimizer's per-parameter state cannot be trusted: an entry for a parameter no group holds, a
    buffer that is not a finite float tensor of some weight's shape, a count that is not a finite number."""
    ids = {i for g in o["param_groups"] for i in g["params"]}
    for pid, entry in o["state"].items():
        if pid not in ids or not isinstance(entry, dict):
            return f"state for parameter {reprlib.repr(pid)}, which no parameter group holds"
        for key, v in entry.items():
            if isinstance(v, torch.Tensor):
                if v.dim() == 0 and key == "step":
                    ok = v.dtype.is_floating_point or not v.dtype.is_complex
                else:
                    ok = v.dtype.is_floating_point and tuple(v.shape) in shapes
                if not ok or (v.dtype.is_floating_point and not bool(torch.isfinite(v).all())):
                    return (f"{key} of parameter {pid} is a {v.dtype} tensor of shape {list(v.shape)}, not a finite "
                            "float tensor shaped like a weight")
            elif not (_hyper_ok(v) or (key == "step" and _is_num(v))):
                return f"{key} of parameter {pid} is {reprlib.repr(v)}"
    return None


def check_trainer_state(path: str | os.PathLike[str], st: dict[str, Any]) -> None:
    """Check the parts of a :class:`~prunekit.engine.Trainer` checkpoint that a resume relies on."""
    def need(cond: bool, what: str) -> None:
        if not cond:
            raise PrunekitError(f"{path}: checkpoint is malformed ({what}); it was not written by this prunekit "
                                "or is damaged: start a new output folder")

    # untrusted values: Any, each checked by need() before it is used
    pos: Any = st.get("position")
    need(isinstance(pos, dict) and all(type(pos.get(k)) is int and 0 <= pos[k] < 2**53 for k in _POSITION_KEYS),
         "position")
    need(isinstance(st.get("stages"), list) and all(isinstance(s, dict) for s in st["stages"]), "stages")
    need(pos["stage_index"] <= len(st["stages"]), "position beyond the schedule")
    model: Any = st.get("model")
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
    shapes = {tuple(t.shape) for t in model.values()}
    for k, o in enumerate(opts):
        for g in o["param_groups"]:
            why = _group_problem(g)
            need(why is None, f"optimizer {k}: {why}")
        why = _state_problem(o, shapes)
        need(why is None, f"optimizer {k}: {why}")
    base = st.get("base_lrs", [])
    need(isinstance(base, list) and all(isinstance(b, list) and all(_hyper_ok(x) and x >= 0 for x in b) for b in base),
         f"base learning rates are not finite numbers in [0, {MAX_HYPER:g}]")
    if "base_lrs" in st and "optimizers" in st:
        need(len(base) == len(opts) and all(len(b) == len(o["param_groups"]) for b, o in zip(base, opts, strict=True)),
             "base learning rates do not match the optimizers")
    need(_hyper_ok(st.get("built_lr", 0.0)), f"learning rate is not a finite number up to {MAX_HYPER:g}")
    need(isinstance(st.get("callbacks", []), list) and all(isinstance(c, dict) for c in st.get("callbacks", [])),
         "callback states")
    need(isinstance(st.get("history", []), list), "history")
    rng: Any = st.get("rng")
    ref = torch.get_rng_state()
    need(isinstance(rng, dict) and isinstance(rng.get("torch"), torch.Tensor)
         and rng["torch"].dtype == ref.dtype and rng["torch"].shape == ref.shape, "RNG state")
    cuda = rng.get("cuda")
    need(cuda is None or (isinstance(cuda, list) and all(isinstance(t, torch.Tensor) and t.dtype == torch.uint8
                                                        and t.dim() == 1 for t in cuda)), "CUDA RNG state")


def check_fits_data(path: str | os.PathLike[str], model: torch.nn.Module, input_shape: tuple[int, ...],
                    num_classes: int, forward: Callable[[torch.nn.Module, torch.Tensor], Any] | None = None) -> None:
    """Refuse (one PrunekitError) a model restored from a checkpoint that cannot take the run's data.

    One forward pass of a sample of ``input_shape`` (C, H, W) through a meta-device twin of the model (no
    memory, no arithmetic; one real zero sample where the forward reads values, e.g. SSS's factors): the
    network must accept it and give at least ``num_classes`` logits. ``forward``
    is how the loop calls the model and reads its logits (default: ``model(x)``). A forged checkpoint's
    architecture (another input size, fewer classes) is refused here instead of failing inside the first
    training step. Call it right after the model is rebuilt from ``state["architecture"]``.
    """
    from prunekit.surgery import meta_twin

    def run(m: torch.nn.Module, x: torch.Tensor) -> Any:
        return forward(m, x) if forward is not None else m(x)

    try:
        with torch.no_grad():
            try:
                out = run(meta_twin(model), torch.empty((1, *input_shape), device="meta"))
            except RuntimeError as exc:  # a forward that reads values (e.g. ``.item()``) cannot run on meta:
                if "meta" not in str(exc):  # one real sample then, in eval mode (no statistics change)
                    raise
                was = model.training
                try:
                    out = run(model.eval(), torch.zeros((1, *input_shape)))
                finally:
                    model.train(was)
    except (RuntimeError, ValueError, TypeError, IndexError, NotImplementedError, AttributeError) as exc:
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise PrunekitError(f"{path}: the checkpoint's network does not take this run's {tuple(input_shape)} inputs "
                            f"({first}); resume with the data it was trained on or start a new output folder"
                            ) from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[1] < num_classes:
        got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise PrunekitError(f"{path}: the checkpoint's network gives outputs {got} for {num_classes} classes; "
                            "resume with the data it was trained on or start a new output folder")
