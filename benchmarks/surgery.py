"""Surgery benchmark: does removing channels make the network really smaller and faster?

One run, one process, fixed seed:

* ResNet-56 and VGG-16 (CIFAR shapes, zoo models): remove 50% of the channels of every prunable group
  (the filters with the smallest L1 norm of the group's root layer). Reported: MACs and params ratios
  (``prunekit.metrics.count``), CPU latency of dense and pruned models at batch 64 with 2 threads in every
  runtime side by side (``prunekit.metrics.runtime.measure``: PyTorch eager, the deployed PyTorch form with BN
  folded and its memory format picked by measurement, and ONNX Runtime when installed; dense and pruned
  interleaved round-robin, medians of ``--runs`` rounds), measured speed-up vs the MACs reduction (target:
  speed-up >= 0.8 x MACs reduction) in each, and the time of the surgery itself (``remove_channels``,
  including its dependency-graph trace).
* ResNet-50 (ImageNet shape): time of ``channel_groups`` (graph build) and of the 50% surgery
  (target < 5 s).
* Unstructured export: ResNet-56 with 50% and 90% of its conv/linear weights masked (global magnitude):
  ``save_sparse`` file size vs the dense ``prunekit.save`` file and vs the ideal (non-zeros x 4 bytes +
  the cheaper of a bitmap or indices per tensor); target file / ideal <= 1.2.

    .venv/bin/python benchmarks/surgery.py                 # full run (a few minutes on 2 cores)
    .venv/bin/python benchmarks/surgery.py --runs 5        # quicker, noisier latency

Results also go to ``benchmarks/out/surgery.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit import io, metrics, models
from prunekit.errors import PrunekitError
from prunekit.metrics import runtime
from prunekit.surgery import MaskSet, channel_groups, remove_channels, save_sparse
from prunekit.surgery.sparse import ideal_bytes

RUNTIMES = ("eager", "deployed", "onnxruntime")


def half_plan(model: nn.Module, x: torch.Tensor) -> dict[str, list[int]]:
    """50% of every prunable group: the channels whose root-layer filters have the smallest L1 norm."""
    plan = {}
    for g in channel_groups(model, x):
        w = model.get_submodule(g.name).weight.detach()
        norms = w.abs().reshape(w.shape[0], -1).sum(1)
        k = g.size // 2
        plan[g.name] = sorted(int(i) for i in torch.argsort(norms)[:k])
    return plan


def latencies(dense: nn.Module, pruned: nn.Module, args: argparse.Namespace, shape: tuple[int, ...]
              ) -> dict[str, dict[str, float]]:
    """Median ms per forward of both models in every runtime available here, interleaved round-robin."""
    try:
        runtime.require_onnxruntime()
        rts = RUNTIMES
    except PrunekitError:
        rts = RUNTIMES[:2]
    rows = runtime.measure({"dense": dense, "pruned": pruned}, torch.randn(1, *shape), runtimes=rts,
                           batches=[args.batch], threads=args.threads, rounds=args.runs, repeats=3, warmup=3)
    out: dict[str, dict[str, float]] = {}
    for r in rows:
        out.setdefault(r["runtime"], {})[r["model"]] = r["median_ms"]
    return out


def structured(name: str, args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(args.seed)
    dense = models.create(name).eval()
    shape = tuple(dense.input_shape)
    x = torch.randn(1, *shape)
    pruned = models.create(name).eval()
    pruned.load_state_dict(dense.state_dict())
    t = time.perf_counter()
    plan = half_plan(pruned, x)
    t_groups = time.perf_counter() - t
    t = time.perf_counter()
    report = remove_channels(pruned, plan, x)
    t_surgery = time.perf_counter() - t
    cd, cp = metrics.count(dense, x), metrics.count(pruned, x)
    mac_red = cd.macs / cp.macs
    lat = {rt: {"dense_ms": ms["dense"], "pruned_ms": ms["pruned"], "speedup": ms["dense"] / ms["pruned"],
                "speedup_over_macs_reduction": ms["dense"] / ms["pruned"] / mac_red}
           for rt, ms in latencies(dense, pruned, args, shape).items()}
    return {"model": name, "groups": len(plan), "params_dense": cd.params, "params_pruned": cp.params,
            "macs_dense": cd.macs, "macs_pruned": cp.macs, "macs_reduction": mac_red, "latency": lat,
            "plan_s": t_groups, "surgery_s": t_surgery, "params_check": report.params_after == cp.params}


def resnet50(args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(args.seed)
    model = models.create("resnet50").eval()
    x = torch.randn(1, *model.input_shape)
    channel_groups(model, x)  # first call pays one-off imports / kernel warm-up
    t = time.perf_counter()
    groups = channel_groups(model, x)
    t_graph = time.perf_counter() - t
    plan = {g.name: list(range(g.size // 2)) for g in groups}
    t = time.perf_counter()
    report = remove_channels(model, plan, x)
    t_surgery = time.perf_counter() - t
    return {"model": "resnet50", "groups": len(groups), "graph_s": t_graph, "surgery_s": t_surgery,
            "params_before": report.params_before, "params_after": report.params_after}


def export(args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    rows = []
    for sparsity in (0.5, 0.9):
        torch.manual_seed(args.seed)
        model = models.create("resnet56").eval()
        model(torch.randn(8, *model.input_shape))  # BN statistics that are not all zeros / ones
        MaskSet.from_topk(model, 1.0 - sparsity, scope="global").apply_()
        sp = save_sparse(model, tmp / f"sparse{sparsity}.safetensors")
        dn = io.save(model, tmp / f"dense{sparsity}.safetensors")
        state = model.state_dict()
        ideal = sum(ideal_bytes(v) for v in state.values())
        raw = sum(v.numel() * v.element_size() for v in state.values())
        rows.append({"sparsity": sparsity, "dense_file": dn.stat().st_size, "sparse_file": sp.stat().st_size,
                     "ideal": ideal, "raw_tensors": raw, "file_over_ideal": sp.stat().st_size / ideal,
                     "file_over_dense": sp.stat().st_size / dn.stat().st_size})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs", type=int, default=30, help="timed forwards per model (median)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sections", default="structured,resnet50,export",
                    help="comma-separated subset of structured,resnet50,export")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "surgery.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cmd = " ".join([Path(sys.executable).name, *sys.argv])
    print(f"# {cmd}  (seed {args.seed}, batch {args.batch}, {args.threads} threads, {args.runs} runs, "
          f"torch {torch.__version__})")

    sections = set(args.sections.split(","))
    rows: list[dict[str, Any]] = []
    r50: dict[str, Any] = {}
    ex: list[dict[str, Any]] = []
    if "structured" in sections:
        rows = [structured(n, args) for n in ("resnet56", "vgg16")]
        print("\n## 50% of the channels of every prunable group removed (CIFAR 32x32)")
        print(f"{'model':10} {'params':>19} {'MACs (M)':>15} {'MAC red.':>8} {'surgery s':>9}")
        for r in rows:
            print(f"{r['model']:10} {r['params_dense']:>9,}->{r['params_pruned']:<9,} "
                  f"{r['macs_dense'] / 1e6:>7.1f}->{r['macs_pruned'] / 1e6:<7.1f} {r['macs_reduction']:>7.2f}x "
                  f"{r['surgery_s']:>9.2f}")
        print(f"\nLatency at batch {args.batch}, {args.threads} threads, dense and pruned side by side in each runtime "
              f"(eager; deployed = BN folded, memory format by measurement; ONNX Runtime):")
        print(f"{'model':10} {'runtime':12} {'dense/pruned ms':>19} {'speed-up':>8} {'sp/MACred':>9}")
        for r in rows:
            for rt, v in r["latency"].items():
                print(f"{r['model']:10} {rt:12} {v['dense_ms']:>9.1f}/{v['pruned_ms']:<9.1f} {v['speedup']:>7.2f}x "
                      f"{v['speedup_over_macs_reduction']:>9.2f}")
    if "resnet50" in sections:
        r50 = resnet50(args)
        print("\n## ResNet-50 (1x3x224x224)")
        print(f"graph (channel_groups) {r50['graph_s']:.2f} s, surgery 50% of {r50['groups']} groups "
              f"{r50['surgery_s']:.2f} s (target < 5 s); params {r50['params_before']:,} -> "
              f"{r50['params_after']:,}")
    if "export" in sections:
        with tempfile.TemporaryDirectory() as d:
            ex = export(args, Path(d))
        print("\n## Unstructured export, ResNet-56 (global magnitude masks)")
        print(f"{'sparsity':>8} {'dense file':>11} {'sparse file':>11} {'ideal':>9} {'file/ideal':>10} "
              f"{'file/dense':>10}")
        for r in ex:
            print(f"{r['sparsity']:>8.0%} {r['dense_file']:>11,} {r['sparse_file']:>11,} {r['ideal']:>9,} "
                  f"{r['file_over_ideal']:>10.3f} {r['file_over_dense']:>10.3f}")
    print(f"\n(load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())} on "
          f"{os.cpu_count()} CPUs; latency ratios are only meaningful on an otherwise idle machine)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": cmd, "seed": args.seed, "threads": args.threads,
                                    "batch": args.batch, "runs": args.runs, "structured": rows,
                                    "resnet50": r50, "export": ex}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
