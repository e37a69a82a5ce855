"""SSS benchmark: gamma sweep vs Network Slimming and Torch-Pruning's BN-scale pruner at matched MACs.

One run, same seed everywhere (same initial weights and batch order for every row):

1. Optimizer cost: one APG step vs one momentum-SGD (Nesterov) step on the same tensors, the scaling
   factors SSS puts into ResNet-50 and ResNet-20 (torch's SGD with its default CPU implementation and with
   ``foreach=True``), and a whole ResNet-20 training step with APG on the factors vs plain SGD on them.
   Timed in interleaved blocks (ABBA), median; target <= 1.05x.
2. LeNet-5 on MNIST: dense; SSS (channel / neuron factors + APG) for each gamma; Network Slimming at the
   MACs each SSS row reached (sparse training then threshold then fine-tune, in the same epoch budget).
   Torch-Pruning's BN-scale pruner does not apply (LeNet-5 has no BN).
3. ResNet-20 on a CIFAR-10 subset: dense; SSS (block + channel factors) for each gamma; Network Slimming
   and Torch-Pruning's BNScalePruner at each SSS row's MACs.

Every method gets the same number of epochs: SSS trains all of them (it needs no fine-tuning: removing
zero structures leaves the outputs unchanged); the peers train ``epochs - finetune`` epochs with their
penalty, are pruned at the matched MACs (one sparse training shared by all targets), then fine-tuned.

    .venv/bin/python benchmarks/sss.py --quick     # a few minutes on one core
    .venv/bin/python benchmarks/sss.py             # the reduced-CPU figures (about 1 h on a busy 2-core box)

Recipes: ``configs/sss/lenet5_mnist_cpu.yaml`` and ``configs/sss/resnet20_cifar10_subset_cpu.yaml``
(the sweep overrides their ``method.gamma_*``). Results: ``benchmarks/out/sss.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from prunekit import data as pdata
from prunekit import experiment, metrics, models
from prunekit.config import load_config
from prunekit.engine import OptimConfig, Stage, Trainer, TrainerConfig, evaluate, seed_everything
from prunekit.methods.optim import APG
from prunekit.methods.peers.slimming import NetworkSlimming
from prunekit.methods.peers.tp_bnscale import TPBNScale
from prunekit.methods.sss import SparseStructureSelection, factor_parameters, insert_factors

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out"
LENET = ROOT / "configs" / "sss" / "lenet5_mnist_cpu.yaml"
RESNET = ROOT / "configs" / "sss" / "resnet20_cifar10_subset_cpu.yaml"


# ----------------------------------------------------------------------------------------- step cost


def _interleaved(fns: dict[str, Any], rounds: int) -> dict[str, float]:
    """Median seconds per call of each function, timed in alternating order."""
    for f in fns.values():
        f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    keys = list(fns)
    for r in range(rounds):
        for k in keys if r % 2 == 0 else reversed(keys):
            t0 = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def optimizer_cost(model_name: str, rounds: int, steps: int) -> dict[str, Any]:
    """APG vs torch SGD (momentum 0.9, Nesterov) over the factor tensors SSS inserts into ``model_name``."""
    net = models.create(model_name)
    insert_factors(net)
    tensors = [p.detach() for ps in factor_parameters(net).values() for p in ps]
    g = torch.Generator().manual_seed(0)

    def params() -> list[nn.Parameter]:
        ps = [nn.Parameter(t.clone()) for t in tensors]
        for p in ps:
            p.grad = torch.randn(p.shape, generator=g) * 1e-3
        return ps

    apg = APG(params(), lr=0.1, momentum=0.9, gamma=0.01)
    sgd = torch.optim.SGD(params(), lr=0.1, momentum=0.9, nesterov=True)
    sgd_fe = torch.optim.SGD(params(), lr=0.1, momentum=0.9, nesterov=True, foreach=True)

    def run(opt: torch.optim.Optimizer):
        def f() -> None:
            for _ in range(steps):
                opt.step()
        return f

    t = _interleaved({"apg": run(apg), "sgd": run(sgd), "sgd_foreach": run(sgd_fe)}, rounds)
    return {"model": model_name, "tensors": len(tensors), "elements": sum(x.numel() for x in tensors),
            "apg_us": 1e6 * t["apg"] / steps, "sgd_us": 1e6 * t["sgd"] / steps,
            "sgd_foreach_us": 1e6 * t["sgd_foreach"] / steps,
            "ratio_vs_sgd": t["apg"] / t["sgd"], "ratio_vs_sgd_foreach": t["apg"] / t["sgd_foreach"]}


def train_step_cost(rounds: int, steps: int, batch: int) -> dict[str, Any]:
    """Whole ResNet-20 training step (factors inserted): [SGD(W), APG(lambda)] vs SGD over W and lambda."""
    x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 10, (batch,), generator=torch.Generator().manual_seed(2))

    def setup(with_apg: bool):
        seed_everything(0)
        net = models.create("resnet20")
        sss = SparseStructureSelection()
        sss.prepare(net)
        if with_apg:
            opts = sss.configure_optimizers(type("S", (), {"model": net})(), lr=0.01)
        else:
            opts = [torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)]

        def f() -> None:
            for _ in range(steps):
                F.cross_entropy(net(x), y).backward()
                for o in opts:
                    o.step()
                for o in opts:
                    o.zero_grad(set_to_none=True)
        return f

    t = _interleaved({"sss": setup(True), "sgd": setup(False)}, rounds)
    return {"model": "resnet20", "batch": batch, "sss_step_ms": 1e3 * t["sss"] / steps,
            "sgd_step_ms": 1e3 * t["sgd"] / steps, "ratio": t["sss"] / t["sgd"]}


# ----------------------------------------------------------------------------------------- accuracy


def _trainer_cfg(cfg: dict[str, Any], quiet: bool = True) -> TrainerConfig:
    t = cfg["train"]
    return TrainerConfig(batch_size=t["batch_size"], eval_batch_size=t["eval_batch_size"], device="cpu",
                         seed=cfg["seed"], quiet=quiet, eval_every=10**6)


def _figures(model: nn.Module, test: pdata.Dataset, example: torch.Tensor) -> dict[str, Any]:
    model.eval()
    c = metrics.count(model, example)
    ev = evaluate(model, test, device="cpu")
    return {"macs": c.macs, "params": c.params, "top1": ev["top1"]}


def _depth(model: nn.Module) -> str:
    from prunekit.surgery import residual_blocks

    return str(len(residual_blocks(model)))


def load_data(cfg: dict[str, Any], quick: tuple[int, int] | None = None) -> tuple:
    """The recipe's splits, its ``subset`` / ``test_subset`` drawn at random (seeded), not the first n:
    the CIFAR-10 files are sorted by class, so the first 2,500 images would all be airplanes."""
    d = cfg["data"]
    train, test = pdata.load(d["name"], "train"), pdata.load(d["name"], "test")
    n_train, n_test = quick or (d.get("subset") or 0, d.get("test_subset") or 0)
    g = torch.Generator().manual_seed(cfg["seed"])
    if n_train:
        train = train.subset(torch.randperm(len(train), generator=g)[:n_train].sort().values)
    if n_test:
        test = test.subset(torch.randperm(len(test), generator=g)[:n_test].sort().values)
    return train, test


def run_sss(cfg: dict[str, Any], gamma: dict[str, float], data: tuple, label: str) -> dict[str, Any]:
    c = copy.deepcopy(cfg)
    c["method"].update(gamma)
    t0 = time.perf_counter()
    res = experiment.run(c, out=OUT / "sss" / label, data=data, latency=False)
    rep = res.report
    depth = rep.get("depth_per_stage") or {}
    kept = sum(s["kept"] for s in depth.values())
    total = sum(s["blocks"] for s in depth.values())
    return {"row": label, "method": "sss", "options": gamma,
            "macs": res.figures["macs"], "params": res.figures["params"], "top1": res.figures["top1"],
            "top1_before_finetune": res.figures["top1"], "depth": f"{kept}/{total}" if total else "-",
            "depth_per_stage": {k: f"{v['kept']}/{v['blocks']}" for k, v in depth.items()},
            "widths": [w["after"] for w in rep.get("width_per_layer", [])],
            "seconds": round(time.perf_counter() - t0, 1)}


def run_dense(cfg: dict[str, Any], data: tuple, label: str) -> dict[str, Any]:
    c = copy.deepcopy(cfg)
    c["method"] = {"name": "none"}
    t0 = time.perf_counter()
    res = experiment.run(c, out=OUT / "sss" / label, data=data, latency=False)
    nblocks = _depth(res.model)
    return {"row": label, "method": "dense", "macs": res.figures["macs"], "params": res.figures["params"],
            "top1": res.figures["top1"], "top1_before_finetune": None,
            "depth": f"{nblocks}/{nblocks}" if nblocks != "0" else "-", "seconds": round(time.perf_counter() - t0, 1)}


def run_peer(cfg: dict[str, Any], make, targets: list[tuple[str, float]], finetune: int, data: tuple,
             name: str) -> list[dict[str, Any]]:
    """Sparse-train once with the peer's penalty, then prune a copy at each target and fine-tune it."""
    train, test = data
    epochs = cfg["train"]["epochs"]
    seed_everything(cfg["seed"])
    model = experiment.build_model(cfg, train)
    base_macs = metrics.count(model, torch.zeros(1, *train.input_shape)).macs
    method = make(None)
    optim = OptimConfig(**cfg["optim"])
    t0 = time.perf_counter()
    tr = Trainer(model, train, test, optim=optim, config=_trainer_cfg(cfg), callbacks=[method])
    tr.fit([Stage("sparse", epochs - finetune, kind="sparse")])
    sparse_seconds = time.perf_counter() - t0
    example = torch.zeros(1, *train.input_shape)
    rows = []
    for label, macs in targets:
        t1 = time.perf_counter()
        m = copy.deepcopy(tr.raw_model)
        meth = make(min(1.0, macs / base_macs))
        if hasattr(meth, "prepare"):
            meth.prepare(m)
        m = meth.prune(m, example).model
        before_ft = _figures(m, test, example)["top1"]
        if finetune:
            ft = Trainer(m, train, test, optim=optim, config=_trainer_cfg(cfg))
            ft.fit([Stage("finetune", finetune)])
            m = ft.raw_model
        f = _figures(m, test, example)
        rows.append({"row": f"{name} @ {label}", "method": name, "target_macs": macs, **f,
                     "top1_before_finetune": before_ft, "depth": _depth(m) + "/" + _depth(tr.raw_model)
                     if _depth(tr.raw_model) != "0" else "-",
                     "seconds": round(sparse_seconds / len(targets) + time.perf_counter() - t1, 1)})
    return rows


