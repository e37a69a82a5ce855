"""Tables and plots of a comparison grid: the Markdown summary, accuracy / latency versus cost with the
Pareto front, and the per-layer share of weights kept."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from prunekit.atomic import atomic_path


def markdown(summary: Sequence[dict[str, Any]]) -> str:
    """The summary as a Markdown table, dense first, then by target and accuracy."""
    from prunekit.reports import human

    dense = next((s for s in summary if s["method"] == "dense"), None)
    order = sorted(summary, key=lambda s: (s["method"] != "dense", s.get("target_kind") or "~",
                                           -(s.get("target") or 0), -s.get("top1", 0)))
    lb = next((s.get("latency_batch") for s in summary if s.get("latency_batch")), None)
    heads = ["row", "seeds", "top-1 %", "vs dense", "MACs", "MACs x", "non-zeros", "size x", "matched"]
    if any(s.get("latency_ms_b1") for s in summary):
        heads += ["latency b1 ms", f"latency b{lb} ms", f"speed-up b{lb}"]
    fracs = any(s.get("latency_frac_b1") for s in summary)
    if fracs:
        heads += ["latency b1 / dense", f"latency b{lb} / dense"]
    lines = ["| " + " | ".join(heads) + " |", "|" + "|".join("---" for _ in heads) + "|"]
    for s in order:
        spread = f" ± {s['top1_std']:.2f}" if s["seeds"] > 1 else ""
        delta = f"{s['top1'] - dense['top1']:+.2f}" if dense and s is not dense else "-"
        cells = [s["label"], str(s["seeds"]), f"{s['top1']:.2f}{spread}", delta, human(int(s["macs"]), "macs"),
                 f"{1 / s['macs_frac']:.2f}" if s.get("macs_frac") else "-",
                 human(int(s["nonzero_params"]), "params"),
                 f"{1 / s['nonzero_frac']:.2f}" if s.get("nonzero_frac") else "-",
                 "yes" if s["matched"] else ("-" if s["method"] == "dense" or not s.get("target_kind") else "no")]
        if "latency b1 ms" in heads:
            cells += [f"{s['latency_ms_b1']:.3f}" if s.get("latency_ms_b1") else "-",
                      f"{s['latency_ms_batch']:.2f}" if s.get("latency_ms_batch") else "-",
                      f"{dense['latency_ms_batch'] / s['latency_ms_batch']:.2f}"
                      if dense and s.get("latency_ms_batch") and dense.get("latency_ms_batch") else "-"]
        if fracs:
            spread = f" ± {s['latency_frac_b1_std']:.3f}" if s["seeds"] > 1 and s.get("latency_frac_b1_std") else ""
            cells.append(f"{s['latency_frac_b1']:.3f}{spread}" if s.get("latency_frac_b1") else "-")
            spread = f" ± {s['latency_frac_batch_std']:.3f}" if s["seeds"] > 1 and s.get("latency_frac_batch_std") \
                else ""
            cells.append(f"{s['latency_frac_batch']:.3f}{spread}" if s.get("latency_frac_batch") else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _interpolate(points: Sequence[tuple[float, float, str]], x: float) -> tuple[float, str] | None:
    """The accuracy of ``(latency, top1, label)`` points interpolated linearly at latency ``x``, and the rows
    it came from; None outside their range."""
    pts = sorted(points)
    below = [p for p in pts if p[0] <= x]
    above = [p for p in pts if p[0] >= x]
    if not (below and above):
        return None
    lo, hi = below[-1], above[0]
    w = 0.0 if hi[0] == lo[0] else (x - lo[0]) / (hi[0] - lo[0])
    return lo[1] + w * (hi[1] - lo[1]), (lo[2] if lo is hi else f"{lo[2]} .. {hi[2]}")


def latency_vs_macs(summary: Sequence[dict[str, Any]], key: str = "latency_ms_b1",
                    results: Sequence[dict[str, Any]] | None = None) -> str:
    """Each latency-targeted row against the same method's MACs-targeted rows at equal measured latency
    (``key``: ``latency_ms_b1`` or ``latency_ms_batch``; seed means): the MACs rows' accuracy interpolated
    linearly at the latency row's measured latency (only inside the MACs rows' measured range; outside it, no
    comparison is claimed). With the per-seed ``results``, the same comparison seed by seed as well (each
    seed's latency row against that seed's MACs rows: the paired differences, their mean ± standard deviation
    and how many seeds were at least as accurate), which tells a difference from the seed spread. Empty when
    the grid has no latency rows beside MACs rows."""
    import statistics

    paired = results is not None and any(r.get("seed") is not None for r in results)
    lines = []
    for s in sorted(summary, key=lambda s: (s["method"], -(s.get("target") or 0))):
        if s.get("target_kind") != "latency" or not s.get(key):
            continue
        macs = [(m[key], m["top1"], m["label"]) for m in summary
                if m["method"] == s["method"] and m.get("target_kind") == "macs" and m.get(key)]
        if not macs:
            continue
        x = s[key]
        at = _interpolate(macs, x)
        if at is not None:
            acc, ref = at
            cells = [s["label"], f"{x:.4f}", f"{s['top1']:.2f}", f"{acc:.2f}", f"{s['top1'] - acc:+.2f}", ref,
                     "yes" if s["top1"] >= acc else "no"]
        else:
            cells = [s["label"], f"{x:.4f}", f"{s['top1']:.2f}", "-", "-", "outside the MACs rows' measured range",
                     "-"]
        if paired:
            diffs = []
            for r in (r for r in results or () if r["label"] == s["label"] and r.get(key)):
                mine = [(m[key], float(m["top1"]), m["label"]) for m in results or ()
                        if m["method"] == r["method"] and m.get("seed") == r.get("seed")
                        and m.get("target_kind") == "macs" and m.get(key)]
                got = _interpolate(mine, float(r[key]))
                if got is not None:
                    diffs.append(float(r["top1"]) - got[0])
            if diffs:
                spread = f" ± {statistics.stdev(diffs):.2f}" if len(diffs) > 1 else ""
                cells += [" / ".join(f"{d:+.2f}" for d in diffs) + f" (mean {statistics.fmean(diffs):+.2f}{spread})",
                          f"{sum(d >= 0 for d in diffs)} of {len(diffs)}"]
            else:
                cells += ["-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    if not lines:
        return ""
    heads = ["latency row", "measured ms", "top-1 %", "MACs rows at that latency, top-1 %", "difference",
             "interpolated between", "at least as accurate"]
    if paired:
        heads += ["per seed (paired)", "seeds at least as accurate"]
    return "\n".join(["| " + " | ".join(heads) + " |", "|" + "|".join("---" for _ in heads) + "|", *lines])


def pareto(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both cost (lower) and accuracy (higher), by increasing cost."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y))
    return front


def plots(d: Path, results: Sequence[dict[str, Any]], summary: Sequence[dict[str, Any]]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = sorted({s["method"] for s in summary}, key=lambda m: (m != "dense", m))
    colors = {m: plt.get_cmap("tab20")(i % 20) for i, m in enumerate(methods)}
    markers = dict(zip(methods, itertools.cycle("o^sDv<>pPX*h"), strict=False))
    written: list[Path] = []

    def save(fig: Any, stem: str) -> None:
        for ext in ("png", "svg"):
            p = d / f"{stem}.{ext}"
            with atomic_path(p) as tmp:
                fig.savefig(tmp, format=ext)
            written.append(p)
        plt.close(fig)

    def scatter(x: str, y: str, xlabel: str, ylabel: str, stem: str, front: bool, by_kind: bool = False,
                log: bool = True) -> None:
        """``y`` against ``x`` per method (and per target kind when ``by_kind``: filled markers for
        latency-targeted rows, hollow ones for the rest)."""
        fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
        pts = []
        series = sorted({(s["method"], (s.get("target_kind") or "") if by_kind else "") for s in summary},
                        key=lambda k: (k[0] != "dense", k))
        for m, kind in series:
            ss = [s for s in summary if s["method"] == m and ((s.get("target_kind") or "") == kind or not by_kind)
                  and s.get(x) and s.get(y) is not None]
            if not ss:
                continue
            xs, ys = [s[x] for s in ss], [s[y] for s in ss]
            hollow = by_kind and kind not in ("latency", "") and m != "dense"
            ax.errorbar(xs, ys, yerr=[s.get(y + "_std", 0.0) for s in ss], fmt=markers[m], color=colors[m],
                        label=f"{m} @{kind}" if by_kind and kind else m, capsize=2, markersize=6,
                        linestyle="none", markerfacecolor="white" if hollow else colors[m])
            pts += list(zip(xs, ys, strict=True))
        if front and pts:
            fx, fy = zip(*pareto(pts), strict=True)
            ax.step(fx, fy, where="post", color="0.4", linestyle="--", linewidth=1, label="Pareto front")
        if log:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
        ax.set_title(f"{d.name}: {ylabel} vs {xlabel} (mean over seeds)", fontsize=9)
        fig.tight_layout()
        save(fig, stem)

    scatter("macs", "top1", "MACs per image", "top-1 %", "accuracy_vs_macs", True)
    scatter("nonzero_params", "top1", "non-zero parameters", "top-1 %", "accuracy_vs_params", True)
    if any(s.get("latency_ms_batch") for s in summary):
        lb = next(s["latency_batch"] for s in summary if s.get("latency_batch"))
        scatter("macs", "latency_ms_batch", "MACs per image", f"latency at batch {lb}, ms", "latency_vs_macs", False)
    if any(s.get("latency_ms_b1") for s in summary):  # accuracy against what a deployment sees
        rt = next((s.get("latency_runtime") for s in summary if s.get("latency_runtime")), None) or "PyTorch"
        scatter("latency_ms_b1", "top1", f"measured latency at batch 1, ms ({rt})", "top-1 %",
                "accuracy_vs_latency", True, by_kind=True, log=False)
        lb = next((s["latency_batch"] for s in summary if s.get("latency_batch")), 1)
        if lb != 1:
            scatter("latency_ms_batch", "top1", f"measured latency at batch {lb}, ms ({rt})", "top-1 %",
                    f"accuracy_vs_latency_b{lb}", True, by_kind=True, log=False)
    _layer_plot(d, results, colors, save)
    return written


def _layer_plot(d: Path, results: Sequence[dict[str, Any]], colors: dict[str, Any],
                save: Callable[[Any, str], None]) -> None:
    """Share of each layer's dense weights kept (non-zero), one panel per target, first seed of each row."""
    import matplotlib.pyplot as plt

    rows = [r for r in results if r.get("layers") and r.get("dense_layers")]
    if not rows:
        return
    first_seed = min(r["seed"] for r in rows)
    rows = [r for r in rows if r["seed"] == first_seed and r["method"] != "dense"]
    panels = sorted({(r.get("target_kind") or "own", r.get("target") or 0.0) for r in rows},
                    key=lambda p: (p[0], -p[1]))
    if not panels:
        return
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.6 * len(panels)), dpi=110, squeeze=False)
    styles: dict[tuple[str, str], str] = {}  # rows of one method (sweep points, targets) differ by line style
    for r in rows:
        same = [x for x in styles if x[0] == r["method"]]
        styles.setdefault((r["method"], r["label"]), ("-", "--", ":", "-.")[len(same) % 4])
    for ax, (kind, target) in zip(axes[:, 0], panels, strict=True):
        for r in rows:
            if (r.get("target_kind") or "own", r.get("target") or 0.0) != (kind, target):
                continue
            dense = {lay["name"]: lay for lay in r["dense_layers"]}
            names = [lay["name"] for lay in r["dense_layers"]]
            got = {lay["name"]: lay for lay in r["layers"]}
            kept = [got[n]["nonzero"] / dense[n]["numel"] if n in got else 0.0 for n in names]
            ax.plot(range(len(names)), kept, marker=".", label=r["label"], color=colors.get(r["method"]),
                    linestyle=styles[(r["method"], r["label"])])
            ax.set_xticks(range(len(names)), names, rotation=60, fontsize=6, ha="right")
        title = "own settings" if kind == "own" else f"{kind} target {target:g}"
        ax.set_title(f"weights kept per layer ({title}, seed {first_seed})", fontsize=8)
        ax.set_ylabel("kept / dense", fontsize=7)
        ax.set_ylim(0, 1.05)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    save(fig, "layers")
