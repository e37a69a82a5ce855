"""IHT benchmark: LeNet-5 on full MNIST, side by side in one run.

Rows (same seed, so the same initial weights and batch order; same epoch budget for every row):
dense training; IHT SDNN-2x and SDNN-4x (Jin et al. 2016); one-shot magnitude pruning + sparse fine-tune at
2x and 4x (the baseline the paper argues against); Dense-Sparse-Dense at 50% (ends dense). For each: test
accuracy, parameters and non-zeros, and the file size stored dense (``prunekit.save``) and sparse
(``surgery.save_sparse``). Then the cost of one training step with IHT's masks active against a plain
dense step (target <= 1.05x), timed interleaved in the same process.

    .venv/bin/python benchmarks/iht.py                # full MNIST, 10 epochs per row (about 1 h on 1 core)
    .venv/bin/python benchmarks/iht.py --quick        # 6k / 2k images, 4 epochs per row: a few minutes
    .venv/bin/python benchmarks/iht.py --epochs 6 --cycles 1 --threads 2

The recipe is ``configs/iht/lenet5_mnist_cpu.yaml``; rows differ only in ``method`` (and the dense row has
none). Results go to ``benchmarks/out/iht.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from prunekit import data as pdata
from prunekit import experiment, io, metrics, models, surgery
from prunekit.config import load_config
from prunekit.engine import LoopState, seed_everything
from prunekit.methods.iht import IHT

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "iht" / "lenet5_mnist_cpu.yaml"
OUT = ROOT / "benchmarks" / "out"


def rows(cycles: int) -> list[tuple[str, dict]]:
    """(label, method section) of every row."""
    return [
        ("dense", {"name": "none"}),
        ("iht SDNN-2x", {"name": "iht", "target": "2x", "cycles": cycles}),
        ("iht SDNN-4x", {"name": "iht", "target": "4x", "cycles": cycles}),
        ("magnitude 2x", {"name": "magnitude", "target": "2x"}),
        ("magnitude 4x", {"name": "magnitude", "target": "4x"}),
        ("dsd 50%", {"name": "dsd", "keep": 0.5}),
    ]


def file_sizes(model: torch.nn.Module) -> tuple[int, int]:
    """Bytes of the model saved dense and saved sparse."""
    with tempfile.TemporaryDirectory() as d:
        dense = io.save(model, Path(d) / "dense.safetensors").stat().st_size
        sparse = surgery.save_sparse(model, Path(d) / "sparse.safetensors").stat().st_size
    return dense, sparse


def step_cost(train: pdata.Dataset, batch_size: int, steps: int, rounds: int, seed: int) -> dict:
    """Median time of a training step with IHT active (phase I) over a plain dense step, interleaved."""
    seed_everything(seed)
    batches = [b for _, b in zip(range(steps), pdata.iterate(train, batch_size, shuffle=True, seed=seed,
                                                             epoch=0, drop_last=True), strict=False)]

    def setup(with_iht: bool) -> tuple:
        seed_everything(seed)
        model = models.create("lenet5")
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
        method = None
        state = LoopState(model, [opt])
        if with_iht:
            method = IHT(target="2x")
            method.threshold(model, [opt])  # phase I: masks active on every step
        return model, opt, method, state

    def block(model, opt, method, state) -> float:
        t0 = time.perf_counter()
        for x, y in batches:
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            if method is not None:
                method.on_before_optimizer_step(state)
            opt.step()
            if method is not None:
                method.on_after_optimizer_step(state)
            opt.zero_grad(set_to_none=True)
        return (time.perf_counter() - t0) / len(batches)

    plain, iht = setup(False), setup(True)
    block(*plain), block(*iht)  # warm-up
    tp, ti, ratios = [], [], []
    for r in range(rounds):  # adjacent pairs, alternating order, so drifting machine load hits both alike
        if r % 2 == 0:
            a, b = block(*plain), block(*iht)
        else:
            b, a = block(*iht), block(*plain)
        tp.append(a), ti.append(b), ratios.append(b / a)
    # the hooks alone (gradient masking before the step, weight re-masking after it), many repetitions
    model, _opt, method, state = iht
    F.cross_entropy(model(batches[0][0]), batches[0][1]).backward()
    reps = 200
    t0 = time.perf_counter()
    for _ in range(reps):
        method.on_before_optimizer_step(state)
        method.on_after_optimizer_step(state)
    hooks = (time.perf_counter() - t0) / reps
    mp, mi = statistics.median(tp), statistics.median(ti)
    return {"plain_step_ms": 1e3 * mp, "iht_step_ms": 1e3 * mi, "ratio": statistics.median(ratios),
            "hooks_ms": 1e3 * hooks, "hooks_ratio": (mp + hooks) / mp, "batch_size": batch_size,
            "steps_per_block": len(batches), "rounds": rounds}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=None, help="epochs per row (default: the recipe's 10)")
    ap.add_argument("--cycles", type=int, default=1, help="IHT cycles C (default 1)")
    ap.add_argument("--quick", action="store_true", help="6000 train / 2000 test images, 4 epochs")
    ap.add_argument("--train-subset", type=int, default=0)
    ap.add_argument("--test-subset", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--only", default="", help="comma-separated row labels to run (default: all)")
    ap.add_argument("--step-rounds", type=int, default=40)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="recipe override for every row, e.g. --set optim.lr=0.02")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    epochs = args.epochs or (4 if args.quick else None)
    train_n = args.train_subset or (6000 if args.quick else 0)
    test_n = args.test_subset or (2000 if args.quick else 0)

    base = load_config(RECIPE)
    epochs = epochs or base["train"]["epochs"]
    train, test = pdata.load("mnist", "train"), pdata.load("mnist", "test")
    if train_n:
        train = train.subset(train_n)
    if test_n:
        test = test.subset(test_n)
    command = "python benchmarks/iht.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"# {command}\n# recipe {RECIPE.relative_to(ROOT)}, seed {args.seed}, {epochs} epochs per row, "
          f"train {len(train)} / test {len(test)} images, {args.threads} thread(s), device {args.device}")

    results = []
    wanted = {s.strip() for s in args.only.split(",") if s.strip()}
    for label, method in rows(args.cycles):
        if wanted and label not in wanted:
            continue
        over = [f"train.epochs={epochs}", f"seed={args.seed}", f"train.device={args.device}", "train.quiet=true",
                *args.set]
        cfg = load_config(RECIPE, over)
        cfg["method"] = dict(method)
        if method["name"] != "none":
            load_config(None, [f"method.{k}={v}" for k, v in method.items()])  # validate the row's options
        t0 = time.perf_counter()
        res = experiment.run(cfg, out=OUT / "iht" / label.replace(" ", "_"), data=(train, test), latency=False)
        seconds = time.perf_counter() - t0
        model = res.model.to("cpu")
        counts = metrics.count(model, torch.zeros(1, *train.input_shape))
        dense_b, sparse_b = file_sizes(model)
        stages = [(s["stage"], s["epoch"]) for s in res.history]
        row = {"row": label, "method": method, "top1": res.figures["top1"], "params": counts.params,
               "nonzero": counts.nonzero_params, "compression": counts.params / max(counts.nonzero_params, 1),
               "dense_file_bytes": dense_b, "sparse_file_bytes": sparse_b, "seconds": round(seconds, 1),
               "ends_sparse": res.sparse, "schedule": _schedule(stages),
               "val_top1_by_epoch": [h.get("val_top1") for h in res.history]}
        results.append(row)
        print(f"  done {label}: top1 {row['top1']:.2f}%  non-zeros {row['nonzero']:,}  ({seconds:.0f} s)",
              flush=True)

    cost = step_cost(train, base["train"]["batch_size"], steps=5, rounds=args.step_rounds, seed=args.seed)

    print()
    print(f"{'row':<14} {'top1 %':>7} {'params':>9} {'non-zero':>9} {'x':>5} {'dense KB':>9} {'sparse KB':>9} "
          f"{'size x':>6} {'ends':>6} {'sec':>6}  schedule")
    for r in results:
        print(f"{r['row']:<14} {r['top1']:7.2f} {r['params']:9,} {r['nonzero']:9,} {r['compression']:5.2f} "
              f"{r['dense_file_bytes'] / 1024:9.1f} {r['sparse_file_bytes'] / 1024:9.1f} "
              f"{r['dense_file_bytes'] / r['sparse_file_bytes']:6.2f} {'sparse' if r['ends_sparse'] else 'dense':>6} "
              f"{r['seconds']:6.0f}  {r['schedule']}")
    print(f"\nstep cost (LeNet-5, batch {cost['batch_size']}, {cost['rounds']} adjacent pairs of "
          f"{cost['steps_per_block']}-step blocks): plain {cost['plain_step_ms']:.2f} ms, IHT active "
          f"{cost['iht_step_ms']:.2f} ms -> median pair ratio {cost['ratio']:.3f} (target <= 1.05); the mask "
          f"hooks alone take {cost['hooks_ms']:.3f} ms per step -> {cost['hooks_ratio']:.4f}x a plain step")
    by = {r["row"]: r for r in results}
    verdicts = []
    if "dense" in by:
        for label in ("iht SDNN-2x", "iht SDNN-4x", "magnitude 2x", "magnitude 4x", "dsd 50%"):
            if label in by:
                d = by[label]["top1"] - by["dense"]["top1"]
                verdicts.append(f"{label}: {d:+.2f} points vs dense")
    if "iht SDNN-2x" in by and "magnitude 2x" in by:
        verdicts.append(f"SDNN-2x vs magnitude 2x: {by['iht SDNN-2x']['top1'] - by['magnitude 2x']['top1']:+.2f}")
    if "iht SDNN-4x" in by and "magnitude 4x" in by:
        verdicts.append(f"SDNN-4x vs magnitude 4x: {by['iht SDNN-4x']['top1'] - by['magnitude 4x']['top1']:+.2f}")
    for v in verdicts:
        print(v)
    if "dense" in by and "iht SDNN-2x" in by:
        d = by["iht SDNN-2x"]["top1"] - by["dense"]["top1"]
        p = by["dense"]["top1"] / 100
        se = 100 * math.sqrt(max(p * (1 - p), 1e-12) / len(test))  # binomial standard error of one test score
        if d > 0:
            verdict = f"seen: SDNN-2x beats dense by {d:+.2f} points"
        elif d > -se:
            verdict = f"matches within one standard error of the test score ({d:+.2f} vs +-{se:.2f}), does not beat"
        else:
            verdict = f"not seen here ({d:+.2f} points, standard error +-{se:.2f}; one seed)"
        verdicts.append(f"paper's claim (SDNN-2x matches or beats dense): {verdict}")
        print(verdicts[-1])

    OUT.mkdir(parents=True, exist_ok=True)
    doc = {"command": command, "recipe": str(RECIPE.relative_to(ROOT)), "seed": args.seed, "epochs": epochs,
           "train_images": len(train), "test_images": len(test), "threads": args.threads,
           "device": args.device, "torch": torch.__version__, "rows": results, "step_cost": cost,
           "verdicts": verdicts}
    (OUT / "iht.json").write_text(json.dumps(doc, indent=2))
    print(f"\nsaved {OUT / 'iht.json'}")
    return 0


def _schedule(stages: list[tuple[str, int]]) -> str:
    """'warmup4 sparse1:2 ...' from the per-epoch history."""
    out: list[list] = []
    for name, _ in stages:
        if out and out[-1][0] == name:
            out[-1][1] += 1
        else:
            out.append([name, 1])
    return " ".join(f"{n}:{k}" for n, k in out)


if __name__ == "__main__":
    sys.exit(main())
