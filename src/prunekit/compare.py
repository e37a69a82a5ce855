"""The comparison harness: every method and its peers on one model and dataset, at the same budget.

``prunekit compare CONFIG`` answers "which method, at what size, costs me how much accuracy and buys how much
speed?" with one grid run:

* per seed, one dense network is trained (``dense_epochs``) and saved: the shared starting point;
* every method that starts from a trained network (IHT, Network Trimming, L1-filter, ...) starts from that
  file and trains ``budget_epochs`` more; every method its paper trains from scratch (SSS, SGHT, SFP,
  Network Slimming) trains ``dense_epochs + budget_epochs`` from the seed's initialisation; the ``dense``
  row keeps training the dense network for ``budget_epochs``. Every row gets the same total training;
* each target (``{macs: 0.25}`` = keep a quarter of the dense MACs, ``{params: 0.1}`` = a tenth of the
  parameters, counted as non-zeros for unstructured methods) is translated into each method's own knob
  (SGHT's ``macs_budget``, IHT's ``keep``, Slimming's ``target_macs``, ...). A method that has no such knob
  (Network Trimming's APoZ rule, SSS's penalty) runs at its own settings, or at each point of a ``sweep``, and
  its rows are marked unmatched; every row records the MACs and parameters it actually reached;
* latency is measured at the end for every final model, interleaved round-robin in one process (batch 1 and
  ``latency_batch``), so that machine load affects every row alike.

Outputs (``out``): ``runs/<row>-<hash>/seed<k>/`` (each a normal prunekit run folder), ``results.csv`` and
``results.jsonl`` (one line per run), ``summary.md`` (mean and spread over seeds) and plots (PNG and SVG):
accuracy vs MACs and vs parameters with the Pareto front, latency vs MACs, and per-layer kept weights.
A run is identified by a hash of its full config: finished runs are never repeated, a killed run resumes
from its checkpoint, and a changed setting starts a new run. ``prunekit report OUT`` rebuilds the summary
and plots from ``results.csv``.

Config schema (YAML; unknown keys are rejected)::

    name: mnist-lenet5
    out: runs/compare/mnist-lenet5
    seeds: [0, 1]
    base: {model: ..., data: ..., train: ..., optim: ...}   # a prunekit experiment config (no method)
    dense_epochs: 4
    budget_epochs: 4
    targets: [{macs: 0.3}, {params: 0.1}]
    methods:                      # name: the method's own options, plus these reserved keys:
      dense: {}
      sght: {}                    #   kinds: [macs]       which target kinds to run (default: all it supports)
      sss: {sweep: {gamma_channel: [0.01, 0.03]}}   # one row per value (per target, for a method with a knob)
      trimming: {start: dense}    #   start: auto | dense | scratch
    latency: true
    latency_batch: 64
    latency_rounds: 15
    latency_deployed: true        # time the deployed form (BN folded into convs, channels_last), every row alike
    tolerance: 0.05               # a row is "matched" when it is within 5% (relative) of its target
"""

from __future__ import annotations

import copy
import csv
import hashlib
import io as _io
import itertools
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from prunekit import config as pconfig
from prunekit import configio
from prunekit._atomic import atomic_path, write_text
from prunekit.errors import PrunekitError

KINDS = ("macs", "params")
_RESERVED = ("kinds", "start", "sweep")

DEFAULTS: dict[str, Any] = {
    "name": None,
    "out": None,
    "seeds": [0],
    "base": {},
    "dense_epochs": 10,
    "budget_epochs": 10,
    "targets": [{"macs": 0.5}],
    "methods": {"dense": {}},
    "latency": True,
    "latency_batch": 64,
    "latency_rounds": 15,
    "latency_threads": 1,
    "latency_deployed": True,
    "tolerance": 0.05,
}


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


