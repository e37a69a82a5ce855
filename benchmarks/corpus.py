"""Corpus benchmark: what prunekit's surgery does on networks nobody here wrote, beside Torch-Pruning.

One run, one process, one thread, fixed seeds (``prunekit.testing.corpus``: 10 HF ``transformers`` models
built from configs and 9 hand-written patterns, random weights, no download).

* The matrix: network x capability. A cell ``done/total`` counts groups (channels) or blocks removed; ``-``
  means the network has none. prunekit columns come from ``corpus.CAPABILITIES`` (dead channels: some channels
  of every group whose removal is exact by nature killed and removed, output unchanged; live channels: 50% of
  every prunable group removed, each call verified against the masked network; dead blocks: every residual
  block with its branch zeroed removed, output unchanged). Torch-Pruning 1.6.1 columns: ``TP dead channels``
  removes the *same* dead channels with ``DependencyGraph.get_pruning_group(...).prune()`` and says whether
  the output stayed equal; ``TP 50%`` runs ``tp.pruner.MetaPruner`` with a magnitude importance at 50% and
  says whether the pruned network still runs.
* Surgery time on HF ResNet-50 and ViT-B/16 at 224 px (``ResNetConfig()`` / ``ViTConfig()`` defaults, random
  weights): 50% of the channels of every prunable group (whole heads for attention), one thread, batch 1,
  with the equivalence check and without it (its overhead). Goal: < 1 s each including the check. Wall
  time and process CPU time are both printed: on a shared machine wall time includes waiting for a core.

    .venv/bin/python benchmarks/corpus.py              # matrix + timings (about a minute)
    .venv/bin/python benchmarks/corpus.py --no-times   # matrix only (--no-methods: without the method columns)
    .venv/bin/python benchmarks/corpus.py --no-matrix  # surgery times only

* Method columns (issue 18, ``corpus.METHODS``): each paper method (IHT, SGHT, SSS, Network Trimming) run
  through the declared contract on the network (README's own loop: a few steps on one random batch, tiny
  settings in ``corpus.METHOD_OPTIONS``), then ``finalize``. A cell is the size of what it delivered
  (``0.28x params``; IHT: ``0.51x nonzero`` of a sparse network), whose output equals the trained network's
  just before finalize, or ``refused``, with the one-line message under the matrix. Smoke-test settings, not
  accuracy settings: the ratios show that the method shrank the network, not what it reaches when trained.

Columns are a dict ``COLUMNS: name -> function(net) -> cell string``; add save / reload / ONNX columns there
(or to ``corpus.CAPABILITIES``). Results also go to ``benchmarks/out/corpus.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit.testing import corpus
from prunekit.testing.corpus import Network

# ---------------------------------------------------------------------------------------------------------
# Torch-Pruning on the same networks


def _tp_forward(model: nn.Module, x: Any) -> Any:
    return model(x)


def _same(a: torch.Tensor, b: torch.Tensor) -> str:
    d = float((a - b).abs().max())
    return "exact" if d <= 1e-5 * float(a.abs().max()) else f"changed ({d:.2g})"


def tp_dead_channels(net: Network) -> str:
    """Torch-Pruning removing exactly the channels prunekit's dead-channel column removes."""
    import torch_pruning as tp

    from prunekit.surgery import channel_groups

    model = copy.deepcopy(net.model)
    groups = [g for g in channel_groups(model, net.inputs) if not corpus.renormalised(model, g)]
    if not groups:
        return "-"
    plan = {g.name: corpus.pick(g, 0.25) for g in groups}
    for g in groups:
        corpus.kill(model, g, plan[g.name])
    with torch.no_grad():
        y0 = corpus.logits(model(net.inputs))
    try:
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=net.inputs, forward_fn=_tp_forward)
        for name, idx in plan.items():
            layer = model.get_submodule(name)
            fn = tp.prune_linear_out_channels if isinstance(layer, nn.Linear) else tp.prune_conv_out_channels
            group = dg.get_pruning_group(layer, fn, idxs=idx)
            group.prune()
        with torch.no_grad():
            return _same(y0, corpus.logits(model(net.inputs)))
    except Exception as exc:
        return f"error ({type(exc).__name__})"


