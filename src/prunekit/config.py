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

An unknown key anywhere is rejected with the list of valid keys. ``train.batch_size`` is the global batch:
under ``torchrun`` it is split across the processes, so a config means the same run on any number of them.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from typing import Any

from prunekit import configio
from prunekit.configio import parse_value, short
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


def _merge(base: dict[str, Any], new: dict[str, Any], path: str = "") -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in new.items():
        where = f"{path}{k}"
        if path == "method." or (tuple(where.split(".")[:2]) in _FREE_FORM):
            out[k] = v
            continue
        if k not in base:
            raise PrunekitError(f"unknown config key {short(where)}; valid keys here: {', '.join(sorted(base))}")
        if isinstance(base[k], dict):
            if not isinstance(v, dict):
                raise PrunekitError(f"config key {short(where)} must be a mapping, got {short(v)}")
            out[k] = _merge(base[k], v, where + ".")
        else:
            out[k] = v
    return out


def complete(partial: dict[str, Any]) -> dict[str, Any]:
    """``partial`` (a mapping of sections) filled in with the defaults; unknown keys are an error."""
    return _merge(DEFAULTS, partial)


def apply_override(cfg: dict[str, Any], assignment: str) -> None:
    """Apply one ``key.sub=value`` override in place."""
    if "=" not in assignment:
        raise PrunekitError(f"--set {short(assignment)}: expected key=value, e.g. --set optim.lr=0.05")
    key, _, raw = assignment.partition("=")
    parts = key.strip().split(".")
    node = cfg
    for i, p in enumerate(parts[:-1]):
        if p not in node or not isinstance(node[p], dict):
            here = ".".join(parts[: i + 1])
            if p in node:
                raise PrunekitError(f"--set {short(key)}: {short(here)} is {short(node[p])}, not a section "
                                    "(a mapping of keys)")
            raise PrunekitError(f"--set {short(key)}: no section {short(here)}; valid keys: "
                                f"{', '.join(sorted(map(str, node)))}")
        node = node[p]
    leaf = parts[-1]
    free = parts[0] == "method" or tuple(parts[:2]) in _FREE_FORM
    if leaf not in node and not free:
        raise PrunekitError(f"--set {short(key)}: unknown key {short(leaf)}; valid keys here: "
                            f"{', '.join(sorted(node))}")
    node[leaf] = parse_value(raw)


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    """Read a YAML config (or the defaults), apply overrides, validate, and return the full config."""
    user = configio.read_yaml(path) if path is not None else {}
    cfg = _merge(DEFAULTS, user)
    for o in overrides or []:
        apply_override(cfg, o)
    train = cfg.get("train")
    if isinstance(train, dict):
        for key in ("amp", "channels_last"):
            if key in train:
                train[key] = _toggle(train[key])
    validate(cfg)
    return cfg


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


_TOGGLES = ("auto", "on", "off")
_MAX_INT = 2**31  # counts (epochs, steps, sizes) beyond this are typos, and would overflow downstream


def _toggle(v: Any) -> Any:
    """YAML reads ``on`` / ``off`` / ``true`` as booleans: map them back to the engine's words."""
    if isinstance(v, bool):
        return "on" if v else "off"
    if isinstance(v, str) and v.lower() in ("true", "false", "bf16", "yes", "no"):
        return "on" if v.lower() in ("true", "bf16", "yes") else "off"
    return v


