"""Phased hard thresholding: the machinery of IHT and its unstructured peers (one-shot magnitude, DSD,
torch's global magnitude pruning).

``O_k`` (:func:`hard_threshold_masks`) keeps the ``k`` largest-magnitude weights of each layer (or of all
layers together); :class:`PhasedHardThresholding` alternates ``"dense"`` and ``"sparse"`` Stages, freezing
the other weights at exactly zero during a sparse stage (gradient masked before the step, optimizer state
masked at the phase start, weights re-zeroed after every step) and re-activating them from zero in a dense
one. It runs in the Trainer (phases are Stages) and in a user's own loop (phases from the epoch number).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from prunekit.engine.distributed import check_same
from prunekit.engine.stages import SCHEDULES, Stage
from prunekit.errors import PrunekitError
from prunekit.methods.api import FinalizeResult, MethodConfig, PruningMethod, TrainingLoop
from prunekit.methods.checks import check_keep
from prunekit.surgery import MaskSet, keep_count, topk_mask

_PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
PrunableLayer = nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear  # a layer whose ``weight`` is thresholded
SCOPES = ("layer", "global")


# ---------------------------------------------------------------------------------------------------------
# the hard-thresholding operator O_k (keep_count: round half up, at least 1; topk_mask: exactly k by |w|)


def _weight(m: nn.Module, name: str) -> torch.Tensor:
    """``m.weight``, refused (one line) when a masked layer lost its weight tensor."""
    w = m.weight
    if not isinstance(w, torch.Tensor):
        raise PrunekitError(f"{name}: the masked layer has no weight tensor any more")
    return w


def hard_threshold_masks(weights: dict[str, torch.Tensor], keep: float, scope: str = "layer",
                         overrides: dict[str, float] | None = None) -> dict[str, torch.Tensor]:
    """O_k for a set of layers: ``{name: bool mask}``.

    ``scope="layer"``: exactly ``keep_count(keep, n)`` weights per layer (``overrides[name]`` instead of
    ``keep`` where given). ``scope="global"``: the layers without an override are pooled and share one
    top-K, K = ``keep_count(keep, pool size)``; the overridden layers get their own k.
    """
    overrides = overrides or {}
    pooled = [n for n in weights if scope == "global" and n not in overrides]
    masks = {n: topk_mask(w, keep_count(overrides.get(n, keep), w.numel()))
             for n, w in weights.items() if n not in pooled}
    if pooled:
        flat = torch.cat([weights[n].detach().abs().reshape(-1).to(weights[pooled[0]].device) for n in pooled])
        pool_mask = topk_mask(flat, keep_count(keep, flat.numel()))
        start = 0
        for n in pooled:
            size = weights[n].numel()
            masks[n] = pool_mask[start:start + size].view(weights[n].shape).to(weights[n].device)
            start += size
    return {n: masks[n] for n in weights}


def parse_target(target: Any) -> float:
    """``"2x"`` -> 0.5 (SDNN-2x), ``"4x"`` -> 0.25; a plain number r >= 1 means ``"<r>x"``."""
    if isinstance(target, bool):
        raise ValueError(f"target must look like '2x' or '4x', got {target!r}")
    if isinstance(target, int | float):
        ratio = float(target)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*[xX]\s*", str(target))
        if m is None:
            raise ValueError(f"target must look like '2x' or '4x' (compression ratio), got {target!r}")
        ratio = float(m.group(1))
    if not math.isfinite(ratio) or ratio < 1:
        raise ValueError(f"target compression must be >= 1x, got {target!r}")
    return 1.0 / ratio


# ---------------------------------------------------------------------------------------------------------
# shared machinery: masks kept through optimizer steps, phases driven by stages or by the epoch number


@dataclass
class SparsityConfig(MethodConfig):
    """The budget and which weights it applies to (shared by IHT and its peers)."""

    target: str | float | None = None  # "2x" = SDNN-2x (keep 1/2), "4x" = SDNN-4x (keep 1/4)
    keep: float | None = None  # fraction of each layer's weights kept; default 0.5 when neither is set
    layer_keep: dict[str, float] = field(default_factory=dict)  # per-layer overrides {module name: keep}
    scope: str = "layer"  # "layer": k per layer (default) | "global": one top-K over the selected layers
    layers: list[str] | None = None  # module names / glob patterns; None = every Conv and Linear layer
    exclude: list[str] = field(default_factory=list)  # module names / glob patterns left dense
    schedule: str | None = None  # lr schedule within each phase; None = the run's optim.schedule
    reset_momentum: bool = True  # fresh optimizer state at every phase switch (AC/DC idiom)

    def resolved_keep(self) -> float:
        """The default keep ratio from ``keep`` or ``target`` (both set must agree)."""
        keep = self.keep
        if self.target is not None:
            t = parse_target(self.target)
            if keep is not None and abs(keep - t) > 1e-9:
                raise PrunekitError(f"target {self.target!r} means keep={t:g} but keep={keep!r} was also set; "
                                    "set only one of them")
            keep = t
        return 0.5 if keep is None else float(keep)

    def validate(self) -> None:
        try:
            self.resolved_keep()
        except ValueError as exc:
            raise PrunekitError(str(exc)) from None
        if self.keep is not None:
            check_keep(self.keep, "keep")
        if not isinstance(self.layer_keep, dict):
            raise PrunekitError(f"layer_keep must be a mapping {{layer name: keep fraction}}, got {self.layer_keep!r}")
        for name, v in self.layer_keep.items():
            check_keep(v, f"layer_keep[{name!r}]")
        if self.scope not in SCOPES:
            raise PrunekitError(f"scope must be one of {', '.join(SCOPES)}, got {self.scope!r}")
        for key in ("layers", "exclude"):
            v = getattr(self, key)
            if v is None and key == "layers":
                continue
            if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
                raise PrunekitError(f"{key} must be a list of layer names (glob patterns allowed), got {v!r}")
        if self.schedule is not None and self.schedule not in SCHEDULES:
            raise PrunekitError(f"schedule must be one of {', '.join(SCHEDULES)} or null, got {self.schedule!r}")
        if not isinstance(self.reset_momentum, bool):
            raise PrunekitError(f"reset_momentum must be true or false, got {self.reset_momentum!r}")


def prunable_layers(model: nn.Module, layers: list[str] | None = None, exclude: list[str] | tuple = ()
                    ) -> dict[str, PrunableLayer]:
    """``{module name: module}`` of the layers whose ``weight`` is thresholded.

    Default: every Conv1d/2d/3d and Linear. ``layers`` / ``exclude`` hold names or glob patterns; a
    pattern that matches no such layer is an error (a typo must not silently leave a layer dense).
    """
    candidates = {n: m for n, m in model.named_modules() if isinstance(m, _PRUNABLE)}
    chosen: dict[str, PrunableLayer]
    if layers is None:
        chosen = dict(candidates)
    else:
        chosen = {}
        for pat in layers:
            hits = [n for n in candidates if fnmatch.fnmatchcase(n, pat)]
            if not hits:
                raise PrunekitError(f"layers: {pat!r} matches no Conv/Linear layer; valid names: "
                                    f"{', '.join(candidates) or '(none)'}")
            chosen.update({n: candidates[n] for n in hits})
        chosen = {n: m for n, m in candidates.items() if n in chosen}  # model order
    for pat in exclude:
        hits = [n for n in candidates if fnmatch.fnmatchcase(n, pat)]
        if not hits:
            raise PrunekitError(f"exclude: {pat!r} matches no Conv/Linear layer; valid names: "
                                f"{', '.join(candidates) or '(none)'}")
        for n in hits:
            chosen.pop(n, None)
    if not chosen:
        raise PrunekitError("no layer left to threshold (check layers / exclude)")
    return chosen


class PhasedHardThresholding(PruningMethod):
    """Base of IHT, one-shot magnitude pruning and DSD: alternate dense and sparse Stages.

    On entering a ``"sparse"`` stage the weights are hard-thresholded (``O_k``) and the others frozen at 0
    until a ``"dense"`` stage re-activates them. Subclasses supply ``Config`` and :meth:`stages`.
    """

    name: ClassVar[str] = "phased-hard-thresholding"
    Config: ClassVar[type[MethodConfig]] = SparsityConfig
    ends_sparse: ClassVar[bool] = True
    budget_knobs: ClassVar[Mapping[str, str]] = {"params": "keep"}

    def __init__(self, config: Any = None, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        self.keep = self.config.resolved_keep()
        self.maskset: MaskSet | None = None  # phase I: the kept weights (surgery.MaskSet); None in phase II
        self._pending: dict[str, torch.Tensor] | None = None  # masks from a checkpoint, bound to the next model
        self.phase: int = -1  # index of the current phase in the plan
        self.plan: list[Stage] | None = None  # the last stages() answer (drives a user's own loop)
        self._model_id: int | None = None
        self._factors: list[tuple[nn.Module, torch.Tensor]] = []  # (layer, mask as 1.0/0.0): the per-step path

    @classmethod
    def target_options(cls, kind: str, fraction: float, model: nn.Module, options: Mapping[str, Any]
                       ) -> dict[str, Any]:
        """The ``keep`` at which the non-zero parameters are ``fraction`` of all of ``model``'s.

        Only the thresholded layers' weights can become zero; biases, BN and excluded layers stay dense, so
        the per-layer keep must be lower than the target fraction of all parameters.
        """
        super().target_options(kind, fraction, model, options)  # refuses a kind without a knob
        layers = prunable_layers(model, options.get("layers"), options.get("exclude") or [])
        prunable = sum(m.weight.numel() for m in layers.values())
        total = sum(p.numel() for p in model.parameters())
        keep = (fraction * total - (total - prunable)) / prunable
        if not 0 < keep <= 1:
            raise PrunekitError(f"target params={fraction}: unreachable by unstructured pruning of this model (the "
                                f"layers that cannot be thresholded already hold {(total - prunable) / total:.1%} "
                                "of the parameters)")
        return {"keep": round(keep, 6)}

    @property
    def masks(self) -> dict[str, torch.Tensor] | None:
        """``{layer name: bool mask, True = kept}`` in a sparse phase, else None."""
        if self.maskset is not None:
            return {n: self.maskset.mask(n) for n in self.maskset.layers}
        return self._pending

    # -- which weights ----------------------------------------------------------------------------
    def layers_of(self, model: nn.Module) -> dict[str, PrunableLayer]:
        """The thresholded layers of ``model`` (validates ``layer_keep`` names too)."""
        cfg = self.config
        chosen = prunable_layers(model, cfg.layers, cfg.exclude)
        for name in cfg.layer_keep:
            if name not in chosen:
                raise PrunekitError(f"layer_keep: {name!r} is not a thresholded layer; thresholded layers: "
                                    f"{', '.join(chosen)}")
        return chosen

    def check_reachable(self, model: nn.Module) -> dict[str, PrunableLayer]:
        """The thresholded layers of ``model``, after refusing (one line) a budget that ``O_k`` could only meet
        by keeping nothing of some layer: every layer keeps at least one weight, so such a target would be
        silently missed."""
        layers = self.layers_of(model)
        cfg = self.config
        pooled = {n: m for n, m in layers.items() if cfg.scope == "global" and n not in cfg.layer_keep}
        units = [(f"layer {n!r}", self.keep_of(n), m.weight.numel())
                 for n, m in layers.items() if n not in pooled]
        if pooled:
            size = sum(m.weight.numel() for m in pooled.values())
            units.append((f"the {len(pooled)} pooled layers", self.keep, size))
        for where, keep, n in units:
            if keep * n < 0.5:  # keep_count would round to 0 and clamp to 1
                raise PrunekitError(f"{self.name}: keep={keep:.3g} (target {1 / keep:.3g}x) is unreachable: it leaves "
                                    f"{where} ({n} weights) less than one weight; keep at least {1 / n:.3g} "
                                    f"there (one weight: {n}x)")
        return layers

    def keep_of(self, name: str) -> float:
        return float(self.config.layer_keep.get(name, self.keep))

    # -- phase I / II -----------------------------------------------------------------------------
    @torch.no_grad()
    def threshold(self, model: nn.Module, optimizers: Sequence[torch.optim.Optimizer] = ()) -> None:
        """Phase I entry: W <- O_k(W), freeze the rest at 0 (weights and their optimizer state)."""
        weights = {n: m.weight for n, m in self.check_reachable(model).items()}
        masks = hard_threshold_masks(weights, self.keep, self.config.scope, self.config.layer_keep)
        self.maskset, self._pending = MaskSet(model, masks), None
        self._attach(model)
        self.maskset.apply_()
        for opt in optimizers:  # a momentum buffer must not carry a frozen weight away from 0
            self.maskset.mask_optimizer_state_(opt)

    def release(self) -> None:
        """Phase II entry: re-activate every frozen connection (its weight is 0 and trains from there)."""
        self.maskset, self._pending, self._factors = None, None, []

    def _bind(self, model: nn.Module) -> None:
        """Attach the current masks (kept by layer name) to ``model`` (a new model object after resume)."""
        masks = self.masks
        self._model_id = id(model)
        if masks is not None:
            self.maskset, self._pending = MaskSet(model, masks), None
            self._attach(model)

    def _attach(self, model: nn.Module) -> None:
        """Cache each mask as a 1.0/0.0 tensor in the weight's dtype for the per-step multiply."""
        assert self.maskset is not None
        self._model_id = id(model)
        modules = dict(model.named_modules())
        self._factors = [(modules[n], self.maskset.mask(n).to(_weight(modules[n], n).dtype))
                         for n in self.maskset.layers]

    def _each(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i, (m, f) in enumerate(self._factors):
            w = _weight(m, "a masked layer")
            if f.device != w.device or f.dtype != w.dtype:  # the model moved (or changed dtype) since
                f = f.to(device=w.device, dtype=w.dtype)
                self._factors[i] = (m, f)
            yield w, f

    def enter_phase(self, trainer: TrainingLoop, stage: Stage, index: int) -> None:
        """Enter phase ``index`` (``stage``): reset the momentum when asked, then threshold (a sparse phase) or
        release the masks (a dense phase)."""
        self.phase = index
        model = trainer.raw_model
        optimizers = list(trainer.optimizers)
        if stage.reset_optimizer and self.config.reset_momentum:
            for opt in optimizers:  # no-op after the Trainer rebuilt them; the reset in a user's loop
                opt.state.clear()
        if stage.kind == "sparse":
            self.threshold(model, optimizers)
            assert self.maskset is not None  # under DDP: O_k of identical weights is identical on every rank
            check_same([self.maskset.mask(n) for n in self.maskset.layers], f"{self.name} masks")
        else:
            self.release()

    # -- callback hooks ---------------------------------------------------------------------------
    def on_fit_start(self, trainer: TrainingLoop) -> None:
        self.check_reachable(trainer.raw_model)  # fail before training on bad layer names or budgets

    def on_model_changed(self, trainer: TrainingLoop) -> None:
        self._bind(trainer.raw_model)

    def on_stage_start(self, trainer: TrainingLoop, stage: Stage) -> None:
        self.enter_phase(trainer, stage, trainer.stage_index)

    def on_epoch_start(self, trainer: TrainingLoop) -> None:
        if trainer.stage is not None:
            return  # the Trainer (or the user) drives the phases through on_stage_start
        if self.plan is None:
            raise PrunekitError(f"{self.name}: call method.stages(epochs) once before training in your own "
                                "loop (it fixes the phase schedule), or set state.stage and call on_stage_start")
        index, stage = self.phase_at(int(trainer.epoch))
        if index != self.phase:
            self.enter_phase(trainer, stage, index)

    def on_before_optimizer_step(self, trainer: TrainingLoop) -> None:
        if self._active(trainer):  # frozen weights get no gradient: momentum and decay see exactly 0
            for w, f in self._each():
                if w.grad is not None:
                    w.grad.mul_(f)

    @torch.no_grad()
    def on_after_optimizer_step(self, trainer: TrainingLoop) -> None:
        if self._active(trainer):  # and whatever the optimizer did, they are 0 after the step
            for w, f in self._each():
                w.mul_(f)

    def _active(self, trainer: TrainingLoop) -> bool:
        if self.maskset is None and self._pending is None:
            return False
        model = trainer.raw_model
        if self._model_id != id(model):
            self._bind(model)
        return True

    # -- schedule ---------------------------------------------------------------------------------
    def _remember(self, stages: list[Stage]) -> list[Stage]:
        stages = [s for s in stages if s.epochs > 0]
        self.plan = stages
        return [dataclasses.replace(s, info=dict(s.info)) for s in stages]

    def phase_at(self, epoch: int) -> tuple[int, Stage]:
        """The (index, stage) of the plan that epoch ``epoch`` (0-based) falls in; past the end: the last."""
        if not self.plan:
            raise PrunekitError(f"{self.name}: no schedule yet; call method.stages(epochs) first")
        start = 0
        for i, st in enumerate(self.plan):
            if epoch < start + st.epochs:
                return i, st
            start += st.epochs
        return len(self.plan) - 1, self.plan[-1]

    def _stage(self, name: str, epochs: int, kind: str, lr: float | None, reset: bool | None = None,
               **info: Any) -> Stage:
        reset = self.config.reset_momentum if reset is None else reset
        return Stage(name, epochs, kind=kind, lr=lr, schedule=self.config.schedule, reset_optimizer=reset,
                     info=info)

    # -- deliverable ------------------------------------------------------------------------------
    @torch.no_grad()
    def finalize(self, model: nn.Module, example_inputs: torch.Tensor) -> FinalizeResult:
        """The sparse network (or, for a method that ends dense, the dense one) with an honest count."""
        model = getattr(model, "module", model)
        thresholded_now = False
        if self.ends_sparse:
            if self.masks is None:  # stopped in a dense phase: meet the budget by one last O_k
                self.threshold(model)
                thresholded_now = True
            else:
                self._bind(model)
                assert self.maskset is not None  # _bind made it from the masks
                self.maskset.apply_()
        return FinalizeResult(model, sparse=self.ends_sparse,
                              report=self.sparsity_report(model, thresholded_at_finalize=thresholded_now))

    @torch.no_grad()
    def sparsity_report(self, model: nn.Module, **extra: Any) -> dict[str, Any]:
        """Per-layer and total parameter / non-zero counts (biases and BN counted in the totals only)."""
        layers = self.layers_of(model)
        per_layer: dict[str, dict[str, Any]] = {}
        for name, m in layers.items():
            w = m.weight
            n, nz = w.numel(), int(torch.count_nonzero(w))
            per_layer[name] = {"params": n, "kept": keep_count(self.keep_of(name), n)
                               if self.config.scope == "layer" or name in self.config.layer_keep else None,
                               "nonzero": nz, "sparsity": 1.0 - nz / n}
        total = sum(p.numel() for p in model.parameters())
        total_nz = sum(int(torch.count_nonzero(p)) for p in model.parameters())
        masked = sum(v["params"] for v in per_layer.values())
        masked_nz = sum(v["nonzero"] for v in per_layer.values())
        return {"method": self.name, "keep": self.keep, "scope": self.config.scope, "layers": per_layer,
                "thresholded_params": masked, "thresholded_nonzero": masked_nz,
                "other_params": total - masked, "params": total, "nonzero_params": total_nz,
                "compression": total / max(total_nz, 1), "sparse": self.ends_sparse, **extra}

    # -- resume -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        masks = None if self.masks is None else {n: m.detach().cpu() for n, m in self.masks.items()}
        return {"phase": self.phase, "masks": masks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        try:
            self.phase = int(state["phase"])
            masks = state["masks"]
        except (KeyError, TypeError, ValueError) as exc:
            raise PrunekitError(f"{self.name}: method state in the checkpoint is malformed ({exc})") from None
        if masks is not None and (not isinstance(masks, dict)
                                  or not all(isinstance(m, torch.Tensor) for m in masks.values())):
            raise PrunekitError(f"{self.name}: masks in the checkpoint are malformed")
        self.maskset, self._model_id, self._factors = None, None, []
        self._pending = None if masks is None else {n: m.to(torch.bool) for n, m in masks.items()}


__all__ = ["SCOPES", "PhasedHardThresholding", "PrunableLayer", "SparsityConfig", "hard_threshold_masks", "keep_count",
           "parse_target", "prunable_layers", "topk_mask"]