def tp_half(net: Network) -> str:
    """Torch-Pruning's MetaPruner, L1 magnitude importance, 50% of channels; does the result run?"""
    import torch_pruning as tp

    model = copy.deepcopy(net.model)
    heads = {m: getattr(p, a) for p in model.modules() for a in ("num_attention_heads", "num_heads")
             if isinstance(getattr(p, a, None), int)
             for m in p.children() if isinstance(m, nn.Linear) and m.out_features % getattr(p, a) == 0}
    ignored = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == corpus.NUM_CLASSES]
    try:
        pruner = tp.pruner.MetaPruner(model, net.inputs, importance=tp.importance.MagnitudeImportance(p=1),
                                      pruning_ratio=0.5, ignored_layers=ignored, num_heads=heads,
                                      forward_fn=_tp_forward)
        before = sum(p.numel() for p in model.parameters())
        pruner.step()
        after = sum(p.numel() for p in model.parameters())
        with torch.no_grad():
            out = corpus.logits(model(net.inputs))
        if out.shape != (net.inputs.shape[0], corpus.NUM_CLASSES):
            return f"wrong shape {tuple(out.shape)}"
        return f"runs ({after / before:.0%} params)"
    except Exception as exc:
        return f"error ({type(exc).__name__})"


def _cap(check: Callable[[Network], corpus.Outcome]) -> Callable[[Network], str]:
    def cell(net: Network) -> str:
        try:
            return check(net).cell()
        except Exception as exc:  # never expected: the corpus test fails on it
            return f"error ({type(exc).__name__})"
    return cell


def _method(check: Callable[[Network], corpus.Outcome]) -> Callable[[Network], str]:
    """A method column: ``0.28x params`` (IHT: ``0.51x nonzero``) delivered and exact, or ``refused``."""
    def cell(net: Network) -> str:
        try:
            out = check(net)
        except Exception as exc:  # never expected: tests/methods/test_corpus.py fails on it
            return f"error ({type(exc).__name__})"
        if out.refused:
            REFUSALS.append(f"{next(iter(out.refused))} on {net.name}: {next(iter(out.refused.values()))}")
            return "refused"
        return out.note if out.done else f"not exact ({out.max_diff:.2g})"
    return cell


METHOD_NAMES = {"iht": "IHT", "sght": "SGHT", "sss": "SSS", "trimming": "Trimming"}
REFUSALS: list[str] = []
"""The one-line refusals of the method columns, printed under the matrix."""

COLUMNS: dict[str, Callable[[Network], str]] = {
    **{f"prunekit {k}": _cap(f) for k, f in corpus.CAPABILITIES.items()},
    "TP dead channels": tp_dead_channels,
    "TP 50%": tp_half,
    **{METHOD_NAMES[m]: _method(f) for m, f in corpus.METHODS.items()},
}
"""Matrix columns: name -> function(corpus network) -> cell. Other benchmarks may add theirs."""


def matrix(names: list[str], columns: dict[str, Callable[[Network], str]]) -> list[dict[str, str]]:
    rows = []
    for name in names:
        net = corpus.build(name)
        row = {"network": name}
        for col, fn in columns.items():
            row[col] = fn(net)
        rows.append(row)
        print(f"  {name}: " + " | ".join(f"{k}: {v}" for k, v in row.items() if k != "network"), flush=True)
    return rows


def markdown(rows: list[dict[str, str]]) -> str:
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(r[c] for c in cols) + " |" for r in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# surgery time at ImageNet size


def _big(kind: str) -> nn.Module:
    import transformers as t

    torch.manual_seed(0)
    if kind == "ResNet-50":
        return t.ResNetForImageClassification(t.ResNetConfig()).eval()
    return t.ViTForImageClassification(t.ViTConfig()).eval()


