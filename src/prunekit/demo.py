"""``prunekit demo``: LeNet-5 on scikit-learn's digits (embedded, no download), trained densely and then
pruned with every method, one result table. CPU-sized: well under three minutes on two cores."""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import torch

from prunekit import config, experiment, reports
from prunekit.methods import get as get_method

METHODS = ["iht", "trimming", "sss", "sght"]


def base_config(epochs: int, quiet: bool) -> dict[str, Any]:
    """The dense LeNet-5 / digits experiment every demo run starts from."""
    return config.load_config(None, [
        "model.name=lenet5", "data.name=digits", f"train.epochs={epochs}", "train.batch_size=32",
        "optim.lr=0.05", "optim.weight_decay=5e-4", "optim.schedule=cosine", "train.device=cpu",
        f"train.quiet={str(quiet).lower()}", "train.eval_every=1000",
    ])


def main(epochs: int | None = None, out: str = "runs/demo", methods: list[str] | None = None,
         quiet: bool = False) -> list[dict[str, Any]]:
    """Run the demo and print the table; returns the rows."""
    chosen = methods or METHODS
    for name in chosen:  # every name checked before the dense run, so a typo costs nothing
        get_method(name)
    epochs = epochs or 15
    # LeNet-5 on 8x8 images is tiny: a second intra-op thread costs more in synchronisation than it saves.
    torch.set_num_threads(1)
    out_dir = Path(out)
    cfg = base_config(epochs, quiet)
    data = experiment.load_data(cfg)
    t0 = time.perf_counter()
    dense = experiment.run(cfg, out=out_dir / "dense", data=data)
    rows = [{**dense.figures, "method": "dense"}]
    print(f"dense LeNet-5 on digits: top-1 {dense.figures['top1']:.2f}% in {time.perf_counter() - t0:.1f}s")
    for name in chosen:
        cls = get_method(name)
        mcfg = copy.deepcopy(cfg)
        mcfg["method"] = {"name": name}  # each method with its paper defaults
        config.validate(mcfg)
        start = None if cls.from_scratch else copy.deepcopy(dense.model)
        t1 = time.perf_counter()
        res = experiment.run(mcfg, out=out_dir / name, data=data, model=start)
        rows.append({**res.figures, "method": name})
        print(f"{name}: done in {time.perf_counter() - t1:.1f}s")
    print()
    print(reports.table(rows, [*reports.COLUMNS, "train_seconds"], ratios_to=0))
    print(f"\nRuns, checkpoints and models are in {out_dir}/; compare them with: prunekit report {out_dir}/*")
    return rows
