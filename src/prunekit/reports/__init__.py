"""Comparison reports: result tables (text / Markdown) and accuracy-versus-cost plots."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import reprlib
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from prunekit.atomic import atomic_path
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


# Figures a report reads from files written by other runs (report.json, results.csv): numbers must be finite and
# of a sane size, text must be printable. Anything else is hostile or damaged and never reaches a division, a
# format string or a plot.
NUMERIC = ("params", "nonzero_params", "macs", "top1", "top5", "test_loss", "file_bytes", "latency_ms_b1",
           "latency_ms_batch", "train_seconds")
TEXT = ("method", "label", "run")
_MAX_ABS = 1e18  # far above any real count (MACs of today's largest networks are ~1e13)
_MAX_FILE = 16 * 2**20


def _number_problem(value: Any) -> str | None:
    """Why ``value`` is not a usable figure (None when it is a finite number of a sane size)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"is {reprlib.repr(value)}, not a number"
    if (isinstance(value, float) and not math.isfinite(value)) or abs(value) > _MAX_ABS:
        return f"is {reprlib.repr(value)}, not a finite number of a sane size"
    return None


def _warn(message: str) -> None:
    from prunekit.errors import escape

    print(f"prunekit: warning: {escape(message)}", file=sys.stderr)


def _read_small(p: Path) -> str:
    if p.stat().st_size > _MAX_FILE:
        raise PrunekitError(f"{p}: {p.stat().st_size:,} bytes, larger than any prunekit report; not read")
    try:
        return p.read_text()
    except UnicodeDecodeError:
        raise PrunekitError(f"{p}: not a text file") from None


def read_runs(run_dirs: Iterable[str | os.PathLike]) -> list[dict[str, Any]]:
    """The ``figures`` of each run folder's report.json (written by :func:`prunekit.experiment.run`).

    A figure that is not a finite number (a string, ``inf``, ``NaN``, a list) or a name that is not printable
    text is dropped with one warning line, shown as ``-``; a file that is not a report is one PrunekitError.
    """
    rows = []
    for d in run_dirs:
        p = Path(d) / "report.json"
        if not p.is_file():
            raise PrunekitError(f"{d}: no report.json (is it a finished prunekit run folder?)")
        try:
            doc = json.loads(_read_small(p))
            figs = doc["figures"]
            if not isinstance(figs, dict):
                raise TypeError
        except (json.JSONDecodeError, KeyError, TypeError, RecursionError):
            raise PrunekitError(f"{p}: not a prunekit report") from None
        clean: dict[str, Any] = {}
        for key, value in figs.items():
            if key in NUMERIC and value is not None:
                why = _number_problem(value)
                if why:
                    _warn(f"{p}: figures.{key} {why}; shown as -")
                    continue
            elif key in TEXT and value is not None and not (isinstance(value, str) and value.isprintable()
                                                              and len(value) <= 200):
                _warn(f"{p}: figures.{key} is {reprlib.repr(value)}, not a short printable name; shown as -")
                continue
            clean[key] = value
        clean.setdefault("run", str(d))
        rows.append(clean)
    return rows


def check_results_csv(path: str | os.PathLike, int_columns: Iterable[str], float_columns: Iterable[str],
                      required: Iterable[str] = ("label", "method", "seed", "macs", "top1", "nonzero_params")
                      ) -> None:
    """Refuse a compare folder's ``results.csv`` that holds values no report can use, in one line naming the
    line and column: a required cell that is empty, a number that is text, ``inf``, ``NaN``, out of range or
    (in an integer column) not whole, or a name that is not printable text."""
    p = Path(path)
    required = tuple(required)
    ints, floats, need = set(int_columns), set(float_columns), set(required)
    try:
        reader = csv.DictReader(io.StringIO(_read_small(p)))
        header = reader.fieldnames or []
        for line, rec in enumerate(reader, 2):
            for key, value in rec.items():
                if key is None or not isinstance(value, str):
                    raise PrunekitError(f"{p}: line {line} has {len(header)} columns in its header but more cells")
                where = f"{p}: malformed results file: line {line}, column {reprlib.repr(key)}"
                if value == "":
                    if key in need:
                        raise PrunekitError(f"{where} is empty; a report needs it")
                    continue
                if key in ints or key in floats:
                    try:
                        number: float = float(value)
                    except ValueError:
                        raise PrunekitError(f"{where} is {reprlib.repr(value)}, not a number") from None
                    why = _number_problem(number)
                    if why is None and key in ints and not number.is_integer():
                        why = f"is {reprlib.repr(value)}, not a whole number"
                    if why:
                        raise PrunekitError(f"{where} {why}")
                elif not value.isprintable() or len(value) > 1000:
                    raise PrunekitError(f"{where} is {reprlib.repr(value)}, not printable text")
    except csv.Error as exc:
        raise PrunekitError(f"{p}: malformed results file ({exc})") from None
    missing = [c for c in required if c not in header]
    if missing:
        raise PrunekitError(f"{p}: not a prunekit results file (missing columns {', '.join(missing)})")


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
