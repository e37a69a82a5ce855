"""GPU evidence run: ResNet-56 on full CIFAR-10, dense and four filter methods at the SGHT paper's budget, in
about 8 minutes on one H100 / H200.

One command, meant to run once, unattended, on a lent GPU machine with the repository copied and no network:

    .venv/bin/python benchmarks/gpu.py                      # the real run (CUDA required)
    .venv/bin/python benchmarks/gpu.py --smoke              # CPU, seconds: synthetic CIFAR-shaped data
    .venv/bin/python benchmarks/gpu.py --data-dir /path/to/datasets --epochs 30 --budget-minutes 8

What it does:

* loads CIFAR-10 once in this process (``prunekit.data``; the decoded arrays are cached, so the workers
  read them back in a second), from ``--data-dir`` or the usual places (``$PRUNEKIT_DATA``,
  ``../shared/datasets``, ``./shared/datasets``, ``/work/shared/datasets``);
* starts one worker process per run, all at once on the one GPU (each run is too small to fill it): dense,
  SGHT (from scratch), L1-filter, SFP and Torch-Pruning magnitude, the four at ``macs_budget: 0.37`` (the
  paper's "63% fewer FLOPs"). Each worker trains through :func:`prunekit.experiment.run` (the library's own
  path) with the data held on the GPU (augmentation on the GPU, ``prunekit.data.iterate``), bf16 autocast,
  channels_last, a one-cycle schedule of ``--epochs`` (30) epochs at batch ``--batch`` (256);
* stops any worker still running at the time budget (reported as such, never as a result);
* times every final network in CUDA (deployed form, batch 1 and 256, interleaved rounds, medians) and prints
  accuracy, parameters, MACs and latency beside the paper's 92.40% for SGHT (200 epochs, not 30).

Results: ``benchmarks/out/gpu/summary.md`` and ``summary.json``; each run's folder holds its log and model.
Exit status 0 when every run finished, 1 when some did not, 2 for a set-up problem (no GPU, no data).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "out" / "gpu"
PAPER_SGHT_TOP1 = 92.40  # SGHT paper, ResNet-56 / CIFAR-10, 63% fewer FLOPs (200 epochs)
BUDGET = 0.37
RUNS: dict[str, dict[str, Any]] = {
    "dense": {"name": "none"},
    "sght": {"name": "sght", "macs_budget": BUDGET},
    "l1-filter": {"name": "l1-filter", "macs_budget": BUDGET},
    "sfp": {"name": "sfp", "macs_budget": BUDGET},
    "tp-magnitude": {"name": "tp-magnitude", "macs_budget": BUDGET},
}
DATA_PLACES = ("../shared/datasets", "shared/datasets", "/work/shared/datasets")


class SetupError(Exception):
    """A problem with the machine or the inputs: one line, exit 2."""


def find_data(data_dir: str | None) -> Path:
    """The folder holding ``cifar10/`` (or the CIFAR-10 files themselves)."""
    cands = [data_dir] if data_dir else [os.environ.get("PRUNEKIT_DATA"), *DATA_PLACES]
    for c in cands:
        if not c:
            continue
        p = Path(c) if Path(c).is_absolute() else (ROOT / c)
        if (p / "cifar10").is_dir() or any(p.glob("cifar10*")) or any(p.glob("*.tar*")):
            return p.resolve()
    where = data_dir or ", ".join(str(c) for c in cands if c)
    raise SetupError(f"no CIFAR-10 found in {where}; pass --data-dir (the folder holding cifar10/)")


def _config(name: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    from prunekit import config

    method = dict(RUNS[name])
    if name == "sght":
        method["batch_max"] = args.batch  # the hybrid batch schedule grows to the run's batch size
        method["batch_start"] = min(64, args.batch)
    sets = {
        "seed": args.seed, "out": str(out),
        "model.name": args.model,
        "data.name": "cifar10", "data.root": args.data_root,
        "data.subset": args.subset, "data.test_subset": args.test_subset,
        "train.epochs": args.epochs, "train.batch_size": args.batch, "train.eval_batch_size": 1000,
        "train.device": args.device, "train.quiet": True, "train.eval_every": max(args.epochs, 1),
        "train.max_steps_per_epoch": args.max_steps,
        "optim.lr": args.lr, "optim.schedule": "onecycle", "optim.momentum": 0.9, "optim.nesterov": True,
        "optim.weight_decay": 5e-4,
    }
    overrides = [f"{k}={json.dumps(v)}" for k, v in sets.items()]
    cfg = config.load_config(None, overrides)
    cfg["method"] = method
    return cfg


def _datasets(args: argparse.Namespace) -> tuple[Any, Any]:
    """CIFAR-10 (or, for --smoke without --data-dir, synthetic CIFAR-shaped data), subset as asked."""
    import torch

    from prunekit import data as pdata

    if args.synthetic:
        g = torch.Generator().manual_seed(args.seed)

        def make(n: int, augment: str | None) -> pdata.Dataset:
            return pdata.Dataset("synthetic-cifar", torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8,
                                                                  generator=g),
                                 torch.randint(0, 10, (n,), generator=g), [str(i) for i in range(10)],
                                 (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), augment)

        return make(args.subset or 256, "crop_flip"), make(args.test_subset or 128, None)
    train = pdata.load("cifar10", "train", root=args.data_root)
    test = pdata.load("cifar10", "test", root=args.data_root)
    if args.subset:
        train = train.sample(args.subset, seed=args.seed)
    if args.test_subset:
        test = test.sample(args.test_subset, seed=args.seed)
    return train, test


# ------------------------------------------------------------------------------------------- worker
def worker(args: argparse.Namespace) -> int:
    """One run, in its own process: train, finalize, save; figures to result.json."""
    import torch

    from prunekit import experiment

    name = args.worker
    out = Path(args.out) / name
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.worker_threads)
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    t0 = time.perf_counter()
    train, test = _datasets(args)
    if args.device == "cuda":  # hold the whole split on the GPU: batches are gathered and augmented there
        train.images, train.labels = train.images.cuda(), train.labels.cuda()
    cfg = _config(name, args, out)
    load_s = time.perf_counter() - t0
    res = experiment.run(cfg, out=out, data=(train, test), latency=False)
    figs = {k: v for k, v in res.figures.items() if isinstance(v, int | float | str)}
    keep = res.report.get("keep") if isinstance(res.report, dict) else None
    (out / "result.json").write_text(json.dumps({"run": name, "figures": figs, "keep": keep,
                                                 "load_seconds": round(load_s, 2)}, indent=1))
    return 0


# ------------------------------------------------------------------------------------------- driver
def _latency(args: argparse.Namespace, done: list[str]) -> dict[str, dict[int, float]]:
    """Median latency of every finished network, interleaved (CUDA; the deployed CPU form in --smoke)."""
    import torch

    from prunekit import io
    from prunekit.metrics import runtime

    nets = {n: io.load(Path(args.out) / n / "model.safetensors").eval() for n in done}
    rt = "cuda" if args.device == "cuda" else "deployed"
    batches = [1, args.latency_batch]
    rows = runtime.measure(nets, torch.randn(1, 3, 32, 32), runtimes=[rt], batches=batches,
                           threads=1 if rt != "cuda" else torch.get_num_threads(), rounds=args.latency_rounds,
                           repeats=3, warmup=5)
    out: dict[str, dict[int, float]] = {}
    for r in rows:
        out.setdefault(r["model"], {})[r["batch"]] = r["median_ms"]
    return out


def _table(args: argparse.Namespace, results: dict[str, dict[str, Any]], lat: dict[str, dict[int, float]],
           status: dict[str, str]) -> str:
    rt = "CUDA" if args.device == "cuda" else "CPU deployed (smoke)"
    dense = results.get("dense", {}).get("figures", {})
    model = {"resnet56": "ResNet-56", "resnet20": "ResNet-20"}.get(args.model, args.model)
    data = "synthetic CIFAR-shaped data" if args.synthetic else "CIFAR-10" + (" (subset)" if args.subset else "")
    lines = [f"{model} / {data}, {args.epochs} epoch(s) one-cycle, batch {args.batch}, lr {args.lr}, seed "
             f"{args.seed}; budget: {BUDGET} of the dense MACs (the SGHT paper's 63% fewer FLOPs). "
             f"Latency: {rt}, median of {args.latency_rounds} interleaved rounds.", "",
             "| run | status | top-1 % | params | MACs | MACs vs dense | latency b1 ms | "
             f"latency b{args.latency_batch} ms | paper top-1 % |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name in args.names:
        f = results.get(name, {}).get("figures", {})
        lt = lat.get(name, {})
        rel = f"{f['macs'] / dense['macs']:.3f}" if f.get("macs") and dense.get("macs") else "-"
        paper = f"{PAPER_SGHT_TOP1:.2f} (200 epochs)" if name == "sght" else "-"
        top1 = f"{f['top1']:.2f}" if "top1" in f else "-"
        lines.append(f"| {name} | {status.get(name, '?')} | {top1} | {f.get('params', '-'):,} | "
                     f"{f.get('macs', '-'):,} | {rel} | {lt.get(1, float('nan')):.3f} | "
                     f"{lt.get(args.latency_batch, float('nan')):.3f} | {paper} |"
                     if f else f"| {name} | {status.get(name, '?')} | - | - | - | - | - | - | {paper} |")
    return "\n".join(lines)


def fit_epochs(args: argparse.Namespace, time_left: float) -> tuple[int, str]:
    """Epochs that fit the time left, from a short timed training run in this process (the dense network,
    ``--probe-steps`` steps through the library's trainer), assuming, to be safe, that the parallel runs share
    the GPU with no overlap at all; never more than ``--epochs``."""
    from prunekit import experiment

    train, test = _datasets(args)
    if args.device == "cuda":
        train.images, train.labels = train.images.cuda(), train.labels.cuda()
    small_test = test.sample(min(len(test), 256))
    for steps_now in (min(5, args.probe_steps), args.probe_steps):  # the first warms up (cuDNN autotuning)
        probe = argparse.Namespace(**{**vars(args), "epochs": 1, "max_steps": steps_now})
        with tempfile.TemporaryDirectory() as tmp:
            res = experiment.run(_config("dense", probe, Path(tmp)), out=tmp, data=(train, small_test),
                                 latency=False)
    step_s = float(res.figures["train_seconds"]) / args.probe_steps
    steps = min(len(train) // args.batch, args.max_steps or len(train))
    n_runs = len(args.names)
    epoch_s = step_s * steps * n_runs * 1.25  # all runs one after the other on the GPU; SGHT's extra steps
    startup_s = 60.0 if args.device == "cuda" else 10.0  # process start, CUDA context, data, final evaluation
    fit = int((time_left - startup_s) // max(epoch_s, 1e-9))
    epochs = max(1, min(args.epochs, fit))
    why = (f"probe: {step_s * 1000:.1f} ms per step at batch {args.batch}; {n_runs} runs x {steps} steps per "
           f"epoch, no overlap assumed: {epoch_s:.1f} s per epoch of all runs; {time_left:.0f} s left -> "
           f"{epochs} epoch(s)")
    if epochs < args.epochs:
        why += f" (asked {args.epochs}: reduced to fit the budget)"
    return epochs, why


def driver(args: argparse.Namespace, argv: list[str]) -> int:
    import torch

    t_start = time.perf_counter()
    deadline = t_start + args.budget_minutes * 60
    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise SetupError("no CUDA device: this run needs one GPU (use --smoke to check it on a CPU)")
        print(f"# GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.synthetic:
        args.data_root = str(find_data(args.data_dir))
        t0 = time.perf_counter()
        try:  # decode once here (cached on disk), so the workers only read the cache
            train, test = _datasets(args)
        except Exception as exc:
            raise SetupError(f"cannot load CIFAR-10 from {args.data_root}: {str(exc).splitlines()[0]}") from None
        print(f"# data: {len(train)} train / {len(test)} test images from {args.data_root} "
              f"({time.perf_counter() - t0:.1f} s)", flush=True)
    names = args.names
    if args.fit:
        try:
            epochs, why = fit_epochs(args, deadline - time.perf_counter() - args.latency_reserve_s)
        except Exception as exc:  # the probe is a guess: a failure here should not cost the whole run
            epochs, why = args.epochs, f"probe failed ({type(exc).__name__}: {str(exc)[:200]}); keeping {args.epochs}"
        print(f"# {why}", flush=True)
        args.fit_note = why
        if epochs != args.epochs:
            args.epochs = epochs
            argv = [*_drop_option(argv, "--epochs"), "--epochs", str(epochs)]
    procs: dict[str, subprocess.Popen[bytes]] = {}
    logs = {}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": str(args.worker_threads)}
    pending = list(names)
    status: dict[str, str] = {}
    while pending or procs:
        while pending and len(procs) < args.parallel:
            n = pending.pop(0)
            (out / n).mkdir(parents=True, exist_ok=True)
            logs[n] = open(out / n / "log.txt", "wb")  # closed when the process ends
            cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--worker", n, "--data-root-resolved",
                   args.data_root or ""]
            procs[n] = subprocess.Popen(cmd, stdout=logs[n], stderr=subprocess.STDOUT, env=env)
            print(f"# started {n} (pid {procs[n].pid})", flush=True)
        time.sleep(0.2 if args.smoke else 2.0)
        for n, p in list(procs.items()):
            rc = p.poll()
            if rc is not None:
                logs[n].close()
                ok = rc == 0 and (out / n / "result.json").is_file()
                status[n] = "done" if ok else f"failed (exit {rc}; see {out / n / 'log.txt'})"
                print(f"# {n}: {status[n]} after {time.perf_counter() - t_start:.0f} s", flush=True)
                del procs[n]
        if time.perf_counter() > deadline - args.latency_reserve_s:
            for n, p in procs.items():
                p.kill()
                p.wait()
                logs[n].close()
                status[n] = f"stopped at the {args.budget_minutes:g}-minute budget"
                print(f"# {n}: {status[n]}", flush=True)
            for n in pending:
                status[n] = "not started (time budget)"
            procs, pending = {}, []
    results = {n: json.loads((out / n / "result.json").read_text()) for n in names if status.get(n) == "done"}
    lat: dict[str, dict[int, float]] = {}
    if results:
        try:
            lat = _latency(args, list(results))
        except Exception as exc:  # figures without latency are still worth printing
            print(f"# latency measurement failed: {type(exc).__name__}: {exc}", flush=True)
    table = _table(args, results, lat, status)
    head = f"# python benchmarks/gpu.py {' '.join(argv)}  ({time.perf_counter() - t_start:.0f} s in all)"
    if getattr(args, "fit_note", None):
        head += f"\n# {args.fit_note}"
    print("\n" + head + "\n\n" + table, flush=True)
    (out / "summary.md").write_text(head + "\n\n" + table + "\n")
    (out / "summary.json").write_text(json.dumps({"args": vars(args), "status": status, "results": results,
                                                  "latency_ms": lat}, indent=1, default=str))
    print(f"\nwrote {out / 'summary.md'}")
    return 0 if all(status.get(n) == "done" for n in names) else 1


def _drop_option(argv: list[str], opt: str) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == opt:
            skip = True
            continue
        if a.startswith(opt + "="):
            continue
        out.append(a)
    return out


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="CPU, seconds: synthetic data (or --data-dir), ResNet-20, "
                                                        "1 epoch of 2 steps, 2 runs at a time")
    p.add_argument("--data-dir", default=None, help="folder holding cifar10/ (default: the usual places)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per run (default 30; smoke 1)")
    p.add_argument("--batch", type=int, default=None, help="training batch (default 256; smoke 32)")
    p.add_argument("--lr", type=float, default=0.2, help="one-cycle peak learning rate (default 0.2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--parallel", type=int, default=None, help="runs at once (default: all 5; smoke 2)")
    p.add_argument("--only", default=None, help="comma-separated subset of: " + ", ".join(RUNS))
    p.add_argument("--budget-minutes", type=float, default=8.0, help="stop runs still going after this")
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--no-fit", dest="fit", action="store_false",
                   help="keep --epochs even if a timed probe says the runs will not fit the time budget")
    p.add_argument("--probe-steps", type=int, default=None, help="steps of the timing probe (default 30; smoke 2)")
    # internal (worker processes)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--data-root-resolved", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.device = "cpu" if a.smoke else "cuda"
    a.synthetic = a.smoke and not a.data_dir
    a.epochs = a.epochs if a.epochs is not None else (1 if a.smoke else 30)
    a.batch = a.batch if a.batch is not None else (32 if a.smoke else 256)
    a.parallel = a.parallel if a.parallel is not None else (2 if a.smoke else len(RUNS))
    a.model = "resnet20" if a.smoke else "resnet56"
    a.subset, a.test_subset = (256, 128) if a.smoke else (0, 0)
    a.max_steps = 2 if a.smoke else 0
    a.worker_threads = 1 if a.smoke else 2
    a.latency_batch = 8 if a.smoke else 256
    a.latency_rounds = 2 if a.smoke else 20
    a.latency_reserve_s = 0 if a.smoke else 45
    a.data_root = a.data_root_resolved or None
    a.probe_steps = a.probe_steps if a.probe_steps is not None else (2 if a.smoke else 30)
    a.names = [n for n in RUNS if not a.only or n in a.only.split(",")]
    for key in ("epochs", "batch", "parallel", "probe_steps"):
        if getattr(a, key) < 1:
            p.error(f"--{key.replace('_', '-')} must be >= 1")
    if a.only and not set(a.only.split(",")) <= set(RUNS):
        p.error(f"--only takes names from: {', '.join(RUNS)}")
    return a


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    if args.smoke and "--smoke" not in argv:
        argv.append("--smoke")
    try:
        if args.worker:
            try:
                return worker(args)
            except Exception:
                traceback.print_exc()  # into the run's log.txt; the driver reports "failed, see log"
                return 1
        driver_argv = [a for a in argv if a not in ("--worker",)]
        return driver(args, driver_argv)
    except SetupError as exc:
        print(f"gpu.py: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gpu.py: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
