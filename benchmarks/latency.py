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
  reach is searched again by the solver itself at multiples of 4 (its ``round_to`` column says which).
* **Speed-up / MACs reduction** of ResNet-56 with 50% of every group's channels removed (L1 norm of the
  root filters), in eager, deployed and ONNX Runtime, at batch 1 and 64; and, for ONNX Runtime, each stage
  timed on its own (16 / 32 / 64 channels dense, 8 / 16 / 32 pruned) to show what limits the speed-up.

Timings use the calling thread's CPU time (one thread; ``prunekit.metrics.runtime`` clock ``thread``): the
same as wall latency on an idle machine, and not inflated by other processes sharing the cores.

    .venv/bin/python benchmarks/latency.py             # full run (~10 min on 2 shared cores; tables cached)
    .venv/bin/python benchmarks/latency.py --quick     # batch 1 only, fewer rounds
    .venv/bin/python benchmarks/latency.py --speedup   # only the 50% network: every runtime / ORT setting

``--speedup`` times the dense and the 50% ResNet-56 under every runtime setting that could buy speed, side by
side in one interleaved loop: PyTorch eager and deployed, ONNX Runtime at each graph optimisation level
(``all`` has the NCHWc layout transformer, ``extended`` and ``basic`` do not), with a static batch instead of
a dynamic one, with BN folded before export and at opset 13; the best setting of *each* network (picked by
measurement) gives the best-runtime speed-up. Then ONNX Runtime's own profile of the 50% network at batch 1,
time by operator, shows what limits it.

Results also go to ``benchmarks/out/latency.json``; tables to ``--cache`` (default ~/.cache/prunekit).
"""

from __future__ import annotations

import argparse
import collections
import copy
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


def targeted_sght(target: float, batch: int, args: argparse.Namespace) -> dict[str, Any]:
    """SGHT at a latency target: widths from the target, real removal, an independent timing check."""
    model = resnet56(args.seed)
    dense = resnet56(args.seed)
    x = torch.randn(1, *SHAPE)
    spec = {"latency": target, "runtime": "onnxruntime", "batch": batch, "threads": 1, "rounds": args.rounds,
            "cache": args.cache, "tol": 0.05, "corrections": 4}
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
            "measured_networks": len(rep["history"]), "solve_s": solve_s, "keep": rep["keep"]}


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


def _ort_variant(model: torch.nn.Module, x: torch.Tensor, level: str, *, static: bool = False, fold: bool = False,
                 opset: int | None = None, profile: str | None = None) -> Any:
    """An ONNX Runtime session (one thread) of ``model`` exported with the given choices."""
    import io
    import warnings

    import onnxruntime as ort

    from prunekit.surgery.fold import fold_batchnorm

    m = copy.deepcopy(model).eval()
    if fold:
        fold_batchnorm(m)
    buf = io.BytesIO()
    kw: dict[str, Any] = {} if static else {"dynamic_axes": {"input": {0: "batch"}, "output": {0: "batch"}}}
    if opset is not None:
        kw["opset_version"] = opset
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (x,), buf, dynamo=False, input_names=["input"], output_names=["output"], **kw)
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = 1, 1, 3
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                                   "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                                   "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC}[level]
    if profile:
        so.enable_profiling, so.profile_file_prefix = True, profile
    return ort.InferenceSession(buf.getvalue(), so, providers=["CPUExecutionProvider"])


ORT_VARIANTS: dict[str, dict[str, Any]] = {
    "ort all (default)": {"level": "all"},
    "ort extended (no NCHWc)": {"level": "extended"},
    "ort basic": {"level": "basic"},
    "ort all, static batch": {"level": "all", "static": True},
    "ort all, BN folded before export": {"level": "all", "fold": True},
    "ort all, opset 13": {"level": "all", "opset": 13},
}


def speedup_settings(args: argparse.Namespace, batch: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Dense and 50% ResNet-56 under every setting, interleaved (thread CPU time, medians); and the best
    setting of each network."""
    import statistics

    from prunekit.surgery import remove_channels

    x1 = torch.randn(1, *SHAPE)
    dense, half = resnet56(args.seed), resnet56(args.seed)
    remove_channels(half, half_plan(half, x1), x1)
    macs = metrics.count(dense, x1).macs / metrics.count(half, x1).macs
    x = x1.repeat(batch, 1, 1, 1)
    timers: dict[tuple[str, str], Any] = {}
    for name, m in (("dense", dense), ("half", half)):
        for rt in ("eager", "deployed"):
            timers[(f"PyTorch {rt}", name)] = runtime.prepare(m, rt, x, threads=1).time_ms
        for label, opts in ORT_VARIANTS.items():
            sess, feed = _ort_variant(m, x, **opts), {"input": x.numpy()}

            def ort_time(n: int, sess: Any = sess, feed: dict[str, Any] = feed) -> list[float]:
                out = []
                for _ in range(n):
                    t0 = time.thread_time()
                    sess.run(None, feed)
                    out.append((time.thread_time() - t0) * 1000.0)
                return out

            timers[(label, name)] = ort_time
        compiled = _compiled_timer(m, x)
        if compiled is not None:
            timers[("PyTorch compiled (torch.compile, inductor, frozen weights)", name)] = compiled
    torch.set_num_threads(1)
    for t in timers.values():
        t(3)
    samples: dict[tuple[str, str], list[float]] = {k: [] for k in timers}
    for _ in range(args.rounds * (4 if batch == 1 else 1)):
        for k, t in timers.items():
            samples[k].extend(t(3))
    ms = {k: statistics.median(v) for k, v in samples.items()}
    settings = list(dict.fromkeys(k[0] for k in timers))
    rows = [{"batch": batch, "setting": st, "dense ms": round(ms[(st, "dense")], 3),
             "50% ms": round(ms[(st, "half")], 3), "speed-up": round(ms[(st, "dense")] / ms[(st, "half")], 2),
             "speed-up / MACs reduction": round(ms[(st, "dense")] / ms[(st, "half")] / macs, 2)} for st in settings]
    bd = min(settings, key=lambda st: ms[(st, "dense")])
    bh = min(settings, key=lambda st: ms[(st, "half")])
    best = {"batch": batch, "macs_reduction": macs, "dense_setting": bd, "dense_ms": ms[(bd, "dense")],
            "half_setting": bh, "half_ms": ms[(bh, "half")], "speedup": ms[(bd, "dense")] / ms[(bh, "half")],
            "speedup_per_macs": ms[(bd, "dense")] / ms[(bh, "half")] / macs}
    return rows, best


