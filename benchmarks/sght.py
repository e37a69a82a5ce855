"""SGHT benchmark: AHSG-HT from scratch vs L1-filter, SFP and Torch-Pruning's magnitude pruner at matched MACs.

One run, same seed for every row (same initial weights and batch order), same total epochs for every row:

* ``dense``: plain training (reference, no pruning);
* ``sght``: AHSG-HT from a random init with ``H_k`` after every step, per-group k solved from the MACs
  budget, zero filters removed at the end, **no fine-tuning** (the paper's protocol);
* ``l1-filter`` (Li et al.) and ``tp-magnitude`` (Torch-Pruning's MagnitudePruner): half the epochs dense,
  one-shot prune to the same MACs budget, half the epochs fine-tuning the compact net;
* ``sfp`` (He et al.): all epochs with soft zeroing after every epoch, removed at the end.

Figures per row: test top-1 of the compact network, parameters, MACs (and the fraction of dense), CPU
latency at batch 1 and 256 (median, 1 thread) in PyTorch and in ONNX Runtime when installed, training
seconds. Then the cost of ``H_k`` against one training step (forward + backward + AHSG-HT step), timed
interleaved in this process (target <= 5%).

    .venv/bin/python benchmarks/sght.py --quick                  # MNIST subsets, 2 epochs: a smoke run
    .venv/bin/python benchmarks/sght.py                          # LeNet-5 on full MNIST, recipe's 10 epochs
    .venv/bin/python benchmarks/sght.py --only resnet56          # reduced CPU ResNet-56 on a CIFAR-10 subset

Recipes: ``configs/sght/lenet5_mnist_cpu.yaml`` and ``configs/sght/resnet56_cifar10_macs.yaml`` (the reduced
run shortens its schedule and uses a subset). Results: ``benchmarks/out/sght.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from prunekit import data as pdata
from prunekit import experiment, metrics, models
from prunekit.config import load_config
from prunekit.engine import seed_everything
from prunekit.errors import PrunekitError
from prunekit.methods.optim import AHSGHT
from prunekit.methods.sght import SGHT
from prunekit.metrics import runtime

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out"
LENET = ROOT / "configs" / "sght" / "lenet5_mnist_cpu.yaml"
RESNET = ROOT / "configs" / "sght" / "resnet56_cifar10_macs.yaml"


def rows(budget: float) -> list[tuple[str, dict[str, Any]]]:
    """(label, method section) of every row; all pruned rows share the MACs budget."""
    return [
        ("dense", {"name": "none"}),
        ("sght", {"name": "sght", "macs_budget": budget}),
        ("l1-filter", {"name": "l1-filter", "macs_budget": budget}),
        ("sfp", {"name": "sfp", "macs_budget": budget}),
        ("tp-magnitude", {"name": "tp-magnitude", "macs_budget": budget}),
    ]


def _subset(ds: pdata.Dataset, n: int, seed: int) -> pdata.Dataset:
    """A random (seeded) subset: some archives are stored sorted by class, so the first n would not do."""
    if not n or n >= len(ds):
        return ds
    g = torch.Generator().manual_seed(seed)
    return ds.subset(torch.randperm(len(ds), generator=g)[:n].sort().values)


def _latency(model: torch.nn.Module, shape: tuple[int, ...], batch: int, repeats: int) -> float:
    return metrics.latency(model, torch.zeros(batch, *shape), repeats=repeats, warmup=2, threads=1)["median_ms"]


def _ort_latency(model: torch.nn.Module, shape: tuple[int, ...], repeats: int) -> dict[str, float | None]:
    """The same network in ONNX Runtime (one thread) at batch 1 and 256, where it is installed (else None):
    the deployed latency beside PyTorch's."""
    try:
        runtime.require_onnxruntime()
    except PrunekitError:
        return {"ort_ms_b1": None, "ort_ms_b256": None}
    rows = runtime.measure({"m": model}, torch.zeros(1, *shape), runtimes=["onnxruntime"], batches=[1, 256],
                           threads=1, rounds=max(3, repeats // 3), repeats=3, warmup=2)
    return {f"ort_ms_b{r['batch']}": r["median_ms"] for r in rows}


def run_block(title: str, recipe: Path, data: tuple[pdata.Dataset, pdata.Dataset], budget: float, epochs: int,
              seed: int, overrides: list[str], only_rows: set[str], lat_repeats: int) -> list[dict[str, Any]]:
    train, test = data
    shape = train.input_shape
    out = []
    dense_macs = None
    for label, method in rows(budget):
        if only_rows and label not in only_rows:
            continue
        cfg = load_config(recipe, [f"train.epochs={epochs}", f"seed={seed}", "train.device=cpu",
                                   "train.quiet=true", *overrides])
        cfg["method"] = dict(method)
        t0 = time.perf_counter()
        res = experiment.run(cfg, out=OUT / "sght" / f"{title}_{label}", data=(train, test), latency=False)
        seconds = time.perf_counter() - t0
        model = res.model.to("cpu").eval()
        counts = metrics.count(model, torch.zeros(1, *shape))
        if dense_macs is None:
            dense_macs = metrics.count(models.create(cfg["model"]["name"], **_fit(cfg, train)),
                                       torch.zeros(1, *shape)).macs
        row = {"block": title, "row": label, "method": method, "top1": res.figures["top1"],
               "params": counts.params, "macs": counts.macs, "macs_fraction": counts.macs / dense_macs,
               "latency_ms_b1": _latency(model, shape, 1, lat_repeats),
               "latency_ms_b256": _latency(model, shape, 256, max(3, lat_repeats // 4)),
               **_ort_latency(model, shape, lat_repeats),
               "seconds": round(seconds, 1), "val_top1_by_epoch": [h.get("val_top1") for h in res.history],
               "stages": sorted({h["stage"] for h in res.history}, key=[h["stage"] for h in res.history].index)}
        if label == "sght":
            row["revived"] = res.report.get("revived")
            row["keep"] = res.report.get("keep")
        out.append(row)
        print(f"  {title} {label}: top1 {row['top1']:.2f}%  MACs {row['macs']:,} ({row['macs_fraction']:.3f})"
              f"  ({seconds:.0f} s)", flush=True)
    return out


def _fit(cfg: dict[str, Any], train: pdata.Dataset) -> dict[str, Any]:
    c, h, _ = train.input_shape
    kw: dict[str, Any] = {"num_classes": train.num_classes, "in_channels": c}
    if cfg["model"]["name"].startswith("lenet"):
        kw["input_size"] = h
    return kw


def threshold_cost(model_name: str, shape: tuple[int, int, int], batch: int, rounds: int, budget: float,
                   seed: int) -> dict[str, Any]:
    """Median time of H_k against one full training step (fwd + bwd + AHSG-HT step), interleaved."""
    seed_everything(seed)
    model = models.create(model_name, **({"input_size": shape[1]} if model_name.startswith("lenet") else {}))
    method = SGHT(macs_budget=budget)
    h = method.bind(model, torch.zeros(1, *shape))
    opt = AHSGHT(model.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *shape, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)

    def step() -> None:
        F.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def hk() -> None:
        h([opt])

    step(), hk()  # warm-up
    ts, th, ratios = [], [], []
    reps = 5
    for r in range(rounds):
        order = (step, hk) if r % 2 == 0 else (hk, step)
        t = {}
        for fn in order:
            n = 1 if fn is step else reps
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            t[fn] = (time.perf_counter() - t0) / n
        ts.append(t[step]), th.append(t[hk]), ratios.append(t[hk] / t[step])
    return {"model": model_name, "batch": batch, "rounds": rounds, "step_ms": 1e3 * statistics.median(ts),
            "threshold_ms": 1e3 * statistics.median(th), "ratio": statistics.median(ratios),
            "groups": len(method.groups)}


def _print(rows_: list[dict[str, Any]]) -> None:
    print(f"{'block':<9} {'row':<13} {'top1 %':>7} {'params':>9} {'MACs':>12} {'of dense':>8} "
          f"{'lat b1 ms':>9} {'lat b256 ms':>11} {'ORT b1 ms':>9} {'ORT b256 ms':>11} {'sec':>6}  stages")
    for r in rows_:
        ort = [f"{r[k]:{w}.{d}f}" if r.get(k) is not None else f"{'-':>{w}}"
               for k, w, d in (("ort_ms_b1", 9, 3), ("ort_ms_b256", 11, 2))]
        print(f"{r['block']:<9} {r['row']:<13} {r['top1']:7.2f} {r['params']:9,} {r['macs']:12,} "
              f"{r['macs_fraction']:8.3f} {r['latency_ms_b1']:9.3f} {r['latency_ms_b256']:11.2f} {ort[0]} {ort[1]} "
              f"{r['seconds']:6.0f}  {'+'.join(r['stages'])}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="MNIST 6000/2000 images, 2 epochs; ResNet tiny")
    ap.add_argument("--only", default="lenet,cost", help="parts: lenet, resnet56, cost (comma-separated)")
    ap.add_argument("--rows", default="", help="row labels to run (default: all)")
    ap.add_argument("--epochs", type=int, default=None, help="LeNet epochs per row (default: recipe's 10)")
    ap.add_argument("--budget", type=float, default=None, help="LeNet MACs fraction (default: recipe's 0.1)")
    ap.add_argument("--train-subset", type=int, default=0)
    ap.add_argument("--test-subset", type=int, default=0)
    ap.add_argument("--resnet-epochs", type=int, default=3)
    ap.add_argument("--resnet-subset", type=int, default=2000)
    ap.add_argument("--resnet-budget", type=float, default=0.37)
    ap.add_argument("--cost-rounds", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    parts = {p.strip() for p in args.only.split(",") if p.strip()}
    only_rows = {p.strip() for p in args.rows.split(",") if p.strip()}
    command = "python benchmarks/sght.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lenet_cfg = load_config(LENET)
    epochs = args.epochs or (2 if args.quick else lenet_cfg["train"]["epochs"])
    budget = args.budget or lenet_cfg["method"]["macs_budget"]
    print(f"# {command}\n# seed {args.seed}, {args.threads} thread(s), CPU, torch {torch.__version__}")
    results: list[dict[str, Any]] = []
    doc: dict[str, Any] = {"command": command, "seed": args.seed, "threads": args.threads,
                           "torch": torch.__version__}

    if "lenet" in parts:
        train, test = pdata.load("mnist", "train"), pdata.load("mnist", "test")
        ntr = args.train_subset or (6000 if args.quick else 0)
        nte = args.test_subset or (2000 if args.quick else 0)
        train, test = _subset(train, ntr, args.seed), _subset(test, nte, args.seed)
        print(f"# LeNet-5: recipe {LENET.relative_to(ROOT)}, {epochs} epochs per row, MACs budget {budget}, "
              f"train {len(train)} / test {len(test)} MNIST images")
        results += run_block("lenet5", LENET, (train, test), budget, epochs, args.seed, [], only_rows, 30)
        doc["lenet5"] = {"recipe": str(LENET.relative_to(ROOT)), "epochs": epochs, "budget": budget,
                         "train_images": len(train), "test_images": len(test)}

    if "resnet56" in parts:
        ntr = 512 if args.quick else args.resnet_subset
        ep = 1 if args.quick else args.resnet_epochs
        train = _subset(pdata.load("cifar10", "train"), ntr, args.seed)
        test = _subset(pdata.load("cifar10", "test"), max(ntr // 2, 1000), args.seed)
        ms = [max(1, round(ep * f)) for f in (0.3, 0.6, 0.8)]
        over = [f"optim.milestones=[{ms[0]}, {ms[1]}, {ms[2]}]", "train.batch_size=64"]
        print(f"# ResNet-56 (reduced CPU run): recipe {RESNET.relative_to(ROOT)}, {ep} epochs per row, milestones "
              f"{ms}, MACs budget {args.resnet_budget}, train {len(train)} / test {len(test)} CIFAR-10 images")
        results += run_block("resnet56", RESNET, (train, test), args.resnet_budget, ep, args.seed, over, only_rows,
                             10)
        doc["resnet56"] = {"recipe": str(RESNET.relative_to(ROOT)), "epochs": ep, "budget": args.resnet_budget,
                           "train_images": len(train), "test_images": len(test), "overrides": over}

    costs = []
    if "cost" in parts:
        rounds = 4 if args.quick else args.cost_rounds
        costs.append(threshold_cost("lenet5", (1, 28, 28), 128, rounds, budget, args.seed))
        costs.append(threshold_cost("resnet56", (3, 32, 32), 64, max(2, rounds // 4), 0.37, args.seed))

    print()
    if results:
        _print(results)
    for c in costs:
        print(f"H_k cost, {c['model']} ({c['groups']} groups), batch {c['batch']}: training step "
              f"{c['step_ms']:.2f} ms, H_k {c['threshold_ms']:.3f} ms -> {100 * c['ratio']:.2f}% of a step "
              f"(target <= 5%; median of {c['rounds']} interleaved rounds)")
    for block in sorted({r["block"] for r in results}):
        by = {r["row"]: r for r in results if r["block"] == block}
        if "sght" in by:
            for peer in ("l1-filter", "sfp", "tp-magnitude", "dense"):
                if peer in by:
                    print(f"{block}: sght vs {peer}: {by['sght']['top1'] - by[peer]['top1']:+.2f} points "
                          f"(MACs {by['sght']['macs_fraction']:.3f} vs {by[peer]['macs_fraction']:.3f})")
            print(f"{block}: sght channels revived after being zeroed: {by['sght'].get('revived')}")

    OUT.mkdir(parents=True, exist_ok=True)
    doc.update({"rows": results, "threshold_cost": costs})
    (OUT / "sght.json").write_text(json.dumps(doc, indent=2))
    print(f"\nsaved {OUT / 'sght.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
