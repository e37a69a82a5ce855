"""Experiment configs: YAML files with a fixed schema, ``--set key=value`` overrides, strict validation.

Schema (every key optional; defaults below)::

    seed: 0
    out: runs/<name>                # output folder (checkpoint, log, model, report)
    pretrained: null                # a prunekit model file to start from instead of a fresh init
    model:  {name: lenet5, kwargs: {}}
    data:   {name: digits, root: null, subset: 0, test_subset: 0, augment: default, download: false}
    train:  {epochs: 10, batch_size: 128, eval_batch_size: 512, device: auto, amp: auto,
             channels_last: auto, checkpoint_every_steps: 0, eval_every: 1, max_steps_per_epoch: 0,
             quiet: false}
    optim:  {lr: 0.1, momentum: 0.9, nesterov: true, weight_decay: 5e-4, schedule: step,
             milestones: null, gamma: 0.1, warmup_epochs: 0}
    method: {name: none, ...the method's own options (see ``prunekit.methods.get(name).config_keys()``)}

An unknown key anywhere is rejected with the list of valid keys.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
from pathlib import Path
from typing import Any

import yaml

from prunekit.engine.trainer import OptimConfig, TrainerConfig
from prunekit.errors import PrunekitError

_TRAIN_KEYS = {f.name: f.default for f in dataclasses.fields(TrainerConfig) if f.name != "seed"}
_TRAIN_KEYS.pop("batch_size")
_TRAIN_KEYS.pop("eval_batch_size")

DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "out": None,
    "pretrained": None,
    "model": {"name": "lenet5", "kwargs": {}},
    "data": {"name": "digits", "root": None, "subset": 0, "test_subset": 0, "augment": "default",
             "download": False},
    "train": {"epochs": 10, "batch_size": 128, "eval_batch_size": 512, **_TRAIN_KEYS},
    "optim": {f.name: f.default for f in dataclasses.fields(OptimConfig)},
    "method": {"name": "none"},
}
_FREE_FORM = {("model", "kwargs")}  # validated by the model factory itself


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``5e-4`` as a float (YAML 1.1 wants ``5.0e-4``; people write ``5e-4``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def _yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: no arbitrary objects


def _merge(base: dict[str, Any], new: dict[str, Any], path: str = "") -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in new.items():
        where = f"{path}{k}"
        if path == "method." or (tuple(where.split(".")[:2]) in _FREE_FORM):
            out[k] = v
            continue
        if k not in base:
            raise PrunekitError(f"unknown config key {where!r}; valid keys here: {', '.join(sorted(base))}")
        if isinstance(base[k], dict):
            if not isinstance(v, dict):
                raise PrunekitError(f"config key {where!r} must be a mapping, got {v!r}")
            out[k] = _merge(base[k], v, where + ".")
        else:
            out[k] = v
    return out


def parse_value(text: str) -> Any:
    """A ``--set`` value is parsed as YAML (``0.05`` -> float, ``[30, 60]`` -> list, ``null`` -> None)."""
    try:
        return _yaml(text)
    except yaml.YAMLError:
        return text


def apply_override(cfg: dict[str, Any], assignment: str) -> None:
    """Apply one ``key.sub=value`` override in place."""
    if "=" not in assignment:
        raise PrunekitError(f"--set {assignment!r}: expected key=value, e.g. --set optim.lr=0.05")
    key, _, raw = assignment.partition("=")
    parts = key.strip().split(".")
    node = cfg
    for i, p in enumerate(parts[:-1]):
        if p not in node or not isinstance(node[p], dict):
            here = ".".join(parts[: i + 1])
            raise PrunekitError(f"--set {key}: no section {here!r}; valid keys: {', '.join(sorted(node))}")
        node = node[p]
    leaf = parts[-1]
    free = parts[0] == "method" or tuple(parts[:2]) in _FREE_FORM
    if leaf not in node and not free:
        raise PrunekitError(f"--set {key}: unknown key {leaf!r}; valid keys here: {', '.join(sorted(node))}")
    node[leaf] = parse_value(raw)


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    """Read a YAML config (or the defaults), apply overrides, validate, and return the full config."""
    user: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise PrunekitError(f"{p}: config file not found")
        try:
            user = _yaml(p.read_text()) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise PrunekitError(f"{p}: not valid YAML{where} ({getattr(exc, 'problem', exc)})") from None
        except UnicodeDecodeError:
            raise PrunekitError(f"{p}: not a text file") from None
        if not isinstance(user, dict):
            raise PrunekitError(f"{p}: a config must be a YAML mapping of sections")
    cfg = _merge(DEFAULTS, user)
    for o in overrides or []:
        apply_override(cfg, o)
    validate(cfg)
    return cfg


def validate(cfg: dict[str, Any]) -> None:
    """Type and range checks that give one clear line per mistake."""
    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise PrunekitError(f"config: {msg}")

    need(isinstance(cfg["seed"], int), "seed must be an integer")
    t, o, m = cfg["train"], cfg["optim"], cfg["method"]
    need(isinstance(t["epochs"], int) and t["epochs"] >= 0, "train.epochs must be an integer >= 0")
    need(isinstance(t["batch_size"], int) and t["batch_size"] > 0, "train.batch_size must be a positive integer")
    need(isinstance(o["lr"], int | float) and o["lr"] > 0, "optim.lr must be a positive number")
    need(isinstance(o["weight_decay"], int | float) and o["weight_decay"] >= 0, "optim.weight_decay must be >= 0")
    need(isinstance(o["momentum"], int | float) and 0 <= o["momentum"] < 1, "optim.momentum must be in [0, 1)")
    from prunekit.engine.stages import SCHEDULES

    need(o["schedule"] in SCHEDULES, f"optim.schedule must be one of {', '.join(SCHEDULES)}")
    need(o["milestones"] is None or (isinstance(o["milestones"], list)
                                     and all(isinstance(x, int) for x in o["milestones"])),
         "optim.milestones must be a list of epochs")
    need(isinstance(cfg["model"].get("name"), str), "model.name must be a string")
    need(isinstance(cfg["model"].get("kwargs", {}), dict), "model.kwargs must be a mapping")
    need(isinstance(cfg["data"].get("name"), str), "data.name must be a string")
    need(isinstance(m, dict) and isinstance(m.get("name"), str), "method.name must be a string")
    if m["name"] != "none":
        from prunekit import methods

        cls = methods.get(m["name"])
        cls.config_from_dict({k: v for k, v in m.items() if k != "name"})


def dump(cfg: dict[str, Any]) -> str:
    """The config as YAML (saved beside every run so it can be repeated)."""
    return yaml.safe_dump(cfg, sort_keys=False)
