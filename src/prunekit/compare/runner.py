"""Running a comparison grid: the shared dense starting points, every row (finished rows are not
repeated, a killed row resumes), then latency of every final model interleaved round-robin."""

from __future__ import annotations

import copy
import json
import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit import configio
from prunekit.atomic import write_text
from prunekit.compare.config import base_config
from prunekit.compare.grid import plan, run_key
from prunekit.compare.results import report, write_results
from prunekit.errors import PrunekitError


def layer_widths(model: nn.Module) -> list[dict[str, Any]]:
    """Per Conv / Linear layer: output width and non-zero weights (for the per-layer plot)."""
    out = []
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.conv._ConvNd | nn.Linear):
            w = m.weight.detach()
            out.append({"name": name, "width": int(w.shape[0]), "nonzero": int(torch.count_nonzero(w)),
                        "numel": int(w.numel())})
    return out


def load_model(path: Path) -> nn.Module:
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
        # a latency target is checked for wiring, not aim: a loaded machine's timings must not fail the check
        cfg["targets"] = [{**t, "tol": 0.5} if "latency" in t else t for t in cfg["targets"]]
    out_dir = Path(cfg["out"])
    main = distributed.is_main()  # under torchrun every rank trains; rank 0 writes and measures
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_text(out_dir / "compare.yaml", configio.dump(cfg))
    base = base_config(cfg)
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
        d = out_dir / "dense" / run_key(exp) / f"seed{seed}"
        if not (d / "report.json").is_file():
            t0 = time.perf_counter()
            res = experiment.run(exp, out=d, resume=True, data=data_for(seed), latency=False)
            if main:
                _say(f"dense start, seed {seed}: top-1 {res.figures['top1']:.2f} ({time.perf_counter() - t0:.0f} s)")
        dense_paths[seed] = d / "model.safetensors"
        return dense_paths[seed]

    def dense_model(seed: int) -> nn.Module:
        if seed not in dense_models:
            dense_models[seed] = load_model(dense_start(seed))
        return dense_models[seed]

    # the whole grid is built and validated before anything trains (an untrained network of the same
    # architecture is enough to translate targets)
    rows = plan(cfg, dense_model=lambda s: experiment.build_model({**base, "seed": s}, data_for(s)[0]))
    for quiet_row in rows:
        quiet_row.cfg["train"]["quiet"] = base["train"]["quiet"]
    results: list[dict[str, Any]] = []
    not_reached: list[str] = []
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
        try:
            res = experiment.run(exp, out=r.dir, resume=True, model=model, data=data_for(r.seed), latency=False)
        except PrunekitError as exc:
            # a latency target its runtime cannot reach on this (possibly loaded) machine: the grid goes on,
            # the row is reported as not run, and the next run of the grid retries it
            if r.target_kind != "latency" or not str(exc).startswith("latency target"):
                raise
            not_reached.append(f"{r.label} seed {r.seed}: {exc}")
            _say(f"[{i}/{len(rows)}] {r.label} seed {r.seed}: not run ({exc}); the next run of the grid retries it")
            continue
        if not main:
            continue
        figs = res.figures
        ref = dense_model(r.seed)
        example = torch.zeros((1, *data_for(r.seed)[1].input_shape))
        dense_counts = metrics.count(ref.eval(), example)
        row = {
            "run": str(r.dir.relative_to(out_dir)), "label": r.label, "method": r.method, "seed": r.seed,
            "start": r.start, "target_kind": r.target_kind or "", "target": r.target,
            "target_batch": (exp["method"].get("latency") or {}).get("batch") if r.target_kind == "latency" else None,
            "target_tol": (exp["method"].get("latency") or {}).get("tol") if r.target_kind == "latency" else None,
            "train_epochs": r.epochs, **{k: figs.get(k) for k in ("params", "nonzero_params", "macs", "top1",
                                                                      "top5", "test_loss", "file_bytes",
                                                                      "train_seconds")},
            "params_frac": figs["params"] / dense_counts.params,
            "nonzero_frac": figs["nonzero_params"] / dense_counts.params,
            "macs_frac": figs["macs"] / dense_counts.macs,
            "sparse_file": bool(res.sparse),
            "layers": layer_widths(res.model), "dense_layers": layer_widths(ref),
        }
        row["matched"] = matched(row, cfg["tolerance"])
        write_text(done, json.dumps(row))  # rank 0 only; the next row's experiment.run meets it at a barrier
        results.append(row)
        _say(f"[{i}/{len(rows)}] {r.label} seed {r.seed}: top-1 {row['top1']:.2f}, MACs x{1 / row['macs_frac']:.2f}, "
             f"non-zeros x{1 / row['nonzero_frac']:.2f} ({time.perf_counter() - t0:.0f} s)")
    if not main:
        return []
    if cfg["latency"]:
        measure_latency(results, out_dir, cfg, example_shape=tuple(data_for(rows[0].seed)[1].input_shape)
                         if rows else None, dense=dense_model(rows[0].seed) if rows else None)
        for row in results:  # a latency row's target is met (or not) in measured latency
            if row.get("target_kind") == "latency":
                row["matched"] = matched(row, cfg["tolerance"])
    write_results(results, out_dir)
    report(out_dir, results)
    if not_reached:
        note = "\n\nNot run (latency target not reached; rerun the grid to retry):\n\n" + "".join(
            f"- {line}\n" for line in not_reached)
        summary = out_dir / "summary.md"
        write_text(summary, summary.read_text() + note)
        _say(note.strip())
    return results


