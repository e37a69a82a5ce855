"""Latency benchmark: does "make it 2x / 3x faster on this runtime" land, and how much of a MACs cut turns
into speed in each runtime?

One process, fixed seed, ResNet-56 at CIFAR shapes (3x32x32), one thread:

* **Latency targets.** SGHT with its per-group ``k`` taken from a latency target
  (:func:`prunekit.metrics.latency_model.latency_target`: per-layer latency tables measured once in ONNX
  Runtime and cached, the budget solver, then the real thinned network measured and the aim corrected) at
  0.5 and 0.33 of the dense latency, at batch 1 and 64. SGHT's ``finalize`` removes the zero filters for
  real; the delivered network is then timed against the dense one again, independently (interleaved
  rounds, medians). Latency depends on the widths only, so the network is not trained here (training is
  ``benchmarks/sght.py`` / ``benchmarks/gpu.py`` business). Printed: target, the solver's own check, the
  independent check, the error, the MACs reduction. A target the default widths (multiples of 8) cannot
  reach is retried with ``round_to=4`` and both rows are printed.
* **Speed-up / MACs reduction** of ResNet-56 with 50% of every group's channels removed (L1 norm of the
  root filters), in eager, deployed and ONNX Runtime, at batch 1 and 64; and, for ONNX Runtime, each stage
  timed on its own (16 / 32 / 64 channels dense, 8 / 16 / 32 pruned) to show what limits the speed-up.

Timings use the calling thread's CPU time (one thread; ``prunekit.metrics.runtime`` clock ``thread``): the
same as wall latency on an idle machine, and not inflated by other processes sharing the cores.

    .venv/bin/python benchmarks/latency.py             # full run (~10 min on 2 shared cores; tables cached)
    .venv/bin/python benchmarks/latency.py --quick     # batch 1 only, fewer rounds

Results also go to ``benchmarks/out/latency.json``; tables to ``--cache`` (default ~/.cache/prunekit).
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from prunekit import methods, metrics, models
from prunekit.errors import PrunekitError
from prunekit.methods.budget import filter_groups
from prunekit.metrics import latency_model, runtime

OUT = Path(__file__).resolve().parent / "out"
SHAPE = (3, 32, 32)


def resnet56(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return models.create("resnet56").eval()


def targeted_sght(target: float, batch: int, args: argparse.Namespace, round_to: int | None) -> dict[str, Any]:
    """SGHT at a latency target: widths from the target, real removal, an independent timing check."""
    model = resnet56(args.seed)
    dense = resnet56(args.seed)
    x = torch.randn(1, *SHAPE)
    spec = {"latency": target, "runtime": "onnxruntime", "batch": batch, "threads": 1, "rounds": args.rounds,
            "cache": args.cache, "tol": 0.05, "corrections": 4, "round_to": round_to}
    t0 = time.perf_counter()
    with latency_model.latency_target(spec) as rep:
        result = methods.get("sght")().finalize(model, x)
    solve_s = time.perf_counter() - t0
    pruned = result.model.eval()
    rounds = latency_model.check_rounds(latency_model.LatencyTarget.parse(spec), rep["dense_ms"])
    rows = runtime.measure({"dense": dense, "pruned": pruned}, x, runtimes=["onnxruntime"], batches=[batch],
                           threads=1, rounds=rounds, repeats=3, warmup=3)
    ms = {r["model"]: r["median_ms"] for r in rows}
    ratio = ms["pruned"] / ms["dense"]
    macs = metrics.count(dense, x).macs / metrics.count(pruned, x).macs
    return {"target": target, "batch": batch, "round_to": rep["round_to"], "solver_measured": rep["measured"],
            "measured": ratio, "error_pct": 100 * (ratio - target) / target, "dense_ms": ms["dense"],
            "pruned_ms": ms["pruned"], "macs_reduction": macs, "speedup_per_macs": (1 / ratio) / macs,
            "corrections": len(rep["history"]) - 1, "solve_s": solve_s, "keep": rep["keep"]}


def half_plan(model: torch.nn.Module, x: torch.Tensor) -> dict[str, list[int]]:
    """50% of every prunable group: the channels whose root-layer filters have the smallest L1 norm."""
    plan = {}
    for g in filter_groups(model, x):
        w = model.get_submodule(g.name).weight.detach()
        plan[g.name] = sorted(int(i) for i in torch.argsort(w.abs().reshape(w.shape[0], -1).sum(1))[:g.size // 2])
    return plan


def half_speedups(args: argparse.Namespace, batches: list[int]) -> tuple[list[dict[str, Any]], float]:
    from prunekit.surgery import remove_channels

    dense = resnet56(args.seed)
    half = resnet56(args.seed)
    x = torch.randn(1, *SHAPE)
    remove_channels(half, half_plan(half, x), x)
    macs = metrics.count(dense, x).macs / metrics.count(half, x).macs
    rows = runtime.measure({"dense": dense, "half": half}, x, runtimes=["eager", "deployed", "onnxruntime"],
                           batches=batches, threads=1, rounds=args.rounds * (4 if batches == [1] else 1), repeats=3,
                           warmup=3)
    return runtime.side_by_side(rows, model="half", dense="dense", macs_ratio=macs), macs


def _stage_input(model: torch.nn.Module, i: int, x: torch.Tensor) -> torch.Tensor:
    seen: list[torch.Tensor] = []

    def keep(mod: torch.nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        seen.append(inp[0])

    h = model.get_submodule(f"layer{i}").register_forward_hook(keep)
    with torch.no_grad():
        model(x)
    h.remove()
    return seen[0]


def stage_times(batch: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Each stage of dense and 50% ResNet-56 timed on its own in ONNX Runtime (interleaved, thread clock):
    where the speed-up is lost."""
    from prunekit.surgery import remove_channels

    x = torch.randn(1, *SHAPE)
    dense = resnet56(args.seed)
    half = resnet56(args.seed)
    remove_channels(half, half_plan(half, x), x)
    out = []
    for i in (1, 2, 3):
        nets, inputs = {}, {}
        for name, m in (("dense", dense), ("half", half)):
            nets[name], inputs[name] = m.get_submodule(f"layer{i}"), _stage_input(m, i, x)
        ms, macs = {}, {}
        for name in nets:
            rows = runtime.measure({name: nets[name]}, inputs[name], runtimes=["onnxruntime"], batches=[batch],
                                   threads=1, rounds=args.rounds * 4, repeats=3, warmup=3)
            ms[name] = rows[0]["median_ms"]
            macs[name] = metrics.count(nets[name], inputs[name]).macs
        out.append({"stage": i, "channels dense / half": f"{inputs['dense'].shape[1] * (2 if i > 1 else 1)} / "
                    f"{inputs['half'].shape[1] * (2 if i > 1 else 1)}", "dense ms": round(ms["dense"], 3),
                    "half ms": round(ms["half"], 3), "speed-up": round(ms["dense"] / ms["half"], 2),
                    "MACs reduction": round(macs["dense"] / macs["half"], 2),
                    "speed-up / MACs": round(ms["dense"] / ms["half"] / (macs["dense"] / macs["half"]), 2)})
    return out