def validate(cfg: dict[str, Any]) -> None:
    """Type and range checks that give one clear line per mistake, naming the key and its valid range.

    Runs before any data are loaded or any training starts. The method's own options are checked by the
    method's ``Config`` (``config_from_dict``).
    """
    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise PrunekitError(f"config: {msg}")

    def count(section: dict[str, Any], key: str, minimum: int, where: str) -> None:
        if key in section:
            v = section[key]
            need(_is_int(v) and minimum <= v <= _MAX_INT,
                 f"{where}.{key} must be an integer in [{minimum}, {_MAX_INT}], got {short(v)}")

    def number(section: dict[str, Any], key: str, where: str, lo: float, hi: float | None = None,
               lo_open: bool = False, hi_open: bool = False) -> None:
        if key not in section:
            return
        v = section[key]
        ok = _is_num(v) and (v > lo if lo_open else v >= lo) and (hi is None or (v < hi if hi_open else v <= hi))
        rng = f"{'(' if lo_open else '['}{lo:g}, {'inf)' if hi is None else f'{hi:g}' + (')' if hi_open else ']')}"
        need(ok, f"{where}.{key} must be a number in {rng}, got {short(v)}")

    need(isinstance(cfg, dict), "a config must be a mapping of sections")
    for sec in ("model", "data", "train", "optim", "method"):
        need(isinstance(cfg.get(sec), dict), f"{sec} must be a mapping, got {short(cfg.get(sec))}")
    need(_is_int(cfg.get("seed")) and 0 <= cfg["seed"] < 2**63,
         f"seed must be an integer in [0, 2**63), got {short(cfg.get('seed'))}")
    for key in ("out", "pretrained"):
        need(cfg.get(key) is None or (isinstance(cfg[key], str) and cfg[key].strip() != ""),
             f"{key} must be a path (string) or null, got {short(cfg.get(key))}")
    t, o, m, d = cfg["train"], cfg["optim"], cfg["method"], cfg["data"]
    count(t, "epochs", 0, "train")
    need("epochs" in t, "train.epochs is missing")
    count(t, "batch_size", 1, "train")
    count(t, "eval_batch_size", 1, "train")
    count(t, "checkpoint_every_steps", 0, "train")
    count(t, "eval_every", 1, "train")
    count(t, "max_steps_per_epoch", 0, "train")
    for key in ("amp", "channels_last"):
        if key in t:
            need(t[key] in _TOGGLES, f"train.{key} must be one of {', '.join(_TOGGLES)}, got {short(t[key])}")
    if "quiet" in t:
        need(isinstance(t["quiet"], bool), f"train.quiet must be true or false, got {short(t['quiet'])}")
    if "device" in t:
        dev = t["device"]
        ok = isinstance(dev, str) and dev.strip() != ""
        if ok and dev != "auto":
            import torch

            try:
                torch.device(dev)
            except (RuntimeError, ValueError, TypeError):
                ok = False
        need(ok, f"train.device must be auto, cpu, cuda or cuda:N, got {short(dev)}")
    number(o, "lr", "optim", 0.0, None, lo_open=True)
    number(o, "momentum", "optim", 0.0, 1.0, hi_open=True)
    number(o, "weight_decay", "optim", 0.0)
    number(o, "gamma", "optim", 0.0, 1.0, lo_open=True)
    number(o, "warmup_epochs", "optim", 0.0)
    for key in ("lr", "momentum", "weight_decay", "schedule"):
        need(key in o, f"optim.{key} is missing")
    if "nesterov" in o:
        need(isinstance(o["nesterov"], bool), f"optim.nesterov must be true or false, got {short(o['nesterov'])}")
    from prunekit.engine.stages import SCHEDULES

    need(isinstance(o["schedule"], str) and o["schedule"] in SCHEDULES,
         f"optim.schedule must be one of {', '.join(SCHEDULES)}, got {short(o['schedule'])}")
    ms = o.get("milestones")
    need(ms is None or (isinstance(ms, list) and all(_is_int(x) and 0 <= x <= _MAX_INT for x in ms)),
         f"optim.milestones must be a list of epochs (integers >= 0), got {short(ms)}")
    if isinstance(ms, list) and ms:
        need(ms == sorted(set(ms)), f"optim.milestones must be increasing, got {short(ms)}")
    need(isinstance(cfg["model"].get("name"), str) and cfg["model"]["name"] != "", "model.name must be a string")
    need(isinstance(cfg["model"].get("kwargs", {}) or {}, dict), "model.kwargs must be a mapping")
    need(isinstance(d.get("name"), str) and d["name"] != "", "data.name must be a string")
    count(d, "subset", 0, "data")
    count(d, "test_subset", 0, "data")
    if "root" in d:
        need(d["root"] is None or (isinstance(d["root"], str) and d["root"] != ""),
             f"data.root must be a folder (string) or null, got {short(d['root'])}")
    if "download" in d:
        need(isinstance(d["download"], bool), f"data.download must be true or false, got {short(d['download'])}")
    if "augment" in d:
        from prunekit.data.pipeline import RECIPES

        need(d["augment"] is None or d["augment"] == "default" or d["augment"] in RECIPES,
             f"data.augment must be default, null or one of {', '.join(RECIPES)}, got {short(d['augment'])}")
    need(isinstance(m.get("name"), str), "method.name must be a string")
    if m["name"] != "none":
        from prunekit import methods

        cls = methods.get(m["name"])
        options = {k: v for k, v in m.items() if k != "name"}
        need(all(isinstance(k, str) for k in options),
             f"method option names must be strings, got {short(list(options))}")
        try:
            cls.config_from_dict(options)
        except PrunekitError:
            raise
        except (TypeError, ValueError, KeyError, AttributeError, ArithmeticError) as exc:
            # a method's own range check tripped over a value of the wrong type
            need(False, f"method {short(m['name'])}: an option has a value of the wrong type ({exc}); "
                        f"valid options: {', '.join(cls.config_keys())}")
        _check_layer_names(cfg)


_LAYER_OPTIONS = ("layers", "exclude", "layer_keep")


def _check_layer_names(cfg: dict[str, Any]) -> None:
    """Layer names / glob patterns in the method options must name layers of the model.

    Checked on the zoo model built on the meta device (no memory, no data), so a typo fails before any
    data are loaded or any epoch is trained. The method's own, finer check (which layer types it accepts)
    still runs when it sees the model.
    """
    import fnmatch

    m = cfg["method"]
    given = {k: m[k] for k in _LAYER_OPTIONS if m.get(k)}
    name = cfg["model"]["name"]
    if not given or cfg.get("pretrained") or name.startswith("torchvision:"):
        return
    import torch

    from prunekit import models

    try:
        with torch.device("meta"):
            model = models.create(name, **(cfg["model"].get("kwargs") or {}))
    except Exception:  # the model's own errors are reported where it is built, with the data's shapes
        return
    names = [n for n, _ in model.named_modules() if n]
    for key, value in given.items():
        patterns = list(value) if isinstance(value, dict | list | tuple) else [value]
        for pat in patterns:
            if isinstance(pat, str) and not any(fnmatch.fnmatchcase(n, pat) for n in names):
                shown = ", ".join(n for n in names if "." not in n) if len(names) > 40 else ", ".join(names)
                raise PrunekitError(f"config: method.{key}: {short(pat)} matches no layer of {name}; "
                                    f"its layers are: {shown}")


dump = configio.dump