def matched(row: dict[str, Any], tol: float) -> bool:
    """Whether the row reached its target within ``tol`` (relative; a latency target's own ``tol`` when it
    gives one); rows without a target are not matched."""
    kind, target = row.get("target_kind"), row.get("target")
    if not kind or target in (None, ""):
        return False
    if kind == "latency":  # the measured fraction of the dense latency at the target's batch (grid's timing)
        tol = float(row.get("target_tol") or tol)
        batch = row.get("target_batch") or 1
        reached = row.get("latency_frac_b1") if batch == 1 else (
            row.get("latency_frac_batch") if batch == row.get("latency_batch") else None)
        if reached is None:
            return False
    else:
        reached = row["macs_frac"] if kind == "macs" else row["nonzero_frac"]
    return abs(reached - float(target)) <= tol * float(target)


def measure_latency(results: list[dict[str, Any]], out_dir: Path, cfg: dict[str, Any],
                    example_shape: tuple[int, ...] | None, dense: nn.Module | None = None) -> None:
    """Median latency of every final model (and of the dense architecture, ``dense``, for the fractions
    ``latency_frac_*``) at batch 1 and ``latency_batch``, interleaved round-robin: in PyTorch (the deployed
    form when ``latency_deployed``) or, with ``latency_runtime``, in that prunekit runtime."""
    from prunekit import metrics

    if not results or example_shape is None:
        return
    from prunekit.surgery import deployed

    models = {r["run"]: load_model(out_dir / r["run"] / "model.safetensors").eval() for r in results}
    ref_key = "__dense__"
    if dense is not None:
        models[ref_key] = copy.deepcopy(dense).eval()
    batches = sorted({1, int(cfg["latency_batch"])})
    runtime = cfg.get("latency_runtime")
    if runtime:
        from prunekit.metrics import runtime as rt

        rows = rt.measure(models, torch.zeros((1, *example_shape)), runtimes=[runtime], batches=batches,
                          threads=cfg["latency_threads"], rounds=cfg["latency_rounds"], repeats=3, warmup=1)
        med = {(r["model"], r["batch"]): r["median_ms"] for r in rows}
    else:
        if cfg["latency_deployed"]:
            models = {k: deployed(m) for k, m in models.items()}
        times: dict[tuple[str, int], list[float]] = {}
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
        med = {k: statistics.median(v) for k, v in times.items()}
    for r in results:
        r["latency_ms_b1"] = med[(r["run"], 1)]
        r["latency_batch"] = batches[-1]
        r["latency_ms_batch"] = med[(r["run"], batches[-1])]
        r["latency_runtime"] = runtime or ("deployed" if cfg["latency_deployed"] else "eager")
        if dense is not None:
            r["latency_frac_b1"] = r["latency_ms_b1"] / med[(ref_key, 1)]
            r["latency_frac_batch"] = r["latency_ms_batch"] / med[(ref_key, batches[-1])]
    write_text(out_dir / "latency.json", json.dumps(
        {"rounds": cfg["latency_rounds"], "threads": cfg["latency_threads"], "batches": batches,
         "deployed_form": cfg["latency_deployed"], "runtime": runtime or "torch",
         "device": "cuda" if runtime == "cuda" else "cpu", "torch": torch.__version__,
         "median_ms": {f"{k[0]}@b{k[1]}": v for k, v in med.items()}}, indent=1))