def experiment_block(title: str, recipe: Path, data: tuple, gammas: list[dict[str, float]], finetune: int,
                     peers: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    cfg = load_config(recipe, overrides)
    print(f"\n## {title}: recipe {recipe.relative_to(ROOT)}, {cfg['train']['epochs']} epochs per row, "
          f"train {len(data[0])} / test {len(data[1])} images", flush=True)
    rows = [run_dense(cfg, data, f"{cfg['model']['name']}-dense")]
    _print_row(rows[-1])
    for g in gammas:
        label = "sss " + " ".join(f"{k.split('_')[1]}={v:g}" for k, v in g.items() if k.startswith("gamma"))
        label += "" if g.get("channels", True) else " (blocks only)"
        rows.append(run_sss(cfg, g, data, label.replace(" ", "_").replace("(", "").replace(")", "")))
        rows[-1]["row"] = label
        _print_row(rows[-1])
    targets = [(r["row"], r["macs"]) for r in rows if r["method"] == "sss"]
    for name, make in peers.items():
        for r in run_peer(cfg, make, targets, finetune, data, name):
            rows.append(r)
            _print_row(r)
    return {"title": title, "recipe": str(recipe.relative_to(ROOT)), "epochs": cfg["train"]["epochs"],
            "finetune_epochs_of_peers": finetune, "train_images": len(data[0]), "test_images": len(data[1]),
            "rows": rows}


HEADER = f"{'row':<36} {'MACs':>11} {'params':>9} {'depth':>6} {'top1 %':>7} {'pre-FT %':>8} {'sec':>6}"


def _print_row(r: dict[str, Any]) -> None:
    pre = r.get("top1_before_finetune")
    print(f"{r['row']:<36} {r['macs']:>11,} {r['params']:>9,} {r.get('depth', '-'):>6} {r['top1']:7.2f} "
          f"{'' if pre is None else f'{pre:.2f}':>8} {r.get('seconds', 0):6.0f}", flush=True)


def _parse_row(text: str) -> dict[str, Any]:
    """'c=0.01,b=0.02' -> SSS options; without 'c' the row has block factors only."""
    kv = dict(part.split("=") for part in text.split(",") if part)
    out: dict[str, Any] = {}
    if "c" in kv:
        out["gamma_channel"] = float(kv["c"])
    else:
        out["channels"] = False
    if "b" in kv:
        out["gamma_block"] = float(kv["b"])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small subsets and 2 epochs: a smoke run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", default="cost,lenet,resnet", help="parts to run: cost, lenet, resnet")
    ap.add_argument("--lenet-gammas", default="0.015,0.02,0.03")
    ap.add_argument("--resnet-rows", default="c=0.01,b=0.01;c=0.03,b=0.03;b=0.03;b=0.05",
                    help="SSS rows for ResNet-20, ';'-separated: c=gamma_channel, b=gamma_block (no c: block "
                         "factors only, the paper's ResNet setting)")
    ap.add_argument("--finetune", type=int, default=1, help="peers' fine-tuning epochs (inside the budget)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    parts = {p.strip() for p in args.only.split(",")}
    command = "python benchmarks/sss.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"# {command}\n# seed {args.seed}, {args.threads} thread(s), CPU, torch {torch.__version__}")
    doc: dict[str, Any] = {"command": command, "seed": args.seed, "threads": args.threads,
                           "torch": torch.__version__, "blocks": []}
    seed_over = [f"seed={args.seed}", "train.device=cpu", "train.quiet=true"]

    if "cost" in parts:
        rounds, steps = (5, 20) if args.quick else (15, 50)
        cost = [optimizer_cost(m, rounds, steps) for m in ("resnet50", "resnet20")]
        step = train_step_cost(rounds=4 if args.quick else 16, steps=2 if args.quick else 3, batch=32)
        doc["step_cost"] = {"optimizer": cost, "train_step": step}
        print("\n## step cost (median of interleaved blocks)")
        for c in cost:
            print(f"APG on {c['model']}'s factors ({c['tensors']} tensors, {c['elements']:,} values): "
                  f"{c['apg_us']:.0f} us vs SGD {c['sgd_us']:.0f} us (ratio {c['ratio_vs_sgd']:.2f}), vs SGD "
                  f"foreach {c['sgd_foreach_us']:.0f} us (ratio {c['ratio_vs_sgd_foreach']:.2f}); target <= 1.05")
        print(f"ResNet-20 training step, batch {step['batch']}: SGD(W)+APG(lambda) {step['sss_step_ms']:.1f} ms vs "
              f"SGD(W, lambda) {step['sgd_step_ms']:.1f} ms (ratio {step['ratio']:.3f})", flush=True)

    quick_over = ["train.epochs=2"] if args.quick else []
    if "lenet" in parts:
        cfg = load_config(LENET, seed_over)
        train, test = load_data(cfg, (3000, 1000) if args.quick else None)
        gammas = [{"gamma_channel": float(g)} for g in args.lenet_gammas.split(",")]
        doc["blocks"].append(experiment_block(
            "LeNet-5 / MNIST", LENET, (train, test), gammas, args.finetune,
            {"slimming": lambda t: NetworkSlimming(sparsity=1e-4, target_macs=t,
                                                   finetune_epochs=0)},
            seed_over + quick_over))
    if "resnet" in parts:
        cfg = load_config(RESNET, seed_over)
        train, test = load_data(cfg, (512, 500) if args.quick else None)
        gammas = [_parse_row(r) for r in args.resnet_rows.split(";")]
        doc["blocks"].append(experiment_block(
            "ResNet-20 / CIFAR-10 subset", RESNET, (train, test), gammas, args.finetune,
            {"slimming": lambda t: NetworkSlimming(sparsity=1e-5, target_macs=t),
             "tp-bnscale": lambda t: TPBNScale(reg=1e-5, target_macs=t)},
            seed_over + quick_over))

    for b in doc["blocks"]:
        print(f"\n## {b['title']} ({b['epochs']} epochs per row; peers: {b['epochs'] - b['finetune_epochs_of_peers']}"
              f" sparse + {b['finetune_epochs_of_peers']} fine-tune; pre-FT = right after pruning)")
        print(HEADER)
        for r in b["rows"]:
            _print_row(r)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "sss.json").write_text(json.dumps(doc, indent=2))
    print(f"\nsaved {OUT / 'sss.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
