"""Result files of a comparison (``results.csv``, ``results.jsonl``), their summary over seeds, and
the report (``summary.md`` and plots, drawn by :mod:`prunekit.reports.compare`)."""

from __future__ import annotations

import csv
import io as _io
import json
import os
import statistics
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from prunekit.atomic import write_text
from prunekit.errors import PrunekitError
from prunekit.reports.compare import latency_vs_macs, markdown, plots

CSV_COLUMNS = ["run", "label", "method", "seed", "start", "target_kind", "target", "matched", "train_epochs",
               "params", "nonzero_params", "macs", "params_frac", "nonzero_frac", "macs_frac", "top1", "top5",
               "test_loss", "latency_ms_b1", "latency_batch", "latency_ms_batch", "file_bytes", "sparse_file",
               "train_seconds", "latency_runtime", "latency_frac_b1", "latency_frac_batch"]


INT_COLUMNS = {"seed", "train_epochs", "params", "nonzero_params", "macs", "latency_batch", "file_bytes"}


FLOAT_COLUMNS = {"target", "params_frac", "nonzero_frac", "macs_frac", "top1", "top5", "test_loss", "latency_ms_b1",
          "latency_ms_batch", "train_seconds", "latency_frac_b1", "latency_frac_batch"}


BOOL_COLUMNS = {"matched", "sparse_file"}


def write_results(results: Sequence[dict[str, Any]], out_dir: Path) -> None:
    """``results.csv`` (the columns above) and ``results.jsonl`` (the same plus per-layer widths)."""
    buf = _io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in results:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in CSV_COLUMNS})
    write_text(out_dir / "results.csv", buf.getvalue())
    write_text(out_dir / "results.jsonl", "".join(json.dumps(r) + "\n" for r in results))


def read_results(out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of ``results.csv`` (typed), with per-layer data from ``results.jsonl`` when present."""
    d = Path(out_dir)
    p = d / "results.csv"
    if not p.is_file():
        raise PrunekitError(f"{d}: no results.csv (is it a prunekit compare folder?)")
    try:
        reader = csv.DictReader(_io.StringIO(p.read_text()))
        header = reader.fieldnames or []
        missing = [c for c in ("label", "method", "seed", "macs", "top1") if c not in header]
        if missing:
            raise PrunekitError(f"{p}: not a prunekit results file (missing columns {', '.join(missing)})")
        rows = [{k: _parse(k, v) for k, v in rec.items() if k in CSV_COLUMNS} for rec in reader]
    except (csv.Error, UnicodeDecodeError, ValueError) as exc:
        raise PrunekitError(f"{p}: malformed results file ({exc})") from None
    layers: dict[str, Any] = {}
    j = d / "results.jsonl"
    if j.is_file():
        try:
            for line in j.read_text().splitlines():
                rec = json.loads(line)
                if isinstance(rec, dict) and "run" in rec:
                    layers[rec["run"]] = (rec.get("layers"), rec.get("dense_layers"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            layers = {}
    for r in rows:
        if r.get("run") in layers:
            r["layers"], r["dense_layers"] = layers[r["run"]]
    return rows


def _parse(key: str, value: str | None) -> Any:
    if value is None or value == "":
        return None
    if key in INT_COLUMNS:
        return int(float(value))
    if key in FLOAT_COLUMNS:
        return float(value)
    if key in BOOL_COLUMNS:
        if value not in ("True", "False"):
            raise ValueError(f"{key}: {value!r} is not True/False")
        return value == "True"
    return value


def summarize(results: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per label: means and standard deviations over seeds."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault(r["label"], []).append(r)
    out = []
    for label, rs in groups.items():
        row: dict[str, Any] = {"label": label, "method": rs[0]["method"], "target_kind": rs[0].get("target_kind"),
                               "target": rs[0].get("target"), "seeds": len(rs),
                               "matched": all(bool(r.get("matched")) for r in rs)}
        for k in ("top1", "macs", "params", "nonzero_params", "macs_frac", "nonzero_frac", "latency_ms_b1",
                  "latency_ms_batch", "latency_frac_b1", "latency_frac_batch", "file_bytes", "train_epochs"):
            vals = [float(r[k]) for r in rs if r.get(k) is not None]
            if vals:
                row[k] = statistics.fmean(vals)
                row[k + "_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        row["latency_batch"] = rs[0].get("latency_batch")
        row["latency_runtime"] = rs[0].get("latency_runtime")
        out.append(row)
    return out


def equal_latency(summary: Sequence[dict[str, Any]], results: Sequence[dict[str, Any]] | None = None) -> str:
    """The latency-vs-MACs comparison at equal measured latency, at batch 1 and at the large batch ("" when
    the grid has no latency rows beside MACs rows); with ``results``, seed by seed as well."""
    lb = next((s.get("latency_batch") for s in summary if s.get("latency_batch")), None)
    out = ""
    for key, batch in (("latency_ms_b1", 1), ("latency_ms_batch", lb)):
        pairs = latency_vs_macs(summary, key, results)
        if pairs and batch:
            out += (f"\n\nLatency-targeted rows against the same method's MACs-targeted rows at equal measured "
                    f"latency at batch {batch} (seed means; MACs rows' top-1 interpolated; per seed: each seed's "
                    f"latency row against that seed's MACs rows):\n\n" + pairs)
    return out


def report(out_dir: str | os.PathLike, results: Sequence[dict[str, Any]] | None = None) -> list[Path]:
    """Write ``summary.md`` and the plots of ``out_dir`` (from ``results``, else from its results.csv)."""
    d = Path(out_dir)
    results = list(results) if results is not None else read_results(d)
    if not results:
        raise PrunekitError(f"{d}: no results to report")
    summary = summarize(results)
    text = markdown(summary)
    text += equal_latency(summary, results)
    write_text(d / "summary.md", f"# {d.name}\n\n{text}\n\nMean over seeds (± standard deviation). Rebuild with: "
                                 f"prunekit report {d}\n")
    written = [d / "summary.md"]
    written += plots(d, results, summary)
    return written


def print_summary(results: Sequence[dict[str, Any]], out_dir: Path) -> None:
    """Print the summary table and where the files are."""
    print()
    summary = summarize(results)
    print(markdown(summary))
    print(equal_latency(summary, results))
    print(f"\nresults: {out_dir / 'results.csv'}; summary and plots: {out_dir}/summary.md, *.png, *.svg",
          file=sys.stdout)
