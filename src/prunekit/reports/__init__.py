"""Comparison reports: result tables (text / Markdown) and accuracy-versus-cost plots."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from prunekit._atomic import atomic_path
from prunekit.errors import PrunekitError

COLUMNS = ["method", "params", "nonzero_params", "macs", "top1", "file_bytes", "latency_ms_b1"]
_LABELS = {"params": "params", "nonzero_params": "non-zero", "macs": "MACs", "top1": "top-1 %",
           "file_bytes": "file", "latency_ms_b1": "latency b1 ms", "train_seconds": "train s"}


def human(value: Any, column: str = "") -> str:
    """Compact human-readable figures: 431.1k, 2.29M, 98.61, 1.7 MB."""
    if value is None:
        return "-"
    if isinstance(value, float) and column in ("top1", "top5"):
        return f"{value:.2f}"
    if column == "file_bytes" and isinstance(value, int | float):
        for unit, div in (("MB", 1e6), ("kB", 1e3)):
            if value >= div:
                return f"{value / div:.1f} {unit}"
        return f"{int(value)} B"
    if isinstance(value, int) and not isinstance(value, bool):
        for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
            if abs(value) >= div:
                return f"{value / div:.2f}{unit}"
        return str(value)
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str] = COLUMNS, *, markdown: bool = False,
          ratios_to: int | None = None) -> str:
    """Format result rows; with ``ratios_to`` (a row index) add the MACs / params reduction factors."""
    cols = list(columns)
    cells = [[human(r.get(c), c) for c in cols] for r in rows]
    heads = [_LABELS.get(c, c) for c in cols]
    if ratios_to is not None and rows:
        ref = rows[ratios_to]
        for key, label in (("macs", "MACs x"), ("nonzero_params", "size x")):
            if ref.get(key):
                heads.append(label)
                for r, row in zip(rows, cells, strict=True):
                    row.append(f"{ref[key] / r[key]:.2f}" if r.get(key) else "-")
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(heads)]
    if markdown:
        lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True)) + " |",
                 "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
        lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in cells]
    else:
        lines = ["  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(heads, widths, strict=True)))]
        lines.append("  ".join("-" * w for w in widths))
        lines += ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
                  for row in cells]
    return "\n".join(lines)


def read_runs(run_dirs: Iterable[str | os.PathLike]) -> list[dict[str, Any]]:
    """The ``figures`` of each run folder's report.json (written by :func:`prunekit.experiment.run`)."""
    rows = []
    for d in run_dirs:
        p = Path(d) / "report.json"
        if not p.is_file():
            raise PrunekitError(f"{d}: no report.json (is it a finished prunekit run folder?)")
        try:
            doc = json.loads(p.read_text())
            figs = dict(doc["figures"])
        except (json.JSONDecodeError, KeyError, TypeError):
            raise PrunekitError(f"{p}: not a prunekit report") from None
        figs.setdefault("run", str(d))
        rows.append(figs)
    return rows


def plot(rows: Sequence[dict[str, Any]], path: str | os.PathLike, *, x: str = "macs", y: str = "top1",
         title: str = "accuracy vs cost") -> Path:
    """Scatter of ``y`` against ``x`` (log scale), one labelled point per row; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for r in rows:
        if r.get(x) and r.get(y) is not None:
            ax.scatter(r[x], r[y])
            ax.annotate(str(r.get("label") or r.get("method")), (r[x], r[y]), fontsize=8,
                        xytext=(4, 4), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel(_LABELS.get(x, x))
    ax.set_ylabel(_LABELS.get(y, y))
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path
