"""Network Trimming: data-driven neuron pruning by APoZ (Hu, Peng, Tai & Tang 2016, arXiv 1607.03250).

The paper's procedure, and where each step lives here::

    train the network                                   stage "train" (or start from a pretrained model)
    repeat for iterations t = 1..N:                     stages "trim1".."trimN" (kind "retrain")
        APoZ_c = sum_k sum_j [O_c,j(k) == 0] / (N*M)    on_stage_start -> measure (apoz.collect_apoz)
        remove c where APoZ_c > mean + k * std          select_channels (rule "paper", k = 1)
        (and its in/out connections)                    prunekit.surgery.remove_channels
        retrain from the surviving weights              the stage's epochs, after trainer.replace_model

Where we follow the paper: APoZ after the ReLU of each neuron/channel (for a conv, over every spatial
position of every image), the mean + 1 std rule per layer, physical removal of the neuron and its in/out
connections, retraining initialised with the surviving weights, trim/retrain iterations, and optionally the
paper's order (``order: highest_mean``: trim the layer(s) of highest mean APoZ first; the next iteration
picks again, so trimming moves on to the layers that are then the most redundant).

Where we chose (the paper leaves it open or is not verified):

* ``std`` is the population standard deviation of the layer's APoZ values (NumPy's default).
* Data: APoZ is measured on the training set by default (``apoz_data: val`` for the held-out split the
  paper describes; here that split is the test set the accuracy is reported on, hence not the default),
  optionally its first ``apoz_samples`` images, in eval mode (BatchNorm with running statistics).
* A layer followed by BatchNorm then ReLU is measured at that ReLU. Channels coupled by a residual sum (a
  stage of a ResNet: the stem / projection convs and every block's last conv) are one group (from
  ``prunekit.surgery.channel_groups``): their zeros are pooled over every ReLU that carries them (the stem
  ReLU, and each ``ResidualBlock.act`` after the addition), and they are removed together. A layer with no
  ReLU module after it (e.g. the classifier, or a functional ``relu``) cannot be scored and is left alone.
* Other rules, as offered by later tools: a fixed APoZ threshold, or a fixed fraction of highest APoZ.
* Safety rails the paper does not need: at least ``min_channels`` survive in every layer, at most
  ``max_fraction`` of a layer goes per iteration, and ``round_to`` keeps widths at multiples of 8/16.
* The retrain learning rate (``retrain_lr``) and the epochs per stage are not given by the paper.

Bookkeeping (records of every network, the report and plot, checkpoint state, DDP):
:mod:`prunekit.methods.trimming_records`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from prunekit.engine.distributed import check_same
from prunekit.engine.stages import Stage
from prunekit.errors import PrunekitError
from prunekit.methods import trimming_records
from prunekit.methods.api import MethodConfig, TrainingLoop
from prunekit.methods.apoz import ScoredGroup, choose_groups, collect_apoz, per_chunk, scored_groups
from prunekit.methods.budget import round_up
from prunekit.methods.checks import BOOL, check_options, int_at_least, is_int, is_num, one_of, optional, unit_interval
from prunekit.methods.loopdata import split_batches
from prunekit.methods.trimming_records import RecordedTrimming

RULES = ("paper", "threshold", "fraction")
ORDERS = ("together", "highest_mean")
APOZ_DATA = ("train", "val")


@dataclass
class TrimmingConfig(MethodConfig):
    """Network Trimming hyperparameters (paper's defaults where it has them)."""

    iterations: int = 3  # N trim/retrain iterations
    initial_epochs: int | None = None  # None: a share of the budget; 0 when starting from a trained model
    retrain_epochs: int | None = None  # per iteration; None: the rest of the budget split evenly
    retrain_lr: float | None = None  # learning rate of the retrain stages (None: optim.lr)
    rule: str = "paper"  # paper: APoZ > mean + k*std | threshold: APoZ > threshold | fraction
    k: float = 1.0  # the paper's 1 std
    threshold: float = 0.9  # rule "threshold"
    fraction: float = 0.1  # rule "fraction": share of each layer's channels, highest APoZ first
    layers: list[str] | None = None  # conv/linear names or glob patterns to trim (None: every scorable one)
    order: str = "together"  # together: all chosen layers each iteration | highest_mean: the paper's order
    layers_per_iteration: int = 1  # order "highest_mean": how many layers per iteration
    min_channels: int = 1
    max_fraction: float = 1.0  # at most this share of a layer removed per iteration
    round_to: int = 1  # keep widths at multiples of this (removes fewer channels, never more)
    apoz_data: str = "train"  # train | val (the Trainer's datasets)
    apoz_samples: int = 0  # 0: the whole split; else its first n images
    apoz_batch_size: int = 0  # 0: the Trainer's eval batch size
    apoz_threads: int = 0  # CPU torch threads for the APoZ counting (0: as the model; 1 on busy small hosts)
    evaluate_trims: bool = True  # evaluate right after each trim (before retraining) when val data exist
    final_apoz: bool = True  # measure APoZ of the final network too (for the report)
    plot_path: str | None = None  # default: <out_dir>/trimming_apoz.png when the Trainer has an out_dir
    progress: bool = True

    def validate(self) -> None:
        check_options("trimming", self, {
            "iterations": int_at_least(1), "initial_epochs": optional(int_at_least(0)),
            "retrain_epochs": optional(int_at_least(0)),
            "retrain_lr": optional((lambda v: is_num(v) and v > 0, "a positive number")),
            "rule": one_of(RULES), "k": (is_num, "a number"), "threshold": unit_interval(hi_open=True),
            "fraction": unit_interval(hi_open=True),
            "layers": optional((lambda v: isinstance(v, list) and bool(v) and all(isinstance(s, str) and s for s in v),
                                "a non-empty list of layer names / patterns")),
            "order": one_of(ORDERS), "layers_per_iteration": int_at_least(1), "min_channels": int_at_least(1),
            "max_fraction": unit_interval(lo_open=True), "round_to": int_at_least(1), "apoz_data": one_of(APOZ_DATA),
            "apoz_samples": int_at_least(0), "apoz_batch_size": int_at_least(0), "apoz_threads": int_at_least(0),
            **dict.fromkeys(("evaluate_trims", "final_apoz", "progress"), BOOL),
            "plot_path": optional((lambda v: isinstance(v, str) and bool(v), "a file path"))})


# ------------------------------------------------------------------------------------------------ selection


def select_channels(apoz: torch.Tensor, cfg: TrimmingConfig) -> tuple[list[int], float | None]:
    """Channels of one layer (group) to remove, by the configured rule, and the APoZ threshold used.

    Candidates are taken highest APoZ first (ties: lower index first) and capped so that at least
    ``min_channels`` and a multiple of ``round_to`` channels survive and at most ``max_fraction`` go.
    """
    a = apoz.detach().double().cpu()
    c = a.numel()
    thr: float | None
    if cfg.rule == "fraction":
        thr = None
        n_cand = math.floor(cfg.fraction * c + 0.5)
    else:
        # paper: theta = mean + k * std of the layer's APoZ (population std)
        thr = float(a.mean() + cfg.k * a.std(unbiased=False)) if cfg.rule == "paper" else float(cfg.threshold)
        n_cand = int((a > thr).sum())
    order = sorted(range(c), key=lambda i: (-float(a[i]), i))
    n = min(n_cand, c - cfg.min_channels, math.floor(cfg.max_fraction * c + 1e-9))
    n = max(n, 0)
    if n > 0:
        n = c - round_up(c - n, c, cfg.round_to)
    return sorted(order[:n]), thr


# ------------------------------------------------------------------------------------------------ the method


class NetworkTrimming(RecordedTrimming):
    """Network Trimming (Hu et al. 2016): iteratively remove the neurons with the highest APoZ, retrain.

    APoZ is measured on the loop's data (``apoz_data``: its train or val split; in a user's own loop, a
    ``DataLoader`` given as ``LoopState(train_data=...)``, or ``apoz_data=`` here: a dataset, an iterable of
    batches or a callable returning one). A user's loop drives it with the sequence of calls every method
    shares (README.md, "Library"); ``state.replace_model`` rebuilds the optimizers after each trim.
    :meth:`trim` does one iteration on any model directly.
    """

    name = "trimming"
    from_trained_options: ClassVar[Mapping[str, Any]] = {"initial_epochs": 0}
    Config = TrimmingConfig
    config: TrimmingConfig

    def __init__(self, config: TrimmingConfig | Mapping[str, Any] | None = None, *,
                 apoz_data: Any = None, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        self.apoz_data = apoz_data
        self.unscorable: dict[str, str] = {}  # group -> why it is not scored (no ReLU-like activation, ...)

    # -- schedule -------------------------------------------------------------------------------
    def stages(self, epochs: int) -> list[Stage]:
        """[initial training] + ``iterations`` x [trim, retrain]; explicit epoch options win over ``epochs``."""
        cfg = self.config
        n = cfg.iterations
        if not is_int(epochs, 0):
            raise PrunekitError(f"trimming: epochs must be an integer >= 0, got {epochs!r}")
        initial, retrain = cfg.initial_epochs, cfg.retrain_epochs
        if initial is None and retrain is None:
            retrain = epochs // (n + 1)
            initial = epochs - n * retrain
        elif retrain is None:
            assert initial is not None
            if initial > epochs:
                raise PrunekitError(f"trimming: initial_epochs={initial} exceeds the budget of {epochs} epochs")
            retrain = (epochs - initial) // n
        elif initial is None:
            initial = max(epochs - n * retrain, 0)
        out = [Stage("train", initial, kind="train")] if initial else []
        out += [Stage(f"trim{t}", retrain, kind="retrain", lr=cfg.retrain_lr, info={"iteration": t})
                for t in range(1, n + 1)]
        return out

    # -- analysis -------------------------------------------------------------------------------
    def groups(self, model: nn.Module, example_inputs: torch.Tensor) -> list[ScoredGroup]:
        """Every scorable channel group of ``model`` (in module order) with its measuring points; refused in
        one line, naming a group and why, when there is none."""
        self.unscorable = {}
        out, self.log.unscorable = scored_groups(model, example_inputs, reasons=self.unscorable, required=True)
        return out

    def chosen(self, groups: list[ScoredGroup]) -> list[ScoredGroup]:
        """The groups the ``layers`` option names (a group matches if any of its layers does)."""
        return choose_groups(groups, self.config.layers, self.log.unscorable)

    def measure(self, model: nn.Module, batches: Iterable[Any], groups: list[ScoredGroup], *,
                device: torch.device | None = None, amp: bool = False) -> dict[str, torch.Tensor]:
        """APoZ per channel of every group in one pass over ``batches`` (pooled over a group's ReLUs)."""
        return collect_apoz(model, batches, {g.name: g.points for g in groups}, device=device,
                            progress=self.config.progress, amp=amp, threads=self.config.apoz_threads)

    def apoz_batches(self, loop: TrainingLoop) -> Iterable[Any]:
        """What APoZ is measured on: ``apoz_data`` given to the method, else the loop's ``apoz_data`` split."""
        c = self.config
        return split_batches(loop, c.apoz_data, self.apoz_data, batch_size=c.apoz_batch_size, samples=c.apoz_samples,
                             refusal=f"trimming: no data to measure APoZ on ({c.apoz_data!r} split missing); pass "
                                     "apoz_data= to NetworkTrimming in your own loop")

    def plan(self, apoz: Mapping[str, torch.Tensor], groups: list[ScoredGroup]
             ) -> tuple[dict[str, list[int]], dict[str, float | None]]:
        """The removal plan ``{group: channels}`` for one iteration and the thresholds used."""
        cfg = self.config
        chosen = self.chosen(groups)
        sel = {g.name: select_channels(apoz[g.name], cfg) for g in chosen}
        for g in chosen:  # grouped convolutions: the same count from each of their groups
            if g.chunks > 1:
                sel[g.name] = (per_chunk(sel[g.name][0], apoz[g.name], g.chunks), sel[g.name][1])
        names = [g.name for g in chosen]
        if cfg.order == "highest_mean":
            # the paper's order: the layer(s) of highest mean APoZ that still have something to remove
            ranked = sorted((n for n in names if sel[n][0]), key=lambda n: (-float(apoz[n].mean()), names.index(n)))
            names = ranked[: cfg.layers_per_iteration]
        plan = {n: sel[n][0] for n in names if sel[n][0]}
        return plan, {n: sel[n][1] for n in sel}

    # -- one iteration --------------------------------------------------------------------------
    def trim(self, model: nn.Module, batches: Iterable[Any], example_inputs: torch.Tensor, *,
             device: torch.device | None = None, amp: bool = False) -> tuple[nn.Module, dict[str, Any]]:
        """Measure APoZ over ``batches``, remove the selected channels from ``model`` (in place) and return
        it with a record of what happened (APoZ per group, thresholds, removed channels, new widths)."""
        from prunekit import surgery

        raw = getattr(model, "module", model)
        groups = self.groups(raw, example_inputs)
        apoz = self.measure(raw, batches, groups, device=device, amp=amp)
        plan, thresholds = self.plan(apoz, groups)
        # under DDP the counts were all-reduced, so every rank must remove the same channels
        check_same([torch.tensor([g.name in plan for g in groups], dtype=torch.int64)]
                   + [torch.tensor(plan[g], dtype=torch.int64) for g in sorted(plan)], "trimming plans")
        if plan:
            result = surgery.remove_channels(raw, plan, example_inputs, min_channels=self.config.min_channels)
            if isinstance(result, nn.Module):
                raw = result
        return raw, trimming_records.trim_record(apoz, thresholds, plan, groups, self.unscorable)

    # -- callback hooks -------------------------------------------------------------------------
    def on_fit_start(self, trainer: TrainingLoop) -> None:
        super().on_fit_start(trainer)
        if trainer.example_inputs is not None:  # bind: refuse now, not after the first training stage
            self.chosen(self.groups(trainer.raw_model, trainer.example_inputs))

    def on_stage_start(self, trainer: TrainingLoop, stage: Stage) -> None:
        t = int(stage.info.get("iteration", len(self.records)))
        if stage.kind != "retrain" or self.log.has(t):
            return
        example = self.example_of(trainer)
        self.log.before_trim(trainer, example)
        model, rec = self.trim(trainer.raw_model, self.apoz_batches(trainer), example, device=trainer.device,
                               amp=trainer.amp)
        trainer.replace_model(model)
        self.log.after_trim(trainer, t, rec, example, evaluate=self.config.evaluate_trims)

    def on_fit_end(self, trainer: TrainingLoop) -> None:
        if not self.config.final_apoz or not self.records or "apoz" in self.records[-1]:
            return
        model, example = trainer.raw_model, self.example_of(trainer)
        groups = self.groups(model, example)
        apoz = self.measure(model, self.apoz_batches(trainer), groups, device=trainer.device, amp=trainer.amp)
        self.log.final_apoz(apoz, *self.plan(apoz, groups))  # what one more iteration would remove


__all__ = ["NetworkTrimming", "TrimmingConfig", "select_channels"]