def ort_graph_ops(args: argparse.Namespace) -> dict[str, dict[str, int]]:
    """Node counts by op type of ONNX Runtime's optimised graph, dense and 50%: layout reorders mark layers that
    fall outside its blocked (NCHWc) convolution kernels."""
    import onnx
    import onnxruntime as ort

    from prunekit.surgery import remove_channels

    x = torch.randn(1, *SHAPE)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("dense", "half"):
            m = resnet56(args.seed)
            if name == "half":
                remove_channels(m, half_plan(m, x), x)
            so = ort.SessionOptions()
            so.intra_op_num_threads, so.log_severity_level = 1, 3
            so.optimized_model_filepath = str(Path(tmp) / f"{name}.onnx")
            ort.InferenceSession(runtime.onnx_bytes(m, x), so, providers=["CPUExecutionProvider"])
            graph = onnx.load(so.optimized_model_filepath).graph
            ops = collections.Counter(f"{n.domain.split('.')[-1]}:{n.op_type}" if n.domain else n.op_type
                                      for n in graph.node)
            out[name] = dict(sorted(ops.items()))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="batch 1 only, 7 rounds")
    p.add_argument("--batches", default="1,64")
    p.add_argument("--targets", default="0.5,0.33")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", default=None, help="latency-table folder (default ~/.cache/prunekit/latency)")
    args = p.parse_args(argv)
    try:
        runtime.require_onnxruntime()
    except PrunekitError as exc:
        print(f"latency.py: {exc}", file=sys.stderr)
        return 2
    batches = [1] if args.quick else [int(b) for b in args.batches.split(",")]
    if args.quick:
        args.rounds = min(args.rounds, 7)
    targets = [float(t) for t in args.targets.split(",")]
    print(f"# python benchmarks/latency.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    print(f"# ResNet-56 (CIFAR shapes), ONNX Runtime {runtime.require_onnxruntime().__version__}, torch "
          f"{torch.__version__}, 1 thread, thread CPU time, medians of interleaved rounds (>= {args.rounds}; "
          f"~0.3 s of dense forwards per check), seed {args.seed}")
    results: dict[str, Any] = {"targets": [], "half": {}}
    print("\n## Latency-targeted SGHT (ONNX Runtime, 1 thread)\n")
    print("| batch | target | measured (solver check) | measured (independent) | error | dense ms | pruned ms "
          "| MACs reduction | speed-up / MACs | round_to | corrections |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for b in batches:
        for t in targets:
            for rt in (None, 4):
                try:
                    r = targeted_sght(t, b, args, rt)
                except PrunekitError as exc:
                    print(f"| {b} | {t} | unreachable with round_to={rt or 'default'}: {exc} | | | | | | | | |")
                    continue
                results["targets"].append(r)
                print(f"| {b} | {t:.2f} | {r['solver_measured']:.3f} | {r['measured']:.3f} | {r['error_pct']:+.1f}% "
                      f"| {r['dense_ms']:.3f} | {r['pruned_ms']:.3f} | {r['macs_reduction']:.2f}x "
                      f"| {r['speedup_per_macs']:.2f} | {r['round_to']} | {r['corrections']} |", flush=True)
                if abs(r["error_pct"]) <= 10:
                    break
    print("\n## 50% of the channels removed: speed-up / MACs reduction per runtime\n")
    table, macs = half_speedups(args, batches)
    results["half"] = {"macs_reduction": macs, "table": table}
    print(metrics.format_table(table))
    print("\n## Where the speed-up is lost: each stage alone in ONNX Runtime, batch 1\n")
    prof = stage_times(1, args)
    results["stages_b1"] = prof
    print(metrics.format_table(prof))
    ops = ort_graph_ops(args)
    results["ort_graph_ops"] = ops
    for name, counts in ops.items():
        print(f"ONNX Runtime's optimised graph, {name}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "latency.json").write_text(json.dumps(results, indent=1))
    print(f"\nwrote {OUT / 'latency.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