# ---------------------------------------------------------------------------------------------- config
def load(path: str | os.PathLike, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Read and validate a comparison config (``--set key=value`` overrides as for experiment configs)."""
    p = Path(path)
    user = configio.read_yaml(p, "comparison config")
    unknown = sorted(set(user) - set(DEFAULTS))
    if unknown:
        raise PrunekitError(f"{p}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(DEFAULTS)}")
    cfg = {**copy.deepcopy(DEFAULTS), **user}
    cfg["name"] = cfg["name"] or p.stem
    for o in overrides:
        head = o.partition("=")[0].strip().split(".")[0]
        if "=" in o and head not in DEFAULTS:
            raise PrunekitError(f"--set {configio.short(o.partition('=')[0])}: unknown key {configio.short(head)}; "
                                f"valid keys: {', '.join(DEFAULTS)}")
        configio.apply_override(cfg, o)
    validate(cfg)
    return cfg


def validate(cfg: dict[str, Any]) -> None:
    """Check the comparison config's types and ranges, with one line per mistake."""
    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise PrunekitError(f"compare config: {msg}")

    def is_int(v: Any, lo: int) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= lo

    from prunekit import compare_schema

    compare_schema.check(cfg)  # keys, types and bounds (the typed schema); the method rules follow

    need(isinstance(cfg["seeds"], list) and cfg["seeds"] and all(is_int(s, 0) for s in cfg["seeds"])
         and len(set(cfg["seeds"])) == len(cfg["seeds"]), "seeds must be a non-empty list of distinct integers >= 0")
    need(is_int(cfg["dense_epochs"], 1), "dense_epochs must be an integer >= 1")
    need(is_int(cfg["budget_epochs"], 1), "budget_epochs must be an integer >= 1")
    need(isinstance(cfg["base"], dict), "base must be a mapping (an experiment config: model, data, train, optim)")
    need("method" not in cfg["base"], "base must not set a method; list methods under 'methods'")
    need(isinstance(cfg["targets"], list), "targets must be a list such as [{macs: 0.5}, {params: 0.1}]")
    for t in cfg["targets"]:
        ok = isinstance(t, dict) and len(t) == 1 and next(iter(t)) in KINDS
        v = next(iter(t.values())) if ok else None
        need(ok and isinstance(v, int | float) and not isinstance(v, bool) and 0 < v < 1,
             f"target {t!r}: expected {{macs: f}} or {{params: f}} with 0 < f < 1 (the fraction of the dense "
             "network kept)")
    need(isinstance(cfg["methods"], dict) and cfg["methods"], "methods must be a non-empty mapping name: options")
    need(is_int(cfg["latency_batch"], 1), "latency_batch must be an integer >= 1")
    need(is_int(cfg["latency_rounds"], 1), "latency_rounds must be an integer >= 1")
    need(is_int(cfg["latency_threads"], 1), "latency_threads must be an integer >= 1")
    need(isinstance(cfg["latency"], bool), "latency must be true or false")
    need(isinstance(cfg["latency_deployed"], bool), "latency_deployed must be true or false")
    need(isinstance(cfg["tolerance"], int | float) and 0 < cfg["tolerance"] < 1, "tolerance must be in (0, 1)")
    from prunekit import methods as pmethods

    for name, opts in cfg["methods"].items():
        need(opts is None or isinstance(opts, dict), f"methods.{name}: options must be a mapping")
        opts = opts or {}
        knobs = pmethods.get(name).budget_knobs if name != "dense" else {}  # an unknown name fails here
        kinds = opts.get("kinds")
        need(kinds is None or (isinstance(kinds, list) and all(k in KINDS for k in kinds)),
             f"methods.{name}.kinds must be a list drawn from {list(KINDS)}")
        for k in kinds or []:
            need(k in knobs, f"methods.{name}: cannot be set to a {k} target (it supports "
                             f"{sorted(knobs) or 'none: use sweep'})")
        need(opts.get("start", "auto") in ("auto", "dense", "scratch"),
             f"methods.{name}.start must be auto, dense or scratch")
        sweep = opts.get("sweep")
        need(sweep is None or (isinstance(sweep, dict) and sweep and all(isinstance(v, list) and v
                                                                          for v in sweep.values())),
             f"methods.{name}.sweep must map option names to non-empty lists of values")


def _base(cfg: dict[str, Any]) -> dict[str, Any]:
    """The shared experiment config (prunekit.config defaults + ``base``), validated."""
    base = pconfig.complete(cfg["base"])
    base["method"] = {"name": "none"}
    pconfig.validate(base)
    return base


# ---------------------------------------------------------------------------------------------- grid
def _key(exp: dict[str, Any]) -> str:
    """A short hash of everything that changes a run's result except the seed (seeds are sub-folders)."""
    c = copy.deepcopy(exp)
    c["train"].pop("quiet", None)
    c.pop("out", None)
    c.pop("seed", None)
    return hashlib.sha256(json.dumps(c, sort_keys=True, default=str).encode()).hexdigest()[:8]


def _slug(label: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_.=" else "_" for ch in label)


def _fit_epochs(method: Any, budget: int) -> tuple[int, int]:
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

    base = _base(cfg)
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
            kinds, start, sweep = (opts.pop(k, None) for k in _RESERVED)
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
                kind, frac = next(iter(t.items()))
                if kind in supported and (kinds is None or kind in kinds):
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
                e, fitted = _fit_epochs(method, total)
                exp = copy.deepcopy(base)
                exp["seed"], exp["train"]["epochs"] = seed, e
                exp["method"] = {"name": name, **options}
                pconfig.validate(exp)
                rows.append(Row(label, name, seed, exp, start, kind, frac,
                                epochs=fitted + (dense_epochs if start == "dense" else 0)))
    for r in rows:  # a row from the dense start also depends on how that start was trained
        r.key = _key({**r.cfg, "_start": r.start, "_dense_epochs": dense_epochs if r.start == "dense" else 0})
        r.dir = out / "runs" / f"{_slug(r.label)}-{r.key}" / f"seed{r.seed}"
    return rows


# ---------------------------------------------------------------------------------------------- running
def _layers(model: nn.Module) -> list[dict[str, Any]]:
    """Per Conv / Linear layer: output width and non-zero weights (for the per-layer plot)."""
    out = []
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.conv._ConvNd | nn.Linear):
            w = m.weight.detach()
            out.append({"name": name, "width": int(w.shape[0]), "nonzero": int(torch.count_nonzero(w)),
                        "numel": int(w.numel())})
    return out


def _load_model(path: Path) -> nn.Module:
    from prunekit import io

    return io.load(path)  # dense or sparse file


def _say(msg: str) -> None:
    print(msg, flush=True)


def run(cfg: dict[str, Any], *, out: str | os.PathLike | None = None, only: Sequence[str] = (),
        smoke: bool = False, quiet: bool = True) -> list[dict[str, Any]]:
    """Run (or resume) the grid of ``cfg``; returns the result rows and writes the report files."""
    from prunekit import experiment, metrics
    from prunekit.engine import distributed

    cfg = copy.deepcopy(cfg)
    if out is not None:
        cfg["out"] = str(out)
    cfg["out"] = cfg["out"] or f"runs/compare/{cfg['name']}"
    if only:
        missing = sorted(set(only) - set(cfg["methods"]))
        if missing:
            raise PrunekitError(f"--only {', '.join(missing)}: not in this config's methods "
                                f"({', '.join(cfg['methods'])})")
        cfg["methods"] = {k: v for k, v in cfg["methods"].items() if k in only}
    if smoke:  # a few steps per run, on small subsets: checks the whole grid end to end in minutes
        b = cfg["base"] = copy.deepcopy(cfg["base"])
        b.setdefault("data", {}).update({"subset": 256, "test_subset": 256})
        b.setdefault("train", {}).update({"max_steps_per_epoch": 2, "eval_every": 1000})
        cfg["dense_epochs"], cfg["budget_epochs"] = 1, min(cfg["budget_epochs"], 6)
        cfg["latency_rounds"] = min(cfg["latency_rounds"], 2)
        cfg["latency_batch"] = min(cfg["latency_batch"], 8)
        cfg["seeds"] = cfg["seeds"][:1]
    out_dir = Path(cfg["out"])
    main = distributed.is_main()  # under torchrun every rank trains; rank 0 writes and measures
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_text(out_dir / "compare.yaml", yaml.safe_dump(cfg, sort_keys=False))
    base = _base(cfg)
    if quiet:
        base["train"]["quiet"] = True
    data_by_seed: dict[int, Any] = {}

    def data_for(seed: int) -> Any:
        if seed not in data_by_seed:
            data_by_seed[seed] = experiment.load_data({**base, "seed": seed})
        return data_by_seed[seed]

    dense_paths: dict[int, Path] = {}
    dense_models: dict[int, nn.Module] = {}

    def dense_start(seed: int) -> Path:
        """Train (or reuse) the seed's dense starting point."""
        if seed in dense_paths:
            return dense_paths[seed]
        exp = copy.deepcopy(base)
        exp["seed"], exp["train"]["epochs"] = seed, cfg["dense_epochs"]
        d = out_dir / "dense" / _key(exp) / f"seed{seed}"
        if not (d / "report.json").is_file():
            t0 = time.perf_counter()
            res = experiment.run(exp, out=d, resume=True, data=data_for(seed), latency=False)
            if main:
                _say(f"dense start, seed {seed}: top-1 {res.figures['top1']:.2f} ({time.perf_counter() - t0:.0f} s)")
        dense_paths[seed] = d / "model.safetensors"
        return dense_paths[seed]

    def dense_model(seed: int) -> nn.Module:
        if seed not in dense_models:
            dense_models[seed] = _load_model(dense_start(seed))
        return dense_models[seed]

    # the whole grid is built and validated before anything trains (an untrained network of the same
    # architecture is enough to translate targets)
    rows = plan(cfg, dense_model=lambda s: experiment.build_model({**base, "seed": s}, data_for(s)[0]))
    for quiet_row in rows:
        quiet_row.cfg["train"]["quiet"] = base["train"]["quiet"]
    results: list[dict[str, Any]] = []
    for i, r in enumerate(rows, 1):
        done = r.dir / "compare_row.json"
        if done.is_file():
            results.append(json.loads(done.read_text()))
            _say(f"[{i}/{len(rows)}] {r.label} seed {r.seed}: finished earlier, not repeated")
            continue
        exp = copy.deepcopy(r.cfg)
        model = None
        if r.start == "dense":
            model = copy.deepcopy(dense_model(r.seed))
        t0 = time.perf_counter()
        res = experiment.run(exp, out=r.dir, resume=True, model=model, data=data_for(r.seed), latency=False)
        if not main:
            continue
        figs = res.figures
        ref = dense_model(r.seed)
        example = torch.zeros((1, *data_for(r.seed)[1].input_shape))
        dense_counts = metrics.count(ref.eval(), example)
        row = {
            "run": str(r.dir.relative_to(out_dir)), "label": r.label, "method": r.method, "seed": r.seed,
            "start": r.start, "target_kind": r.target_kind or "", "target": r.target,
            "train_epochs": r.epochs, **{k: figs.get(k) for k in ("params", "nonzero_params", "macs", "top1",
                                                                      "top5", "test_loss", "file_bytes",
                                                                      "train_seconds")},
            "params_frac": figs["params"] / dense_counts.params,
            "nonzero_frac": figs["nonzero_params"] / dense_counts.params,
            "macs_frac": figs["macs"] / dense_counts.macs,
            "sparse_file": bool(res.sparse),
            "layers": _layers(res.model), "dense_layers": _layers(ref),
        }
        row["matched"] = _matched(row, cfg["tolerance"])
        write_text(done, json.dumps(row))  # rank 0 only; the next row's experiment.run meets it at a barrier
        results.append(row)
        _say(f"[{i}/{len(rows)}] {r.label} seed {r.seed}: top-1 {row['top1']:.2f}, MACs x{1 / row['macs_frac']:.2f}, "
             f"non-zeros x{1 / row['nonzero_frac']:.2f} ({time.perf_counter() - t0:.0f} s)")
    if not main:
        return []
    if cfg["latency"]:
        _measure_latency(results, out_dir, cfg, example_shape=tuple(data_for(rows[0].seed)[1].input_shape)
                         if rows else None)
    write_results(results, out_dir)
    report(out_dir, results)
    return results


def _matched(row: dict[str, Any], tol: float) -> bool:
    """Whether the row reached its target within ``tol`` (relative); rows without a target are not matched."""
    kind, target = row.get("target_kind"), row.get("target")
    if not kind or target in (None, ""):
        return False
    reached = row["macs_frac"] if kind == "macs" else row["nonzero_frac"]
    return abs(reached - float(target)) <= tol * float(target)


def _measure_latency(results: list[dict[str, Any]], out_dir: Path, cfg: dict[str, Any],
                     example_shape: tuple[int, ...] | None) -> None:
    """Median latency of every final model at batch 1 and ``latency_batch``, interleaved round-robin."""
    from prunekit import metrics

    if not results or example_shape is None:
        return
    from prunekit.surgery import deployed

    models = {r["run"]: _load_model(out_dir / r["run"] / "model.safetensors").eval() for r in results}
    if cfg["latency_deployed"]:
        models = {k: deployed(m) for k, m in models.items()}
    times: dict[tuple[str, int], list[float]] = {}
    batches = sorted({1, int(cfg["latency_batch"])})
    inputs = {b: torch.zeros((b, *example_shape)) for b in batches}
    if cfg["latency_deployed"] and len(example_shape) == 3:
        inputs = {b: x.to(memory_format=torch.channels_last) for b, x in inputs.items()}
    for m in models.values():  # one untimed warm-up pass each
        for b in batches:
            metrics.latency(m, inputs[b], repeats=1, warmup=1, threads=cfg["latency_threads"])
    for _ in range(cfg["latency_rounds"]):
        for run_id, m in models.items():
            for b in batches:
                lat = metrics.latency(m, inputs[b], repeats=3, warmup=0, threads=cfg["latency_threads"])
                times.setdefault((run_id, b), []).append(lat["median_ms"])
    for r in results:
        r["latency_ms_b1"] = statistics.median(times[(r["run"], 1)])
        r["latency_batch"] = batches[-1]
        r["latency_ms_batch"] = statistics.median(times[(r["run"], batches[-1])])
    write_text(out_dir / "latency.json", json.dumps(
        {"rounds": cfg["latency_rounds"], "threads": cfg["latency_threads"], "batches": batches,
         "deployed_form": cfg["latency_deployed"],
         "device": "cpu", "torch": torch.__version__,
         "median_ms": {f"{k[0]}@b{k[1]}": statistics.median(v) for k, v in times.items()}}, indent=1))


# ---------------------------------------------------------------------------------------------- files
CSV_COLUMNS = ["run", "label", "method", "seed", "start", "target_kind", "target", "matched", "train_epochs",
               "params", "nonzero_params", "macs", "params_frac", "nonzero_frac", "macs_frac", "top1", "top5",
               "test_loss", "latency_ms_b1", "latency_batch", "latency_ms_batch", "file_bytes", "sparse_file",
               "train_seconds"]
_INT = {"seed", "train_epochs", "params", "nonzero_params", "macs", "latency_batch", "file_bytes"}
_FLOAT = {"target", "params_frac", "nonzero_frac", "macs_frac", "top1", "top5", "test_loss", "latency_ms_b1",
          "latency_ms_batch", "train_seconds"}
_BOOL = {"matched", "sparse_file"}


def write_results(results: Sequence[dict[str, Any]], out_dir: Path) -> None:
    """``results.csv`` (the columns above) and ``results.jsonl`` (the same plus per-layer widths)."""
    buf = _io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in results:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in CSV_COLUMNS})
    write_text(out_dir / "results.csv", buf.getvalue())
    write_text(out_dir / "results.jsonl", "".join(json.dumps(r) + "\n" for r in results))


