"""Network Trimming's records (one per network: widths, parameters, MACs, accuracy, APoZ vectors) turned
into a table, APoZ histograms and a per-layer plot."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit.errors import PrunekitError

HIST_BINS = 20


def histogram(a: torch.Tensor) -> list[int]:
    """Counts of APoZ values in ``HIST_BINS`` equal bins over [0, 1]."""
    return torch.histc(a.double(), bins=HIST_BINS, min=0.0, max=1.0).long().tolist()


def snapshot(model: nn.Module, example: torch.Tensor, iteration: int) -> dict[str, Any]:
    """The record of one network: widths of every conv / linear layer, parameters and MACs."""
    from prunekit import metrics

    widths = {n: (m.out_channels if isinstance(m, nn.modules.conv._ConvNd) else m.out_features)
              for n, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd | nn.Linear)}
    counts = metrics.count(model, example)
    return {"iteration": iteration, "widths": widths, "params": counts.params, "macs": counts.macs}


def table_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per network: iteration, widths of the trimmed layers, parameters, MACs, accuracy."""
    layers: list[str] = []
    for r in records[1:]:
        layers += [g for g in r.get("removed_channels", {}) if g not in layers]
    rows = []
    for r in records:
        row: dict[str, Any] = {"iteration": r["iteration"]}
        for g in layers:
            row[g] = r["widths"].get(g)
        row.update({"params": r["params"], "macs": r["macs"], "top1_trimmed": r.get("top1_trimmed"),
                    "top1": r.get("top1")})
        rows.append(row)
    return rows


def plot(records: list[dict[str, Any]], path: str | Path) -> Path:
    """Per-layer APoZ histograms of every iteration's network (matplotlib, Agg backend) saved to ``path``."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from prunekit._atomic import atomic_path

    names: list[str] = []
    for r in records:
        names += [g for g in r.get("apoz", {}) if g not in names]
    chosen = [g for g in names if any(g in r.get("removed_channels", {}) for r in records)] or names
    if not chosen:
        raise PrunekitError("trimming: no APoZ measured yet, nothing to plot")
    cols = min(3, len(chosen))
    rows = math.ceil(len(chosen) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.4 * rows), squeeze=False)
    colors = plt.get_cmap("viridis")
    for ax, g in zip(axes.flat, chosen, strict=False):
        n = max(len(records) - 1, 1)
        for r in records:
            a = r.get("apoz", {}).get(g)
            if a is None:
                continue
            col = colors(r["iteration"] / n)
            ax.hist(a.double().numpy(), bins=HIST_BINS, range=(0, 1), histtype="step", color=col,
                    label=f"net {r['iteration']} ({a.numel()} ch, mean {float(a.mean()):.2f})")
            thr = r.get("thresholds", {}).get(g)
            if thr is not None:
                ax.axvline(thr, color=col, linestyle="--", linewidth=0.8)
        ax.set_title(g, fontsize=9)
        ax.set_xlabel("APoZ")
        ax.set_ylabel("channels")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(chosen):]:
        ax.axis("off")
    fig.suptitle("Network Trimming: APoZ per layer and iteration (dashed: removal threshold)", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path


def report(records: list[dict[str, Any]], plot_path: str | Path | None) -> dict[str, Any]:
    """Iterations (widths, parameters, MACs, accuracy, APoZ summary per layer), a text table and, when
    ``plot_path`` is given and APoZ was measured, the plot."""
    from prunekit.metrics import format_table

    iters = []
    for r in records:
        entry = {k: v for k, v in r.items() if k not in ("apoz", "removed_channels")}
        apoz = r.get("apoz", {})
        entry["apoz_mean"] = {g: round(float(a.mean()), 6) for g, a in apoz.items()}
        entry["apoz_hist"] = {g: histogram(a) for g, a in apoz.items()}
        iters.append(entry)
    rows = table_rows(records)
    out: dict[str, Any] = {"iterations": iters, "table": format_table(rows) if rows else ""}
    if plot_path is not None and any(r.get("apoz") for r in records):
        out["plot"] = str(plot(records, plot_path))
    return out


__all__ = ["HIST_BINS", "histogram", "plot", "report", "snapshot", "table_rows"]
