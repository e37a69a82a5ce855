"""Network Trimming benchmark: LeNet (conv 20-50, fc 500) on full MNIST, measured in one run.

1. APoZ collection speed: one pass over the 60,000 training images with the APoZ hooks on every ReLU, against
   plain inference over the same pre-built batches (interleaved repeats, median of each); target >= 0.9x.
2. Trimming iterations (the paper's LeNet experiment, recipe ``configs/trimming/lenet5_mnist.yaml``): train,
   then N x (measure APoZ, trim conv2 / fc1 by mean + 1 std, retrain), one row per network with widths,
   parameters, MACs and test accuracy, beside the paper's table (not retrieved: its cells are printed as
   "n/r", never invented).

Command (the figures in the report): ``.venv/bin/python benchmarks/trimming.py`` (defaults: the recipe's
schedule shortened to 4 initial epochs and 2 retrain epochs per iteration for a 2-core CPU; ``--full`` runs
the recipe's 10 + 4 x 3 epochs). Output: a table on stdout and ``benchmarks/out/trimming.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "trimming" / "lenet5_mnist.yaml"


def apoz_speed(model: torch.nn.Module, batches: list[torch.Tensor], repeats: int, threads: int,
               count_threads: int = 0) -> dict:
    """Plain inference against APoZ collection over the same batches, with ``threads`` torch threads (and
    ``count_threads`` for the APoZ counting, 0: the same).

    (a) Per batch, interleaved: a plain forward, then the same batch through a copy of the model carrying the
    APoZ hooks, summed over ``repeats`` passes, so that load drifts on a shared machine hit both alike; wall
    and process CPU time. (b) Whole passes: ``collect_apoz`` against a plain loop, alternating, medians.
    """
    import copy

    from prunekit.methods.apoz import APoZCollector, collect_apoz

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    model = model.eval()
    hooked = copy.deepcopy(model)
    wall = {"plain": 0.0, "apoz": 0.0}
    cpu = {"plain": 0.0, "apoz": 0.0}
    with APoZCollector(hooked, threads=count_threads) as col, torch.inference_mode():
        for x in batches[:2]:  # warm-up
            model(x)
            hooked(x)
        col.reset()
        for _ in range(repeats):
            for x in batches:
                for name, mod in (("plain", model), ("apoz", hooked)):
                    t0, c0 = time.perf_counter(), time.process_time()
                    mod(x)
                    cpu[name] += time.process_time() - c0
                    wall[name] += time.perf_counter() - t0
    whole: dict[str, list[float]] = {"plain": [], "apoz": []}

    def plain() -> None:
        with torch.inference_mode():
            for x in batches:
                model(x)

    for _ in range(repeats):
        for name, fn in (("plain", plain),
                         ("apoz", lambda: collect_apoz(model, batches, progress=False, threads=count_threads))):
            t0 = time.perf_counter()
            fn()
            whole[name].append(time.perf_counter() - t0)
    torch.set_num_threads(before)
    return {"threads": threads, "count_threads": count_threads or threads, "repeats": repeats,
            "interleaved_wall_s": wall, "interleaved_cpu_s": cpu,
            "interleaved_wall_ratio": wall["plain"] / wall["apoz"], "interleaved_cpu_ratio": cpu["plain"] / cpu["apoz"],
            "whole_plain_s": whole["plain"], "whole_apoz_s": whole["apoz"],
            "whole_wall_ratio": statistics.median(whole["plain"]) / statistics.median(whole["apoz"])}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="the recipe's schedule (10 + 4 x 3 epochs)")
    ap.add_argument("--initial-epochs", type=int, default=4)
    ap.add_argument("--retrain-epochs", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=None, help="default: the recipe's (4)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("--speed-repeats", type=int, default=1)
    ap.add_argument("--speed-threads", default="1,2,2/1",
                    help="torch threads to time at, as T or T/C (C: threads of the APoZ counting)")
    ap.add_argument("--skip-training", action="store_true", help="only the APoZ speed comparison")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "trimming.json"))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from prunekit import data, models
    from prunekit.config import load_config
    from prunekit.experiment import run

    overrides = [f"seed={args.seed}", "train.quiet=true"]
    if not args.full:
        overrides += [f"method.initial_epochs={args.initial_epochs}",
                      f"method.retrain_epochs={args.retrain_epochs}"]
    if args.iterations is not None:
        overrides.append(f"method.iterations={args.iterations}")
    cfg = load_config(RECIPE, overrides)
    m = cfg["method"]
    epochs = m["initial_epochs"] + m["iterations"] * m["retrain_epochs"]
    cfg["train"]["epochs"] = epochs
    cfg["optim"]["milestones"] = [max(1, round(m["initial_epochs"] * 0.7))]
    cmd = "benchmarks/trimming.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"command: .venv/bin/python {cmd.strip()}")
    print(f"recipe: {RECIPE.relative_to(ROOT)} with {overrides[2:] or 'no overrides'}; seed {args.seed}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")

    train = data.load("mnist", "train")
    test = data.load("mnist", "test")
    torch.manual_seed(args.seed)
    net = models.create("lenet5")
    bs = cfg["train"]["eval_batch_size"]
    batches = [x for x, _ in data.iterate(train, bs, shuffle=False, augment=None)]
    configs = [tuple(int(v) for v in c.split("/")) for c in args.speed_threads.split(",") if c]
    speed = [apoz_speed(net, batches, args.speed_repeats, c[0], c[1] if len(c) > 1 else 0) for c in configs]
    del batches
    print(f"\nAPoZ collection vs plain inference over the same {len(train):,} MNIST training images (batch {bs}, "
          f"{args.speed_repeats} pass(es)); speed ratio = plain time / APoZ time, target >= 0.9x:")
    print(f"  {'threads (model/count)':>21}  {'plain wall s':>12}  {'APoZ wall s':>11}  {'ratio':>6}  "
          f"{'plain CPU s':>11}  {'APoZ CPU s':>10}  {'CPU ratio':>9}  {'whole-pass ratio':>16}")
    for sp in speed:
        w, c = sp["interleaved_wall_s"], sp["interleaved_cpu_s"]
        label = f"{sp['threads']}/{sp['count_threads']}"
        print(f"  {label:>21}  {w['plain']:>12.2f}  {w['apoz']:>11.2f}  {sp['interleaved_wall_ratio']:>5.3f}x"
              f"  {c['plain']:>11.2f}  {c['apoz']:>10.2f}  {sp['interleaved_cpu_ratio']:>8.3f}x"
              f"  {sp['whole_wall_ratio']:>15.3f}x")
    out: dict = {"command": cmd, "recipe": str(RECIPE.relative_to(ROOT)), "overrides": overrides,
                 "seed": args.seed, "threads": torch.get_num_threads(), "apoz_speed": speed}
    if not args.skip_training:
        run_dir = ROOT / "benchmarks" / "out" / "trimming-lenet5-mnist"
        t0 = time.perf_counter()
        res = run(cfg, out=run_dir, data=(train, test), latency=False)
        wall = time.perf_counter() - t0
        rows = res.report["iterations"]
        print(f"\nTrimming iterations (LeNet-5 on MNIST; {m['initial_epochs']} epoch(s) of training, then "
              f"{m['iterations']} x (trim conv2/fc1 by APoZ > mean + {m['k']} std, retrain "
              f"{m['retrain_epochs']} epoch(s)); {wall / 60:.1f} min):")
        head = (f"{'net':>3}  {'conv1':>5}  {'conv2':>5}  {'fc1':>5}  {'params':>9}  {'MACs':>10}  "
                f"{'top1 trimmed':>12}  {'top1':>6}  {'mean APoZ conv2/fc1':>19}  | paper: widths  params  top1")
        print(head)
        print("-" * len(head))
        for r in rows:
            w = r["widths"]
            ap_ = r.get("apoz_mean", {})
            apoz_s = (f"{ap_['conv2']:.3f}/{ap_['fc1']:.3f}" if "conv2" in ap_ and "fc1" in ap_ else "-")
            tt = f"{r['top1_trimmed']:.2f}" if r.get("top1_trimmed") is not None else "-"
            t1 = f"{r['top1']:.2f}" if r.get("top1") is not None else "-"
            print(f"{r['iteration']:>3}  {w['conv1']:>5}  {w['conv2']:>5}  {w['fc1']:>5}  {r['params']:>9,}  "
                  f"{r['macs']:>10,}  {tt:>12}  {t1:>6}  {apoz_s:>19}  |        n/r     n/r   n/r")
        first, last = rows[0], rows[-1]
        print(f"\nparams {first['params']:,} -> {last['params']:,} ({first['params'] / last['params']:.2f}x fewer), "
              f"MACs {first['macs']:,} -> {last['macs']:,} ({first['macs'] / last['macs']:.2f}x fewer); final test "
              f"top1 {res.figures['top1']:.2f}%")
        print("paper (Hu et al. 2016, LeNet table per iteration): not retrieved, so no cell is filled in (n/r).")
        print(f"per-layer APoZ plot: {res.report.get('plot')}")
        out.update({"iterations": rows, "figures": res.figures, "wall_s": wall, "paper": "not retrieved"})
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2, default=str))
    print(f"\nJSON: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
