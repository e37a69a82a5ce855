"""Network Trimming's bookkeeping: its records, one per network (0 = before the first trim, t = after trim t),
with the widths of every conv / linear layer, parameters, MACs, accuracy after the trim and after retraining,
and the full APoZ vectors.

:class:`TrimmingRecords` keeps them through a run; :func:`report` turns them into a table, APoZ means and
histograms, and a per-layer plot. :class:`RecordedTrimming`, the base of
:class:`~prunekit.methods.trimming.NetworkTrimming`, holds the hooks that only record, the report, and the
checkpoint state. The trim runs at the start of its stage, after the checkpoint of the previous one, and every
checkpoint stores the pruned architecture and these records, so a resumed run ends bit-identical. Under
DistributedDataParallel every process counts zeros on its shard and the counts are summed, so all processes
take the same decision; the Trainer then re-wraps the smaller model.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from prunekit.engine.distributed import is_main
from prunekit.engine.stages import Stage
from prunekit.errors import PrunekitError
from prunekit.methods.api import FinalizeResult, PruningMethod, TrainingLoop
from prunekit.methods.apoz import ScoredGroup
from prunekit.methods.loopdata import example_inputs_of, val_top1

if TYPE_CHECKING:
    from prunekit.methods.trimming import TrimmingConfig

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


def trim_record(apoz: dict[str, torch.Tensor], thresholds: dict[str, float | None], plan: dict[str, list[int]],
                groups: list[ScoredGroup], unscored: dict[str, str]) -> dict[str, Any]:
    """What decided one trim: APoZ per group, the thresholds, the removed channels, the groups measured (their
    layers, measuring points and rule) and those not scored (with why)."""
    return {"apoz": {g: a.float() for g, a in apoz.items()}, "thresholds": thresholds,
            "removed": {g: list(v) for g, v in plan.items()},
            "groups": {g.name: {"layers": list(g.layers), "points": g.points, "rule": g.rule} for g in groups},
            "unscored": dict(unscored)}


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

    from prunekit.atomic import atomic_path

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


class TrimmingRecords:
    """The records of one trimming run, filled in from the training loop's hooks, and the loop's last metrics
    (the accuracy of the network a record describes). Its state is what a checkpoint stores of the method."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.last_metrics: dict[str, Any] = {}
        self.unscorable: list[str] = []  # groups APoZ cannot score (reported)

    def has(self, iteration: int) -> bool:
        """Whether trim ``iteration`` is recorded (a hook called twice by a user's loop trims once)."""
        return any(r["iteration"] == iteration for r in self.records)

    def before_trim(self, loop: TrainingLoop, example: torch.Tensor) -> None:
        """Before the first trim: record the untrimmed network, with its last (or a fresh) accuracy."""
        if not self.records:
            rec = snapshot(loop.raw_model, example, 0)
            top1 = self.last_metrics.get("val_top1")
            rec["top1"] = top1 if top1 is not None else val_top1(loop)
            self.records.append(rec)

    def after_trim(self, loop: TrainingLoop, iteration: int, trim: dict[str, Any], example: torch.Tensor,
                   evaluate: bool) -> None:
        """Record trim ``iteration`` (``trim``: the APoZ, thresholds and removed channels that decided it; the
        APoZ belongs to the network before it) and the loop's new network, evaluated now when ``evaluate``."""
        prev = self.records[-1]
        prev["apoz"], prev["thresholds"] = trim["apoz"], trim["thresholds"]
        new = snapshot(loop.raw_model, example, iteration)
        new["removed"] = {g: len(v) for g, v in trim["removed"].items()}
        new["removed_channels"] = trim["removed"]
        if evaluate:
            new["top1_trimmed"] = val_top1(loop)
        self.records.append(new)
        self.last_metrics = {}

    def trained(self, loop: TrainingLoop, example: torch.Tensor) -> None:
        """After the initial training: the first record, with the accuracy reached."""
        self.records = [{**snapshot(loop.raw_model, example, 0), "top1": self.last_metrics.get("val_top1")}]

    def retrained(self, stage: Stage) -> None:
        """After a retrain stage: the accuracy it reached (with no epochs: the one evaluated after the trim)."""
        if self.records:
            last = self.records[-1]
            last["top1"] = last.get("top1_trimmed") if stage.epochs == 0 else self.last_metrics.get("val_top1")
            last["train_loss"] = self.last_metrics.get("train_loss")

    def final_apoz(self, apoz: dict[str, torch.Tensor], plan: dict[str, list[int]],
                   thresholds: dict[str, float | None]) -> None:
        """The final network's APoZ and what one more trim would remove (not applied)."""
        last = self.records[-1]
        last["apoz"] = {g: a.float() for g, a in apoz.items()}
        last["thresholds"] = thresholds
        last["next_removed"] = {g: len(v) for g, v in plan.items()}

    def report(self, plot_path: str | Path | None) -> dict[str, Any]:
        """:func:`report` of the records, and the groups APoZ cannot score."""
        return {**report(self.records, plot_path), "unscorable": list(self.unscorable)}

    def state_dict(self) -> dict[str, Any]:
        return {"records": self.records, "unscorable": list(self.unscorable),
                "last_metrics": {k: v for k, v in self.last_metrics.items()
                                 if v is None or isinstance(v, bool | int | float | str)}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        try:
            self.records = [dict(r) for r in state.get("records", [])]
            self.unscorable = list(state.get("unscorable", []))
            self.last_metrics = dict(state.get("last_metrics", {}))
        except (TypeError, ValueError, AttributeError) as exc:
            raise PrunekitError(f"trimming: method state in the checkpoint is malformed ({exc})") from None


class RecordedTrimming(PruningMethod):
    """Base of :class:`~prunekit.methods.trimming.NetworkTrimming`: its :class:`TrimmingRecords` (``log``), the
    hooks that only record (epoch and stage ends), the report and plot made of the records, and its
    checkpoint state (the records)."""

    config: TrimmingConfig
    apoz_data: Any = None  # data given to the method itself (it also shapes the example inputs)

    def __init__(self, config: Any = None, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        self.log = TrimmingRecords()
        self.out_dir: Path | None = None  # where the report's plot goes by default

    @property
    def records(self) -> list[dict[str, Any]]:
        """One record per network: 0 = before the first trim, t = after trim t."""
        return self.log.records

    def example_of(self, loop: TrainingLoop) -> torch.Tensor:
        """Example inputs of the loop's model (:func:`prunekit.methods.loopdata.example_inputs_of`)."""
        return example_inputs_of(loop, self.apoz_data)

    def on_fit_start(self, trainer: TrainingLoop) -> None:
        self.out_dir = trainer.out_dir

    def on_model_changed(self, trainer: TrainingLoop) -> None:
        self.out_dir = trainer.out_dir

    def on_epoch_end(self, trainer: TrainingLoop, metrics: dict[str, float]) -> None:
        self.log.last_metrics = dict(metrics)

    def on_stage_end(self, trainer: TrainingLoop, stage: Stage) -> None:
        if stage.kind == "train":
            self.log.trained(trainer, self.example_of(trainer))
        else:
            self.log.retrained(stage)

    def table_rows(self) -> list[dict[str, Any]]:
        """One row per network: iteration, widths of the trimmed layers, parameters, MACs, accuracy."""
        return table_rows(self.records)

    def plot(self, path: str | Path) -> Path:
        """Per-layer APoZ histograms of every iteration's network saved to ``path``."""
        return plot(self.records, path)

    def report(self, plot_path: str | Path | None = None) -> dict[str, Any]:
        """Iterations (widths, parameters, MACs, accuracy, APoZ summary per layer), a text table, the plot
        (to ``plot_path``, else the config's, else ``<out_dir>/trimming_apoz.png``)."""
        target = plot_path or self.config.plot_path or (self.out_dir / "trimming_apoz.png" if self.out_dir else None)
        return self.log.report(target if is_main() else None)  # one writer

    def finalize(self, model: nn.Module, example_inputs: torch.Tensor) -> FinalizeResult:
        """The trimmed network is already small (channels were removed for real); add the report."""
        return FinalizeResult(getattr(model, "module", model), sparse=False, report=self.report())

    def state_dict(self) -> dict[str, Any]:
        return self.log.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.log.load_state_dict(state)


__all__ = ["HIST_BINS", "RecordedTrimming", "TrimmingRecords", "histogram", "plot", "report", "snapshot", "table_rows",
           "trim_record"]