def _compiled_timer(model: torch.nn.Module, x: torch.Tensor) -> Any:
    """A timer of ``model`` compiled by ``torch.compile`` (inductor, weights frozen as constants: the fastest
    PyTorch CPU form short of another runtime), or None where it cannot compile here (no C++ compiler)."""
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    torch.set_num_threads(1)
    try:
        fn = torch.compile(copy.deepcopy(model).eval())
        with torch.no_grad():
            fn(x)
    except Exception as exc:  # a missing compiler: the row is left out, and said so
        print(f"(torch.compile unavailable here, its row left out: {type(exc).__name__})", flush=True)
        return None

    def time_compiled(n: int) -> list[float]:
        out = []
        with torch.no_grad():
            for _ in range(n):
                t0 = time.thread_time()
                fn(x)
                out.append((time.thread_time() - t0) * 1000.0)
        return out

    return time_compiled


def ort_profile(args: argparse.Namespace, runs: int = 200) -> list[dict[str, Any]]:
    """ONNX Runtime's profile of the 50% ResNet-56 at batch 1 (all optimisations): kernel time by operator,
    with the convolutions that compute 8 real output channels (stage 1) apart."""
    import onnx

    from prunekit.surgery import remove_channels

    x = torch.randn(1, *SHAPE)
    half = resnet56(args.seed)
    remove_channels(half, half_plan(half, x), x)
    with tempfile.TemporaryDirectory() as tmp:
        sess = _ort_variant(half, x, "all", profile=str(Path(tmp) / "prof"))
        feed = {"input": x.numpy()}
        for _ in range(runs):
            sess.run(None, feed)
        events = json.loads(Path(sess.end_profiling()).read_text())
        so_path = str(Path(tmp) / "opt.onnx")
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads, so.log_severity_level, so.optimized_model_filepath = 1, 3, so_path
        ort.InferenceSession(runtime.onnx_bytes(half, x), so, providers=["CPUExecutionProvider"])
        graph = onnx.load(so_path).graph
    init = {i.name: list(i.dims) for i in graph.initializer}
    # a stage-1 conv: its blocked weight has 16 output rows for 8 real channels (its output is reordered back)
    reordered = {n.input[0] for n in graph.node if n.op_type == "ReorderOutput"}
    narrow = {n.name for n in graph.node if n.op_type == "Conv" and n.output[0] in reordered
              and n.input[1] in init and init[n.input[1]][0] == 16}
    total: collections.Counter[str] = collections.Counter()
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        node = e["name"].removesuffix("_kernel_time")
        op = e.get("args", {}).get("op_name", "?")
        key = f"{op} (8-channel stage, computed as 16)" if node in narrow else op
        total[key] += float(e["dur"])
    all_us = sum(total.values())
    return [{"operator": k, "share of kernel time": f"{100 * v / all_us:.1f}%",
             "us per run": round(v / runs, 1)} for k, v in total.most_common()]