def read_results(out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of ``results.csv`` (typed), with per-layer data from ``results.jsonl`` when present."""
    d = Path(out_dir)
    p = d / "results.csv"
    if not p.is_file():
        raise PrunekitError(f"{d}: no results.csv (is it a prunekit compare folder?)")
    try:
        reader = csv.DictReader(_io.StringIO(p.read_text()))
        header = reader.fieldnames or []
        missing = [c for c in ("label", "method", "seed", "macs", "top1") if c not in header]
        if missing:
            raise PrunekitError(f"{p}: not a prunekit results file (missing columns {', '.join(missing)})")
        rows = [{k: _parse(k, v) for k, v in rec.items() if k in CSV_COLUMNS} for rec in reader]
    except (csv.Error, UnicodeDecodeError, ValueError) as exc:
        raise PrunekitError(f"{p}: malformed results file ({exc})") from None
    layers: dict[str, Any] = {}
    j = d / "results.jsonl"
    if j.is_file():
        try:
            for line in j.read_text().splitlines():
                rec = json.loads(line)
                if isinstance(rec, dict) and "run" in rec:
                    layers[rec["run"]] = (rec.get("layers"), rec.get("dense_layers"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            layers = {}
    for r in rows:
        if r.get("run") in layers:
            r["layers"], r["dense_layers"] = layers[r["run"]]
    return rows


def _parse(key: str, value: str | None) -> Any:
    if value is None or value == "":
        return None
    if key in _INT:
        return int(float(value))
    if key in _FLOAT:
        return float(value)
    if key in _BOOL:
        if value not in ("True", "False"):
            raise ValueError(f"{key}: {value!r} is not True/False")
        return value == "True"
    return value


# ---------------------------------------------------------------------------------------------- report
def summarize(results: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per label: means and standard deviations over seeds."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault(r["label"], []).append(r)
    out = []
    for label, rs in groups.items():
        row: dict[str, Any] = {"label": label, "method": rs[0]["method"], "target_kind": rs[0].get("target_kind"),
                               "target": rs[0].get("target"), "seeds": len(rs),
                               "matched": all(bool(r.get("matched")) for r in rs)}
        for k in ("top1", "macs", "params", "nonzero_params", "macs_frac", "nonzero_frac", "latency_ms_b1",
                  "latency_ms_batch", "file_bytes", "train_epochs"):
            vals = [float(r[k]) for r in rs if r.get(k) is not None]
            if vals:
                row[k] = statistics.fmean(vals)
                row[k + "_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        row["latency_batch"] = rs[0].get("latency_batch")
        out.append(row)
    return out


def markdown(summary: Sequence[dict[str, Any]]) -> str:
    """The summary as a Markdown table, dense first, then by target and accuracy."""
    from prunekit.reports import human

    dense = next((s for s in summary if s["method"] == "dense"), None)
    order = sorted(summary, key=lambda s: (s["method"] != "dense", s.get("target_kind") or "~",
                                           -(s.get("target") or 0), -s.get("top1", 0)))
    lb = next((s.get("latency_batch") for s in summary if s.get("latency_batch")), None)
    heads = ["row", "seeds", "top-1 %", "vs dense", "MACs", "MACs x", "non-zeros", "size x", "matched"]
    if any(s.get("latency_ms_b1") for s in summary):
        heads += ["latency b1 ms", f"latency b{lb} ms", f"speed-up b{lb}"]
    lines = ["| " + " | ".join(heads) + " |", "|" + "|".join("---" for _ in heads) + "|"]
    for s in order:
        spread = f" ± {s['top1_std']:.2f}" if s["seeds"] > 1 else ""
        delta = f"{s['top1'] - dense['top1']:+.2f}" if dense and s is not dense else "-"
        cells = [s["label"], str(s["seeds"]), f"{s['top1']:.2f}{spread}", delta, human(int(s["macs"]), "macs"),
                 f"{1 / s['macs_frac']:.2f}" if s.get("macs_frac") else "-",
                 human(int(s["nonzero_params"]), "params"),
                 f"{1 / s['nonzero_frac']:.2f}" if s.get("nonzero_frac") else "-",
                 "yes" if s["matched"] else ("-" if s["method"] == "dense" or not s.get("target_kind") else "no")]
        if "latency b1 ms" in heads:
            cells += [f"{s['latency_ms_b1']:.3f}" if s.get("latency_ms_b1") else "-",
                      f"{s['latency_ms_batch']:.2f}" if s.get("latency_ms_batch") else "-",
                      f"{dense['latency_ms_batch'] / s['latency_ms_batch']:.2f}"
                      if dense and s.get("latency_ms_batch") and dense.get("latency_ms_batch") else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pareto(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both cost (lower) and accuracy (higher), by increasing cost."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y))
    return front


def report(out_dir: str | os.PathLike, results: Sequence[dict[str, Any]] | None = None) -> list[Path]:
    """Write ``summary.md`` and the plots of ``out_dir`` (from ``results``, else from its results.csv)."""
    d = Path(out_dir)
    results = list(results) if results is not None else read_results(d)
    if not results:
        raise PrunekitError(f"{d}: no results to report")
    summary = summarize(results)
    text = markdown(summary)
    write_text(d / "summary.md", f"# {d.name}\n\n{text}\n\nMean over seeds (± standard deviation). Rebuild with: "
                                 f"prunekit report {d}\n")
    written = [d / "summary.md"]
    written += _plots(d, results, summary)
    return written


def _plots(d: Path, results: Sequence[dict[str, Any]], summary: Sequence[dict[str, Any]]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = sorted({s["method"] for s in summary}, key=lambda m: (m != "dense", m))
    colors = {m: plt.get_cmap("tab20")(i % 20) for i, m in enumerate(methods)}
    markers = dict(zip(methods, itertools.cycle("o^sDv<>pPX*h"), strict=False))
    written: list[Path] = []

    def save(fig: Any, stem: str) -> None:
        for ext in ("png", "svg"):
            p = d / f"{stem}.{ext}"
            with atomic_path(p) as tmp:
                fig.savefig(tmp, format=ext)
            written.append(p)
        plt.close(fig)

    def scatter(x: str, y: str, xlabel: str, ylabel: str, stem: str, front: bool) -> None:
        fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
        pts = []
        for m in methods:
            ss = [s for s in summary if s["method"] == m and s.get(x) and s.get(y) is not None]
            if not ss:
                continue
            xs, ys = [s[x] for s in ss], [s[y] for s in ss]
            ax.errorbar(xs, ys, yerr=[s.get(y + "_std", 0.0) for s in ss], fmt=markers[m], color=colors[m],
                        label=m, capsize=2, markersize=6, linestyle="none")
            pts += list(zip(xs, ys, strict=True))
        if front and pts:
            fx, fy = zip(*pareto(pts), strict=True)
            ax.step(fx, fy, where="post", color="0.4", linestyle="--", linewidth=1, label="Pareto front")
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
        ax.set_title(f"{d.name}: {ylabel} vs {xlabel} (mean over seeds)", fontsize=9)
        fig.tight_layout()
        save(fig, stem)

    scatter("macs", "top1", "MACs per image", "top-1 %", "accuracy_vs_macs", True)
    scatter("nonzero_params", "top1", "non-zero parameters", "top-1 %", "accuracy_vs_params", True)
    if any(s.get("latency_ms_batch") for s in summary):
        lb = next(s["latency_batch"] for s in summary if s.get("latency_batch"))
        scatter("macs", "latency_ms_batch", "MACs per image", f"latency at batch {lb}, ms", "latency_vs_macs", False)
    _layer_plot(d, results, colors, save)
    return written


def _layer_plot(d: Path, results: Sequence[dict[str, Any]], colors: dict[str, Any],
                save: Callable[[Any, str], None]) -> None:
    """Share of each layer's dense weights kept (non-zero), one panel per target, first seed of each row."""
    import matplotlib.pyplot as plt

    rows = [r for r in results if r.get("layers") and r.get("dense_layers")]
    if not rows:
        return
    first_seed = min(r["seed"] for r in rows)
    rows = [r for r in rows if r["seed"] == first_seed and r["method"] != "dense"]
    panels = sorted({(r.get("target_kind") or "own", r.get("target") or 0.0) for r in rows},
                    key=lambda p: (p[0], -p[1]))
    if not panels:
        return
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.6 * len(panels)), dpi=110, squeeze=False)
    styles = {}  # rows of one method (sweep points, targets) differ by line style
    for r in rows:
        same = [x for x in styles if x[0] == r["method"]]
        styles.setdefault((r["method"], r["label"]), ("-", "--", ":", "-.")[len(same) % 4])
    for ax, (kind, target) in zip(axes[:, 0], panels, strict=True):
        for r in rows:
            if (r.get("target_kind") or "own", r.get("target") or 0.0) != (kind, target):
                continue
            dense = {lay["name"]: lay for lay in r["dense_layers"]}
            names = [lay["name"] for lay in r["dense_layers"]]
            got = {lay["name"]: lay for lay in r["layers"]}
            kept = [got[n]["nonzero"] / dense[n]["numel"] if n in got else 0.0 for n in names]
            ax.plot(range(len(names)), kept, marker=".", label=r["label"], color=colors.get(r["method"]),
                    linestyle=styles[(r["method"], r["label"])])
            ax.set_xticks(range(len(names)), names, rotation=60, fontsize=6, ha="right")
        title = "own settings" if kind == "own" else f"{kind} target {target:g}"
        ax.set_title(f"weights kept per layer ({title}, seed {first_seed})", fontsize=8)
        ax.set_ylabel("kept / dense", fontsize=7)
        ax.set_ylim(0, 1.05)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    save(fig, "layers")


def print_summary(results: Sequence[dict[str, Any]], out_dir: Path) -> None:
    """Print the summary table and where the files are."""
    print()
    print(markdown(summarize(results)))
    print(f"\nresults: {out_dir / 'results.csv'}; summary and plots: {out_dir}/summary.md, *.png, *.svg",
          file=sys.stdout)


__all__ = [
    "CSV_COLUMNS",
    "DEFAULTS",
    "Row",
    "load",
    "markdown",
    "pareto",
    "plan",
    "print_summary",
    "read_results",
    "report",
    "run",
    "summarize",
    "validate",
    "write_results",
]
