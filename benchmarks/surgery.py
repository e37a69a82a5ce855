"""Surgery benchmark: does removing channels make the network really smaller and faster?

One run, one process, fixed seed:

* ResNet-56 and VGG-16 (CIFAR shapes, zoo models): remove 50% of the channels of every prunable group
  (the filters with the smallest L1 norm of the group's root layer). Reported: MACs and params ratios
  (``prunekit.metrics.count``), CPU latency of dense and pruned models at batch 64 with 2 threads (median
  of ``--runs`` runs, dense and pruned timed alternately in the same process), measured speed-up vs the
  MACs reduction (target: speed-up >= 0.8 x MACs reduction) both as built and in the deployed form (BN folded
  into the convs by prunekit.surgery.fold_batchnorm, channels_last memory), and the time of the surgery itself
  (``remove_channels``, including its dependency-graph trace).
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
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit import io, metrics, models, surgery
from prunekit.surgery import MaskSet, channel_groups, remove_channels, save_sparse
from prunekit.surgery.sparse import ideal_bytes


def half_plan(model: nn.Module, x: torch.Tensor) -> dict[str, list[int]]:
    """50% of every prunable group: the channels whose root-layer filters have the smallest L1 norm."""
    plan = {}
    for g in channel_groups(model, x):
        w = model.get_submodule(g.name).weight.detach()
        norms = w.abs().reshape(w.shape[0], -1).sum(1)
        k = g.size // 2
        plan[g.name] = sorted(int(i) for i in torch.argsort(norms)[:k])
    return plan


def deployed(model: nn.Module) -> nn.Module:
    """The inference form a deployment uses (:func:`prunekit.surgery.deployed`: BN folded into the convs,
    channels_last memory format). Applied to dense and pruned alike, so the ratio stays fair."""
    return surgery.deployed(copy.deepcopy(model))


def latency(dense: nn.Module, pruned: nn.Module, batch: int, runs: int, shape: tuple[int, ...],
            channels_last: bool = False) -> tuple[float, float]:
    """Median seconds per forward (no grad, eval) of both models, timed alternately."""
    x = torch.randn(batch, *shape)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    times: dict[str, list[float]] = {"dense": [], "pruned": []}
    with torch.inference_mode():
        for m in (dense, pruned):
            for _ in range(3):
                m(x)
        for _ in range(runs):
            for key, m in (("dense", dense), ("pruned", pruned)):
                t = time.perf_counter()
                m(x)
                times[key].append(time.perf_counter() - t)
    return statistics.median(times["dense"]), statistics.median(times["pruned"])


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
    ld, lp = latency(dense, pruned, args.batch, args.runs, shape)
    fd, fp = latency(deployed(dense), deployed(pruned), args.batch, args.runs, shape, channels_last=True)
    mac_red = cd.macs / cp.macs
    speedup = ld / lp
    return {"model": name, "groups": len(plan), "params_dense": cd.params, "params_pruned": cp.params,
            "macs_dense": cd.macs, "macs_pruned": cp.macs, "macs_reduction": mac_red,
            "latency_dense_ms": ld * 1e3, "latency_pruned_ms": lp * 1e3, "speedup": speedup,
            "speedup_over_macs_reduction": speedup / mac_red, "plan_s": t_groups, "surgery_s": t_surgery,
            "deployed_latency_dense_ms": fd * 1e3, "deployed_latency_pruned_ms": fp * 1e3,
            "deployed_speedup": fd / fp, "deployed_speedup_over_macs_reduction": fd / fp / mac_red,
            "params_check": report.params_after == cp.params}


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
        print(f"{'model':10} {'params':>19} {'MACs (M)':>15} {'MAC red.':>8} {'lat. dense/pruned ms':>21} "
              f"{'speed-up':>8} {'sp/MACred':>9} {'surgery s':>9}")
        for r in rows:
            print(f"{r['model']:10} {r['params_dense']:>9,}->{r['params_pruned']:<9,} "
                  f"{r['macs_dense'] / 1e6:>7.1f}->{r['macs_pruned'] / 1e6:<7.1f} {r['macs_reduction']:>7.2f}x "
                  f"{r['latency_dense_ms']:>10.1f}/{r['latency_pruned_ms']:<10.1f} {r['speedup']:>7.2f}x "
                  f"{r['speedup_over_macs_reduction']:>9.2f} {r['surgery_s']:>9.2f}")
        print("\nDeployed form (BN folded into convs by prunekit.surgery.fold_batchnorm, channels_last), "
              "dense and pruned alike:")
        print(f"{'model':10} {'lat. dense/pruned ms':>21} {'speed-up':>8} {'sp/MACred':>9}")
        for r in rows:
            print(f"{r['model']:10} {r['deployed_latency_dense_ms']:>10.1f}/{r['deployed_latency_pruned_ms']:<10.1f} "
                  f"{r['deployed_speedup']:>7.2f}x {r['deployed_speedup_over_macs_reduction']:>9.2f}")
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