def speedup_main(args: argparse.Namespace, batches: list[int]) -> int:
    print("\n## 50% ResNet-56 (L1-filter plan, every group halved): dense and 50% under every setting\n")
    results: dict[str, Any] = {"settings": [], "best": []}
    for b in batches:
        rows, best = speedup_settings(args, b)
        results["settings"] += rows
        results["best"].append(best)
        print(metrics.format_table(rows))
        print(f"\nbatch {b}: best runtime, each network at its fastest setting: dense {best['dense_ms']:.3f} ms "
              f"({best['dense_setting']}), 50% {best['half_ms']:.3f} ms ({best['half_setting']}): speed-up "
              f"{best['speedup']:.2f}, MACs reduction {best['macs_reduction']:.2f}x, speed-up / MACs reduction "
              f"{best['speedup_per_macs']:.2f}\n", flush=True)
    stages = stage_times(1, args)
    results["stages_b1"] = stages
    print("## What limits it: each stage alone in ONNX Runtime (all optimisations), batch 1\n")
    print(metrics.format_table(stages))
    prof = ort_profile(args)
    results["profile_b1"] = prof
    print("\nONNX Runtime's own profile of the 50% network, batch 1, all optimisations (wall-clock shares):\n")
    print(metrics.format_table(prof))
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "latency-speedup.json").write_text(json.dumps(results, indent=1))
    print(f"\nwrote {OUT / 'latency-speedup.json'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="batch 1 only, 7 rounds")
    p.add_argument("--batches", default="1,64")
    p.add_argument("--targets", default="0.5,0.33")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", default=None, help="latency-table folder (default ~/.cache/prunekit/latency)")
    p.add_argument("--speedup", action="store_true", help="only the 50%% network under every runtime setting")
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
    if args.speedup:
        return speedup_main(args, batches)
    results: dict[str, Any] = {"targets": [], "half": {}}
    print("\n## Latency-targeted SGHT (ONNX Runtime, 1 thread)\n")
    print("| batch | target | measured (solver check) | measured (independent) | error | dense ms | pruned ms "
          "| MACs reduction | speed-up / MACs | round_to | networks measured |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for b in batches:
        for t in targets:
            try:
                r = targeted_sght(t, b, args)
            except PrunekitError as exc:
                print(f"| {b} | {t} | unreachable: {exc} | | | | | | | | |")
                continue
            results["targets"].append(r)
            print(f"| {b} | {t:.2f} | {r['solver_measured']:.3f} | {r['measured']:.3f} | {r['error_pct']:+.1f}% "
                  f"| {r['dense_ms']:.3f} | {r['pruned_ms']:.3f} | {r['macs_reduction']:.2f}x "
                  f"| {r['speedup_per_macs']:.2f} | {r['round_to']} | {r['measured_networks']} |", flush=True)
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
