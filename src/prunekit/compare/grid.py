"""The grid of a comparison: every row (method x target x sweep point x seed) with its full experiment
config, planned and validated before anything trains; every row gets the same total training."""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from prunekit import config as pconfig
from prunekit.compare.config import RESERVED, base_config
from prunekit.errors import PrunekitError


@dataclass
class Row:
    """One grid point of one seed: what to run and where."""

    label: str  # "sght@macs=0.3", "sss[gamma_channel=0.03]", "dense"
    method: str
    seed: int
    cfg: dict[str, Any]  # the full experiment config
    start: str  # "dense" (from the seed's dense network) | "scratch"
    target_kind: str | None = None
    target: float | None = None
    epochs: int = 0  # total training epochs of this row (dense start included for "dense" rows)
    key: str = ""
    dir: Path = field(default_factory=Path)


def run_key(exp: dict[str, Any]) -> str:
    """A short hash of everything that changes a run's result except the seed (seeds are sub-folders)."""
    c = copy.deepcopy(exp)
    c["train"].pop("quiet", None)
    c.pop("out", None)
    c.pop("seed", None)
    return hashlib.sha256(json.dumps(c, sort_keys=True, default=str).encode()).hexdigest()[:8]


def slug(label: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_.=" else "_" for ch in label)


def fit_epochs(method: Any, budget: int) -> tuple[int, int]:
    """The ``epochs`` argument whose stages add up to ``budget`` (else the largest that stays below)."""
    best = None
    for e in range(budget, 0, -1):
        try:
            total = sum(s.epochs for s in method.stages(e))
        except PrunekitError:
            continue
        if total == budget:
            return e, total
        if total < budget and (best is None or total > best[1]):
            best = (e, total)
    if best is None:
        raise PrunekitError(f"method {method.name!r}: no schedule fits a budget of {budget} epochs; raise "
                            "budget_epochs or set its phase lengths")
    return best


def plan(cfg: dict[str, Any], dense_model: Callable[[int], nn.Module] | None = None) -> list[Row]:
    """Every row of the grid (dense starting points excluded), validated before anything trains.

    ``dense_model(seed)`` gives a network of the dense architecture (needed to translate a params target
    into an unstructured keep ratio); by default the base config's model.
    """
    from prunekit import experiment
    from prunekit import methods as pmethods

    base = base_config(cfg)
    out = Path(cfg["out"] or f"runs/compare/{cfg['name']}")
    budget, dense_epochs = cfg["budget_epochs"], cfg["dense_epochs"]
    reference: nn.Module | None = None

    def ref() -> nn.Module:
        nonlocal reference
        if reference is None:
            if dense_model is not None:
                reference = dense_model(cfg["seeds"][0])
            else:
                train, _ = experiment.load_data({**base, "data": {**base["data"], "subset": 0, "test_subset": 0}})
                reference = experiment.build_model(base, train)
        return reference

    rows: list[Row] = []
    for seed in cfg["seeds"]:
        for name, opts in cfg["methods"].items():
            opts = dict(opts or {})
            kinds, start, sweep = (opts.pop(k, None) for k in RESERVED)
            if name == "dense":
                exp = copy.deepcopy(base)
                exp["seed"], exp["train"]["epochs"] = seed, budget
                rows.append(Row("dense", "dense", seed, exp, "dense", epochs=dense_epochs + budget))
                continue
            cls = pmethods.get(name)
            start = start if start not in (None, "auto") else ("scratch" if cls.starts_from_scratch else "dense")
            points: list[tuple[str, dict[str, Any], str | None, float | None]] = []
            supported = cls.budget_knobs
            for t in cfg["targets"]:
                kind, frac = ("latency", t["latency"]) if "latency" in t else next(iter(t.items()))
                if kind in supported and (kinds is None or kind in kinds):
                    if kind == "latency":  # with its runtime / batch / threads (defaults filled in)
                        extra_opts = cls.latency_options(t, opts)
                        settings = ",".join(f"{p}{t[k]}" for k, p in (("runtime", ""), ("batch", "b"),
                                                                       ("threads", "t"), ("round_to", "r"),
                                                                       ("tol", "tol"))
                                            if k in t)  # e.g. sght@latency=0.5[onnxruntime,b1,t1]
                        points.append((f"{name}@latency={frac:g}" + (f"[{settings}]" if settings else ""),
                                       extra_opts, kind, float(frac)))
                        continue
                    points.append((f"{name}@{kind}={frac:g}", cls.target_options(kind, float(frac), ref(), opts),
                                   kind, float(frac)))
            if not points and not supported:
                points.append((name, {}, None, None))  # its own settings
            if sweep:  # every point once per combination of the swept options
                keys = list(sweep)
                combos = [dict(zip(keys, values, strict=True))
                          for values in itertools.product(*(sweep[k] for k in keys))]
                points = [(f"{label}[{','.join(f'{k}={v}' for k, v in combo.items())}]", {**extra, **combo}, kind,
                           frac) for label, extra, kind, frac in points for combo in combos]
            if not points:
                raise PrunekitError(f"compare config: methods.{name} runs at {' or '.join(sorted(supported))} "
                                    "targets only and none of the targets (or of its kinds) is one; add such a "
                                    "target or a sweep")
            for label, extra, kind, frac in points:
                total = budget if start == "dense" else dense_epochs + budget
                defaults = {**cls.default_options(total), **(cls.from_trained_options if start == "dense" else {})}
                options = {**defaults, **opts, **extra}
                method = cls(options)
                e, fitted = fit_epochs(method, total)
                exp = copy.deepcopy(base)
                exp["seed"], exp["train"]["epochs"] = seed, e
                exp["method"] = {"name": name, **options}
                pconfig.validate(exp)
                rows.append(Row(label, name, seed, exp, start, kind, frac,
                                epochs=fitted + (dense_epochs if start == "dense" else 0)))
    for r in rows:  # a row from the dense start also depends on how that start was trained
        r.key = run_key({**r.cfg, "_start": r.start, "_dense_epochs": dense_epochs if r.start == "dense" else 0})
        r.dir = out / "runs" / f"{slug(r.label)}-{r.key}" / f"seed{r.seed}"
    return rows
