"""What the filter-selecting methods share: the options that fix ``k`` per channel group, and ``H_k`` kept
bound to the training loop's current network (SGHT, soft filter pruning; the one-shot filter peers use the
options).

* :class:`FilterBudgetConfig` -- how many filters each group keeps (``keep_ratio`` with per-layer overrides, or a
  MACs / params / measured-latency budget solved per group by :mod:`prunekit.methods.budget`) and how filters
  are scored; :class:`ZeroingConfig` adds whether zeroing a filter also zeroes its bias and BN shift.
* :class:`FilterSelectionMethod` -- a method base that finds the groups and builds the
  :class:`~prunekit.methods.filters.FilterThreshold` of the loop's model on first use (again whenever the loop
  replaces the model object), remembers example inputs from the first batch for a user's own loop, and
  delivers the compact network: ``H_k`` once more with the dropped channels' shift zeroed, so that removing
  them is exact, then the removal itself and a report (kept / dropped widths, MACs and parameters).
* :class:`Comebacks` -- counts channels that one selection zeroed and the next kept, and checks that every
  process of a distributed run chose the same filters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from prunekit.engine.distributed import check_same
from prunekit.errors import PrunekitError
from prunekit.methods import budget
from prunekit.methods.api import FinalizeResult, MethodConfig, PruningMethod, TrainingLoop, latency_option
from prunekit.methods.checks import BOOL, check_options, int_at_least, one_of
from prunekit.methods.filters import NORMS, FilterThreshold, remove_zero_filters


@dataclass
class FilterBudgetConfig(MethodConfig):
    """Options shared by the filter-pruning methods: how many filters to keep, and how to score them."""

    keep_ratio: float = 0.5  # k = floor(keep_ratio * width) per group; unused with a budget
    layer_keep: dict[str, float] = field(default_factory=dict)  # group (any member layer) -> its own ratio
    macs_budget: float | None = None  # keep this fraction of the dense MACs (k per group solved, within tol)
    params_budget: float | None = None  # ... or of the dense parameters
    budget_tol: float = 0.01
    min_keep: int = 1
    round_to: int = 1  # keep thinned widths multiples of this (8 / 16 suit GPU kernels); 1 = any width
    norm: str = "l1"  # filter score
    include_linear: bool = True  # hidden linear layers too (never the classifier)
    coupled: bool = False  # residual-coupled groups pruned as one; False leaves them dense
    latency: dict[str, Any] | float | None = None  # {latency: f, runtime, batch, threads}: a measured-latency budget

    def check_budget(self, method: str) -> None:
        """Check the shared options (one line naming ``method`` and the option); normalize ``latency``."""
        budget.validate_budget_options(method, self.keep_ratio, self.layer_keep, self.macs_budget,
                                       self.params_budget, self.budget_tol)
        self.latency = latency_option(method, self.latency, macs_budget=self.macs_budget,
                                      params_budget=self.params_budget)
        check_options(method, self, {"norm": one_of(NORMS), "min_keep": int_at_least(1),
                                     "round_to": int_at_least(1), "include_linear": BOOL, "coupled": BOOL})


@dataclass
class ZeroingConfig(FilterBudgetConfig):
    """Options of a method that zeroes the unselected filters while it trains and removes them at the end."""

    zero_shift: bool = True  # zero the BN shift / running mean (and bias) of zeroed channels too

    def check_budget(self, method: str) -> None:
        super().check_budget(method)
        check_options(method, self, {"zero_shift": BOOL})


class Comebacks:
    """Channels that one selection zeroed and the next kept, counted on the device (no sync per step)."""

    def __init__(self) -> None:
        self.last_mask: torch.Tensor | None = None
        self._count: torch.Tensor | int = 0

    def update(self, mask: torch.Tensor) -> None:
        """Count the channels ``mask`` keeps that the previous mask dropped; remember ``mask``."""
        last = self.last_mask
        if last is not None and last.shape == mask.shape:
            self._count += (mask & ~last.to(mask.device)).sum()
        self.last_mask = mask

    @property
    def count(self) -> int:
        return int(self._count)

    def check_same(self, what: str) -> None:
        """Under DDP: the same choice on every process (one line naming ``what`` when not)."""
        if self.last_mask is not None:
            check_same(self.last_mask, what)

    def state_dict(self) -> dict[str, Any]:
        st: dict[str, Any] = {"revived": self.count}
        if self.last_mask is not None:
            st["last_mask"] = self.last_mask.detach().cpu()
        return st

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._count = int(state.get("revived", 0))
        last = state.get("last_mask")
        self.last_mask = last.bool() if isinstance(last, torch.Tensor) else None


class FilterSelectionMethod(PruningMethod):
    """Base of a method that selects filters with ``H_k`` while it trains (see the module docstring).

    Subclasses call :meth:`selector` to get ``H_k`` of the current model, and :meth:`deliver` from
    ``finalize``. ``groups``, ``cost`` (when a budget needed one) and ``target_keep`` describe the last binding.
    """

    config: ZeroingConfig

    def __init__(self, config: Any = None, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        self.groups: list[Any] = []
        self.cost: budget.CostModel | None = None
        self.target_keep: list[int] = []
        self.threshold: FilterThreshold | None = None
        self._model: nn.Module | None = None
        self._example: Any = None

    def threshold_options(self) -> dict[str, Any]:
        """Keyword options of this method's :class:`FilterThreshold`."""
        return {"norm": self.config.norm, "zero_shift": self.config.zero_shift}

    def bind(self, model: nn.Module, example_inputs: Any) -> FilterThreshold:
        """Find the filter groups of ``model``, solve ``k`` per group and build ``H_k`` for it."""
        self._example = example_inputs
        self.groups, self.cost, self.target_keep = budget.groups_and_keep(model, example_inputs, self.config,
                                                                          self.name)
        self.threshold = FilterThreshold(model, self.groups, self.target_keep, **self.threshold_options())
        self._model = model
        return self.threshold

    def selector(self, model: nn.Module, example_inputs: Any = None) -> FilterThreshold:
        """``H_k`` of ``model``: the bound one, or one built now (first use, or a new model object) from
        ``example_inputs`` or else the inputs remembered from the first batch."""
        if self.threshold is None or self._model is not model:
            example = example_inputs if example_inputs is not None else self._example
            if example is None:
                raise PrunekitError(f"{self.name}: no example inputs to analyse the model; in your own loop set "
                                    "LoopState(example_inputs=...) or call method.bind(model, example_inputs)")
            self.bind(model, example)
        assert self.threshold is not None
        return self.threshold

    def release(self) -> None:
        """Forget ``H_k`` (it is rebuilt for the next model object on first use)."""
        self.threshold, self._model = None, None

    def on_model_changed(self, trainer: TrainingLoop) -> None:
        self.release()

    def on_train_batch_start(self, trainer: TrainingLoop, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        if self._example is None and trainer.example_inputs is None:
            self._example = batch[0][:1].detach().clone()

    def remove_filters(self, model: nn.Module, example_inputs: Any, *, check: str | None = None) -> dict[str, Any]:
        """``H_k`` at the target ``k`` once more, with the dropped channels' shift zeroed so that removing them
        is exact; then remove them from ``model`` (in place). Returns what was kept and removed. With ``check``
        (called on every process), a distributed run first verifies that every process chose the same filters
        (``check`` names them in the error)."""
        h = self.selector(model, example_inputs)
        example = example_inputs if example_inputs is not None else self._example
        final = h if self.config.zero_shift else FilterThreshold(
            model, self.groups, self.target_keep, **{**self.threshold_options(), "zero_shift": True})
        final.set_keep(self.target_keep)
        mask = final()  # idempotent on a thresholded network; enforces H_k in a user's loop
        if check is not None:
            check_same(mask, check)
        groups = self.groups
        report: dict[str, Any] = {
            "keep": {g.name: int(k) for g, k in zip(groups, self.target_keep, strict=True)},
            "skipped": dict(getattr(groups, "skipped", {})),  # left dense at bind, with why
            "width": {g.name: int(g.size) for g in groups},
            "nonzero_filters": {g.name: nz for g, nz in zip(groups, h.nonzero_filters(), strict=True)}}
        if self.cost is not None:
            report["predicted_macs"] = self.cost.macs(self.target_keep)
            report["predicted_params"] = self.cost.params(self.target_keep)
        layers = [n for g in groups for n in g.layers]
        report["surgery"] = remove_zero_filters(model, example, layers=layers).summary()
        self.release()
        return report

    def deliver(self, model: nn.Module, example_inputs: Any, *, remove: bool, **extra: Any) -> FinalizeResult:
        """The compact network: its zero filters removed when ``remove``; the report holds ``extra``, what
        :meth:`remove_filters` returned, and the parameters and MACs before and after."""
        from prunekit import metrics

        report: dict[str, Any] = {"method": self.name, **extra}
        before = metrics.count(model, example_inputs)
        if remove:
            report.update(self.remove_filters(model, example_inputs))
        after = metrics.count(model, example_inputs)
        report.update({"params_before": before.params, "params_after": after.params,
                       "macs_before": before.macs, "macs_after": after.macs})
        return FinalizeResult(model, sparse=False, report=report)


__all__ = ["Comebacks", "FilterBudgetConfig", "FilterSelectionMethod", "ZeroingConfig"]