def half_plan(model: nn.Module, x: torch.Tensor) -> dict[str, list[int]]:
    """50% of every prunable group (whole heads for attention): the smallest L1 norms of the root layer."""
    from prunekit.surgery import channel_groups

    plan = {}
    for g in channel_groups(model, x):
        w = model.get_submodule(g.name).weight.detach()
        norms = w.abs().reshape(w.shape[0], -1).sum(1)
        if g.head_dim:
            per_head = norms.view(g.heads, g.head_dim).sum(1)
            heads = torch.argsort(per_head)[: g.heads // 2]
            plan[g.name] = sorted(int(h) * g.head_dim + j for h in heads for j in range(g.head_dim))
        else:
            plan[g.name] = sorted(int(i) for i in torch.argsort(norms)[: g.size // 2])
    return plan


def surgery_times(runs: int) -> dict[str, dict[str, float]]:
    from prunekit.surgery import remove_channels

    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    out = {}
    for kind in ("ResNet-50", "ViT-B/16"):
        base = _big(kind)
        plan = half_plan(base, x)
        times: dict[str, list[float]] = {"checked": [], "unchecked": [], "checked_cpu": [], "unchecked_cpu": []}
        report = None
        for i in range(runs + 1):  # the first round warms up (allocator, oneDNN kernels for the new shapes)
            for mode in ("checked", "unchecked"):
                model = copy.deepcopy(base)
                t0, c0 = time.perf_counter(), time.process_time()
                rep = remove_channels(model, plan, x, check=mode == "checked")
                if i:
                    times[mode].append(time.perf_counter() - t0)
                    times[mode + "_cpu"].append(time.process_time() - c0)
                if mode == "checked":
                    report = rep
        assert report is not None and report.verified
        med = {k: statistics.median(v) for k, v in times.items()}
        out[kind] = {"checked_s": med["checked"], "unchecked_s": med["unchecked"],
                     "checked_cpu_s": med["checked_cpu"], "unchecked_cpu_s": med["unchecked_cpu"],
                     "check_overhead_s": med["checked"] - med["unchecked"], "groups": len(plan),
                     "params_before": report.params_before, "params_after": report.params_after,
                     "max_diff": report.max_diff}
        print(f"  {kind}: {len(plan)} groups, params {report.params_before:,} -> {report.params_after:,}; surgery "
              f"{med['checked']:.2f} s wall / {med['checked_cpu']:.2f} s CPU with the check, {med['unchecked']:.2f} s "
              f"/ {med['unchecked_cpu']:.2f} s without (check {med['checked_cpu'] - med['unchecked_cpu']:.2f} s CPU); "
              f"max |diff| vs masked {report.max_diff:.1e}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-times", action="store_true", help="matrix only")
    ap.add_argument("--no-matrix", action="store_true", help="surgery times only")
    ap.add_argument("--runs", type=int, default=5, help="timed surgeries per model and mode (median)")
    ap.add_argument("--only", default="", help="comma-separated corpus names (default: all)")
    ap.add_argument("--no-methods", action="store_true", help="surgery and Torch-Pruning columns only")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")  # Torch-Pruning's notes on unwrapped parameters
    import torch_pruning as tp
    import transformers

    print(f"prunekit corpus benchmark: torch {torch.__version__}, transformers {transformers.__version__}, "
          f"torch-pruning {tp.__version__}, 1 thread")
    names = [n for n in args.only.split(",") if n] or corpus.NAMES
    result: dict[str, Any] = {}
    if not args.no_matrix:
        print("matrix:")
        methods = set(METHOD_NAMES.values())
        columns = {k: v for k, v in COLUMNS.items() if not (args.no_methods and k in methods)}
        rows = matrix(names, columns)
        print()
        print(markdown(rows))
        for line in REFUSALS:
            print(f"- {line}")
        result["matrix"] = rows
    if not args.no_times:
        print("\nsurgery time, 50% of every prunable group, 224 px, batch 1, 1 thread (median of "
              f"{args.runs} after a warm-up):")
        result["times"] = surgery_times(args.runs)
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    (out / "corpus.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
