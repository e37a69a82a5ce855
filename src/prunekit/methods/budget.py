"""Filter budgets shared by the filter-pruning methods (SGHT, L1-filter, SFP, TP-magnitude).

Every method that keeps ``k`` filters per prunable layer gets its ``k`` from here, so that methods compared
"at matched MACs" really are matched:

* :func:`filter_groups` lists the prunable coupled groups (one layer, or every layer feeding one residual
  sum) from :func:`prunekit.surgery.channel_groups`; the classifier is never among them.
* :class:`CostModel` predicts MACs and parameters of the network after removing channels, as a function of
  the kept channel count of every group, using the same conventions as :func:`prunekit.metrics.count`
  (conv / linear / norm / pooling MACs per sample). One traced forward pass builds it; evaluating a
  candidate is a few NumPy operations, so the solver can try thousands.
* :func:`keep_from_ratio` turns a per-layer keep ratio into counts (the authors of SGHT use
  ``int(ratio * out_channels)``, i.e. floor; at least ``min_keep``).
* :func:`solve_keep` finds counts whose predicted cost is within ``tol`` (1%) of a budget given as a
  fraction of the dense model's MACs or parameters: bisection on one uniform keep ratio, then greedy +-1
  moves on single groups until the relative error is below ``tol / 2`` (or no move helps).
* :func:`resolve_keep` is what the methods call: ratio, per-layer overrides or a budget, validated.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from prunekit.errors import PrunekitError

KINDS = ("macs", "params", "latency")  # latency: a cost from prunekit.metrics.latency_model
_EXHAUSTIVE = 200_000  # solve_keep tries every combination when there are at most this many


# ------------------------------------------------------------------------------------------- groups
def _producers(model: nn.Module, group: Any) -> list[nn.Module]:
    mods = dict(model.named_modules())
    return [mods[n] for n in group.layers]


class Groups(list[Any]):
    """The groups a method uses (a list) and ``skipped``: ``{group: why it is left dense}``, for its report."""

    skipped: dict[str, str]


def filter_groups(model: nn.Module, example_inputs: Any, *, include_linear: bool = True,
                  coupled: bool = True) -> Groups:
    """The groups of output channels a filter-pruning method may thin, in module order.

    From the shared analysis (:mod:`prunekit.methods.analysis`; the classifier's group is never one). Left
    dense, each with its reason in ``.skipped``: groups made only of linear layers unless ``include_linear``;
    residual groups (several producing layers) unless ``coupled``; groups whose channels a grouped
    (non-depthwise) convolution splits into chunks, and groups where a producing layer's channels are not
    exactly the group's channels (both have no single filter per group channel to score); groups a
    LayerNorm / GroupNorm, or a module holding per-channel parameters (a GRN) computes over, when removing a
    channel from a copy is not masking it (thresholding them would report widths that are not delivered).
    """
    from prunekit.methods.analysis import analyse, foreign_params, removal_refusal

    an = analyse(model, example_inputs)

    def why_not(info: Any) -> str:
        g = info.group
        prods = _producers(model, g)
        if getattr(g, "chunks", 1) != 1:
            return f"a grouped convolution splits its channels into {g.chunks} chunks (no filter per channel)"
        if not include_linear and all(isinstance(p, nn.Linear) for p in prods):
            return "linear layers only (include_linear=False)"
        if not coupled and len(prods) > 1:
            return "a residual group (coupled=False)"
        if info.renormalising:
            return (f"{info.renormalising[0]!r} ({type(model.get_submodule(info.renormalising[0])).__name__}) "
                    "normalises over these channels: zeroing some changes the others, so they are not thresholded")
        for name, p in zip(g.layers, prods, strict=True):
            rows = p.out_features if isinstance(p, nn.Linear) else p.out_channels
            idx = g.index.get(name)
            if rows != g.size or idx is None or sorted(idx) != list(range(g.size)):
                return f"layer {name!r} does not map one-to-one onto the group's channels"
        if foreign_params(model, info):  # e.g. a GRN over the channels: is removal still masking?
            return removal_refusal(model, example_inputs, info)
        return ""

    usable, skipped = an.usable(why_not)
    out = Groups(info.group for info in usable)
    out.skipped = skipped
    return out


def whole_heads(groups: Sequence[Any], keep: Sequence[int]) -> list[int]:
    """Keep counts rounded down to whole attention heads (at least one head) in head-aware groups."""
    out = []
    for g, k in zip(groups, keep, strict=True):
        hd = int(getattr(g, "head_dim", 0) or 0)
        out.append(max(hd, (int(k) // hd) * hd) if hd else int(k))
    return out


def group_index(groups: Sequence[Any], name: str) -> int:
    """Position of the group named ``name`` (its root layer) or containing layer ``name``."""
    for i, g in enumerate(groups):
        if g.name == name:
            return i
    for i, g in enumerate(groups):
        if name in g.layers or name in getattr(g, "norms", ()):
            return i
    raise PrunekitError(f"no prunable filter group has a layer called {name!r}; prunable groups: "
                        f"{', '.join(g.name for g in groups) or 'none'}")


# ------------------------------------------------------------------------------------------- cost model
@dataclass
class _Term:
    """``macs`` / ``params`` of one layer at full width, times the kept fraction of its output side and of
    its input side. A side is ``(constant share, [(group, share), ...])``: fraction = const + sum share*f_g."""

    name: str
    macs: float
    params: float
    bias_params: float  # scale with the output side only
    out_side: tuple[float, tuple[tuple[int, float], ...]]
    in_side: tuple[float, tuple[tuple[int, float], ...]]


_FULL: tuple[float, tuple[tuple[int, float], ...]] = (1.0, ())


class CostModel:
    """MACs / parameters after thinning, as a function of the kept channels of each group.

    Built from one forward pass on ``example_inputs`` with hooks; MACs per sample follow
    :func:`prunekit.metrics.module_macs`. Pooling and other channel-preserving layers follow the group of
    the tensor they read (tracked through module outputs); a layer whose channels cannot be traced (its
    input came from a functional op) counts as constant, a small error the tests bound against
    :func:`prunekit.metrics.count` after real removal.
    """

    def __init__(self, terms: list[_Term], sizes: Sequence[int]) -> None:
        self.terms = terms
        self.sizes = np.asarray(sizes, dtype=np.float64)
        g = len(sizes)
        n = len(terms)
        # side fractions as affine maps of f (vector over groups): frac = c + A @ f
        self._out_c = np.array([t.out_side[0] for t in terms])
        self._in_c = np.array([t.in_side[0] for t in terms])
        self._out_a = np.zeros((n, g))
        self._in_a = np.zeros((n, g))
        for i, t in enumerate(terms):
            for gi, s in t.out_side[1]:
                self._out_a[i, gi] += s
            for gi, s in t.in_side[1]:
                self._in_a[i, gi] += s
        self._macs = np.array([t.macs for t in terms])
        self._params = np.array([t.params for t in terms])
        self._bias = np.array([t.bias_params for t in terms])
        full = np.asarray(sizes, dtype=np.float64)
        self.dense_macs = self.macs(full)
        self.dense_params = self.params(full)

    # -- evaluation -------------------------------------------------------------------------------
    def _fracs(self, keep: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        f = np.asarray(keep, dtype=np.float64) / np.maximum(self.sizes, 1)
        return self._out_c + self._out_a @ f, self._in_c + self._in_a @ f

    def macs(self, keep: Sequence[float] | np.ndarray) -> float:
        """Predicted MACs per sample with ``keep[g]`` channels kept in group ``g``."""
        fo, fi = self._fracs(keep)
        return float(np.sum(self._macs * fo * fi))

    def params(self, keep: Sequence[float] | np.ndarray) -> float:
        """Predicted parameter count with ``keep[g]`` channels kept in group ``g``."""
        fo, fi = self._fracs(keep)
        return float(np.sum(self._params * fo * fi + self._bias * fo))

    def cost(self, keep: Sequence[float] | np.ndarray, kind: str = "macs") -> float:
        return self.macs(keep) if kind == "macs" else self.params(keep)

    def dense(self, kind: str = "macs") -> float:
        return self.dense_macs if kind == "macs" else self.dense_params

    def batch_cost(self, keeps: np.ndarray, kind: str = "macs") -> np.ndarray:
        """Cost of many candidates at once (rows of ``keeps``)."""
        f = np.asarray(keeps, dtype=np.float64) / np.maximum(self.sizes, 1)
        fo = self._out_c[None, :] + f @ self._out_a.T
        fi = self._in_c[None, :] + f @ self._in_a.T
        if kind == "macs":
            return (self._macs[None, :] * fo * fi).sum(axis=1)
        return (self._params[None, :] * fo * fi + self._bias[None, :] * fo).sum(axis=1)

    # -- construction -----------------------------------------------------------------------------
    @classmethod
    def build(cls, model: nn.Module, example_inputs: Any, groups: Sequence[Any]) -> CostModel:
        """Trace ``model`` once and attribute every counted layer to the groups it depends on."""
        from prunekit.metrics.counting import batch_size_of, eval_mode, module_macs, prepare_inputs

        out_of: dict[str, list[tuple[int, float]]] = {}
        in_of: dict[str, list[int]] = {}
        depthwise: set[str] = set()
        for gi, g in enumerate(groups):
            for n in (*g.layers, *getattr(g, "norms", ())):
                out_of.setdefault(n, []).append((gi, 1.0))
            for n in getattr(g, "consumers", ()):
                in_of.setdefault(n, []).append(gi)
        modules = dict(model.named_modules())
        for n, m in modules.items():
            if (isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1 and m.groups == m.in_channels
                    and m.groups == m.out_channels):
                depthwise.add(n)

        args = prepare_inputs(model, example_inputs)
        bs = batch_size_of(args)
        side_of_tensor: dict[int, tuple[float, tuple[tuple[int, float], ...]]] = {}
        keep_alive: list[torch.Tensor] = []
        terms: list[_Term] = []
        seen_params: set[int] = set()

        def side_from(pairs: list[tuple[int, float]]) -> tuple[float, tuple[tuple[int, float], ...]]:
            if not pairs:
                return _FULL
            # a layer may appear in several groups (e.g. concat consumers): shares by group size
            tot = sum(groups[g].size for g, _ in pairs)
            return 0.0, tuple((g, groups[g].size / tot) for g, _ in pairs)

        def hook(name: str):
            def fn(mod: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
                out = output if isinstance(output, torch.Tensor) else None
                inp = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
                is_prod = isinstance(mod, nn.modules.conv._ConvNd | nn.Linear)
                if name in out_of:
                    o_side = side_from(out_of[name])
                elif is_prod:
                    o_side = _FULL
                elif inp is not None and out is not None and out.dim() == inp.dim() and out.dim() >= 2 \
                        and out.shape[1] == inp.shape[1] and id(inp) in side_of_tensor:
                    o_side = side_of_tensor[id(inp)]
                else:
                    o_side = _FULL
                if out is not None:
                    side_of_tensor[id(out)] = o_side
                    keep_alive.append(out)
                macs = module_macs(mod, inputs, output)
                own = [p for p in mod.parameters(recurse=False) if id(p) not in seen_params]
                for p in own:
                    seen_params.add(id(p))
                if isinstance(mod, nn.modules.conv._ConvNd | nn.Linear):  # is_prod, narrowed for the type checker
                    i_side = _FULL if name in depthwise else side_from([(g, 1.0) for g in in_of.get(name, [])])
                    bias = mod.bias
                    w = float(mod.weight.numel()) if mod.weight is not None else 0.0
                    b = float(bias.numel()) if bias is not None else 0.0
                    w = w if any(p is mod.weight for p in own) else 0.0
                    b = b if bias is not None and any(p is bias for p in own) else 0.0
                    other = sum(float(p.numel()) for p in own if p is not mod.weight and p is not bias)
                    terms.append(_Term(name, (macs or 0) / bs, w, b, o_side, i_side))
                    if other:
                        terms.append(_Term(name + ":other", 0.0, other, 0.0, _FULL, _FULL))
                else:
                    per_channel = sum(float(p.numel()) for p in own if p.dim() == 1 and out is not None
                                      and out.dim() >= 2 and p.numel() == out.shape[1])
                    rest = sum(float(p.numel()) for p in own) - per_channel
                    if macs or per_channel:
                        terms.append(_Term(name, (macs or 0) / bs, 0.0, per_channel, o_side, _FULL))
                    if rest:
                        terms.append(_Term(name + ":other", 0.0, rest, 0.0, _FULL, _FULL))
            return fn

        handles = [m.register_forward_hook(hook(n)) for n, m in modules.items() if not list(m.children())]
        try:
            with eval_mode(model), torch.no_grad():
                model(*args)
        finally:
            for h in handles:
                h.remove()
        # parameters of modules that never ran (or non-leaf modules' own parameters): constant
        rest = sum(float(p.numel()) for p in model.parameters() if id(p) not in seen_params)
        if rest:
            terms.append(_Term(":untraced", 0.0, rest, 0.0, _FULL, _FULL))
        return cls(terms, [g.size for g in groups])


# ------------------------------------------------------------------------------------------- keep counts
def _check_fraction(name: str, v: Any, *, closed_zero: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise PrunekitError(f"{name} must be a number in (0, 1], got {v!r}")
    if not (0.0 <= v <= 1.0) or (v == 0.0 and not closed_zero):
        raise PrunekitError(f"{name} must be in (0, 1], got {v!r}")
    return float(v)


def round_up(k: int, size: int, round_to: int) -> int:
    """``k`` channels rounded up to a multiple of ``round_to``, at most ``size`` (the full width): the one
    rounding of kept widths every method uses (``round_to`` 8 / 16 suits GPU kernels; 1 leaves ``k``)."""
    return min(size, math.ceil(k / round_to) * round_to) if round_to > 1 else min(k, size)


def keep_from_ratio(groups: Sequence[Any], ratio: float, overrides: Mapping[str, float] | None = None,
                    *, min_keep: int = 1, round_to: int = 1) -> list[int]:
    """``floor(ratio * size)`` channels per group (the SGHT authors' ``int(HTrate * out_channels)``), at least
    ``min_keep``; ``overrides`` maps a group (root or member layer name) to its own ratio."""
    ratio = _check_fraction("keep_ratio", ratio)
    per = [ratio] * len(groups)
    for name, r in (overrides or {}).items():
        per[group_index(groups, name)] = _check_fraction(f"layer_keep[{name!r}]", r)
    # the small epsilon keeps 0.7 * 10 = 7.000000000000001 and 0.29 * 100 = 28.999999999999996 exact
    keep = [min(g.size, max(min_keep, math.floor(r * g.size + 1e-9))) for g, r in zip(groups, per, strict=True)]
    return [round_up(k, g.size, round_to) for g, k in zip(groups, keep, strict=True)]


class _Rounded:
    """A cost model over "units" of ``round_to`` channels: unit count u keeps ``min(width, u * round_to)``, so
    the solver only proposes widths that are multiples of ``round_to`` (or the full width)."""

    def __init__(self, inner: CostModel, round_to: int) -> None:
        self.inner, self.r = inner, round_to
        self.width = inner.sizes.astype(np.int64)
        self.sizes = np.ceil(inner.sizes / round_to)

    def channels(self, units: Any) -> np.ndarray:
        return np.minimum(self.width, np.asarray(units, dtype=np.int64) * self.r)

    def cost(self, units: Any, kind: str = "macs") -> float:
        return self.inner.cost(self.channels(units), kind)

    def batch_cost(self, units: np.ndarray, kind: str = "macs") -> np.ndarray:
        return self.inner.batch_cost(self.channels(units), kind)

    def dense(self, kind: str = "macs") -> float:
        return self.inner.dense(kind)


def solve_keep(cost: CostModel, fraction: float, kind: str = "macs", *, tol: float = 0.01, min_keep: int = 1,
               frozen: Iterable[int] = (), max_moves: int = 10_000, round_to: int = 1) -> list[int]:
    """Per-group keep counts whose predicted ``kind`` is ``fraction`` of the dense model's, within ``tol``.

    ``round_to > 1`` keeps every thinned group's width a multiple of it (hardware-friendly widths; the full
    width stays allowed); the budget is then met as closely as those steps allow.

    Bisection on one uniform ratio (round-half-up per group), then greedy moves: each round tries +-1 on
    every free group and +1/-1 swaps between groups, and takes the move that brings the cost closest to the
    target. With few groups (at most 200,000 combinations) every combination is tried instead. Groups in
    ``frozen`` keep every channel. Raises if even ``min_keep`` everywhere cannot reach the budget.
    """
    if kind not in KINDS:
        raise PrunekitError(f"budget kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if round_to > 1:
        rounded = _Rounded(cost, round_to)
        try:
            units = solve_keep(rounded, fraction, kind, tol=tol,  # type: ignore[arg-type]
                               min_keep=math.ceil(min_keep / round_to), frozen=frozen, max_moves=max_moves)
        except PrunekitError as exc:
            raise PrunekitError(f"{exc} (with round_to={round_to} a thinned group keeps at least {round_to} "
                                "channels; lower round_to or raise the budget)") from None
        return [int(k) for k in rounded.channels(units)]
    fraction = _check_fraction(f"{kind}_budget", fraction)
    sizes = cost.sizes.astype(np.int64)
    n = len(sizes)
    frozen_mask = np.zeros(n, dtype=bool)
    for i in frozen:
        frozen_mask[i] = True
    lo_keep = np.where(frozen_mask, sizes, np.minimum(sizes, min_keep))
    target = fraction * cost.dense(kind)
    if n == 0 or (frozen_mask.all() and fraction < 1.0):
        if abs(cost.dense(kind) - target) <= tol * target:
            return sizes.tolist()
        raise PrunekitError(f"{kind}_budget {fraction}: the model has no prunable filter groups to thin")
    floor_cost = cost.cost(lo_keep, kind)
    if floor_cost > target * (1 + tol):
        raise PrunekitError(f"{kind}_budget {fraction} is below what the model can reach with {min_keep} "
                            f"channel(s) per group ({floor_cost / cost.dense(kind):.4f} of dense); raise it")

    def at(r: float) -> np.ndarray:
        k = np.floor(r * sizes + 0.5).astype(np.int64)  # surgery.keep_count's rule (half up), per group
        return np.where(frozen_mask, sizes, np.clip(k, lo_keep, sizes))

    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if cost.cost(at(mid), kind) > target:
            hi = mid
        else:
            lo = mid
    free_idx = np.nonzero(~frozen_mask)[0]
    combos = math.prod(int(sizes[i] - lo_keep[i] + 1) for i in free_idx)
    if combos <= _EXHAUSTIVE:
        # few coarse groups (LeNet-5: 20 x 50 channels): greedy moves get stuck, so try every combination
        # and take, among those within 0.9 tol, the one nearest the uniform ratio
        grids = np.meshgrid(*[np.arange(lo_keep[i], sizes[i] + 1) for i in free_idx], indexing="ij")
        cand = np.repeat(np.where(frozen_mask, sizes, 0)[None, :], grids[0].size, axis=0)
        for col, gr in zip(free_idx, grids, strict=True):
            cand[:, col] = gr.reshape(-1)
        rel = np.abs(cost.batch_cost(cand, kind) - target) / target
        dev = ((cand[:, free_idx] / sizes[free_idx] - 0.5 * (lo + hi)) ** 2).sum(axis=1)
        ok = rel <= 0.9 * tol
        j = int(np.argmin(np.where(ok, dev, np.inf))) if ok.any() else int(np.argmin(rel))
        return [int(k) for k in cand[j]]
    cands = [at(lo), at(hi)]
    keep = min(cands, key=lambda k: abs(cost.cost(k, kind) - target))
    err = abs(cost.cost(keep, kind) - target)
    eye = np.eye(n, dtype=np.int64)
    # single moves (+-1 on one group) and swaps (+1 on one, -1 on another): a network with few, coarse
    # groups (LeNet-5: 20 and 50 channels) needs the swaps to land within 1%
    steps = [eye, -eye]
    if n > 1:
        up, down = np.where(~np.eye(n, dtype=bool))
        swap = np.zeros((len(up), n), dtype=np.int64)
        swap[np.arange(len(up)), up] = 1
        swap[np.arange(len(up)), down] = -1
        steps.append(swap)
    deltas = np.concatenate(steps)
    deltas = deltas[~(deltas[:, frozen_mask] != 0).any(axis=1)]
    for _ in range(max_moves):
        if err <= 0.5 * tol * target:
            break
        moves = keep[None, :] + deltas
        ok = ((moves >= lo_keep[None, :]) & (moves <= sizes[None, :])).all(axis=1)
        if not ok.any():
            break
        costs = cost.batch_cost(moves[ok], kind)
        j = int(np.argmin(np.abs(costs - target)))
        new_err = abs(float(costs[j]) - target)
        if new_err >= err:
            break
        keep, err = moves[ok][j], new_err
    return [int(k) for k in keep]


def resolve_keep(groups: Sequence[Any], cost: CostModel | None, *, keep_ratio: float | None = None,
                 layer_keep: Mapping[str, float] | None = None, macs_budget: float | None = None,
                 params_budget: float | None = None, tol: float = 0.01, min_keep: int = 1,
                 frozen: Iterable[int] = (), round_to: int = 1) -> list[int]:
    """Keep counts from a budget (``macs_budget`` / ``params_budget``: fraction of dense) when one is given,
    else from ``keep_ratio`` with ``layer_keep`` overrides. Frozen groups keep every channel; ``round_to``
    keeps thinned widths multiples of it."""
    frozen = list(frozen)
    for kind, frac in (("macs", macs_budget), ("params", params_budget)):  # a MACs budget first
        if frac is None:
            continue
        if cost is None:
            raise PrunekitError("a MACs / params budget needs a cost model of the network")
        return solve_keep(cost, frac, kind, tol=tol, min_keep=min_keep, frozen=frozen, round_to=round_to)
    if keep_ratio is None:
        raise PrunekitError("give keep_ratio, macs_budget or params_budget")
    keep = keep_from_ratio(groups, keep_ratio, layer_keep, min_keep=min_keep, round_to=round_to)
    for i in frozen:
        keep[i] = groups[i].size
    return keep


# ------------------------------------------------------------------------------------------- cost hook
KeepHook = Callable[[nn.Module, Any, list[Any]], Sequence[int]]
_KEEP_HOOK: ContextVar[KeepHook | None] = ContextVar("prunekit_keep_hook", default=None)


@contextmanager
def keep_hook(hook: KeepHook) -> Iterator[None]:
    """Within this block :func:`groups_and_keep` takes keep counts from ``hook(model, example_inputs, groups)``
    instead of the method's ratio / budget: an outside cost (e.g. measured latency,
    :func:`prunekit.metrics.latency_model.latency_target`, which runs :func:`solve_keep` on its own cost)."""
    token = _KEEP_HOOK.set(hook)
    try:
        yield
    finally:
        _KEEP_HOOK.reset(token)


def _hooked_keep(hook: KeepHook, model: nn.Module, example_inputs: Any, groups: list[Any]) -> list[int]:
    keep = [int(k) for k in hook(model, example_inputs, groups)]
    if len(keep) != len(groups) or any(not 1 <= k <= g.size for k, g in zip(keep, groups, strict=False)):
        raise PrunekitError(f"keep hook: expected {len(groups)} keep counts within the group widths, got {keep}")
    return keep


def groups_and_keep(model: nn.Module, example_inputs: Any, config: Any, who: str
                    ) -> tuple[list[Any], CostModel | None, list[int]]:
    """The filter groups of ``model`` and the keep count of each, from a filter-budget method's ``config``
    (``include_linear``, ``coupled``, ``keep_ratio`` / ``layer_keep`` or ``macs_budget`` / ``params_budget``,
    ``budget_tol``, ``min_keep``, ``round_to``); also the cost model when a budget needed one."""
    c = config
    groups = filter_groups(model, example_inputs, include_linear=c.include_linear, coupled=c.coupled)
    if not groups:
        first = next(iter(groups.skipped.items()), None)
        why = f"; left dense: group {first[0]!r}: {first[1]}" if first else ""
        if len(groups.skipped) > 1:
            why += f" (+{len(groups.skipped) - 1} more)"
        raise PrunekitError(f"{who}: the model has no prunable filter groups (conv / hidden linear layers){why}")
    hook = _KEEP_HOOK.get()
    if hook is None and getattr(c, "latency", None) is not None:  # a config's {latency: 0.5, runtime: ...}
        from prunekit.metrics.latency_model import latency_target

        with latency_target(c.latency):
            return groups_and_keep(model, example_inputs, config, who)
    if hook is not None:
        return groups, None, whole_heads(groups, _hooked_keep(hook, model, example_inputs, groups))
    budgeted = c.macs_budget is not None or c.params_budget is not None
    cost = CostModel.build(model, example_inputs, groups) if budgeted else None
    keep = resolve_keep(groups, cost, keep_ratio=c.keep_ratio, layer_keep=c.layer_keep, macs_budget=c.macs_budget,
                        params_budget=c.params_budget, tol=c.budget_tol, min_keep=c.min_keep,
                        round_to=getattr(c, "round_to", 1))
    return groups, cost, whole_heads(groups, keep)


def validate_budget_options(method: str, keep_ratio: float | None, layer_keep: Any, macs_budget: float | None,
                            params_budget: float | None, tol: float) -> None:
    """Shared option checks of the filter-pruning methods (one clear line per mistake)."""
    if macs_budget is not None and params_budget is not None:
        raise PrunekitError(f"method {method!r}: give macs_budget or params_budget, not both")
    if macs_budget is not None:
        _check_fraction(f"method {method!r}: macs_budget", macs_budget)
    if params_budget is not None:
        _check_fraction(f"method {method!r}: params_budget", params_budget)
    if keep_ratio is not None:
        _check_fraction(f"method {method!r}: keep_ratio", keep_ratio)
    if not isinstance(layer_keep, Mapping):
        raise PrunekitError(f"method {method!r}: layer_keep must be a mapping layer -> keep ratio")
    for k, v in layer_keep.items():
        if not isinstance(k, str):
            raise PrunekitError(f"method {method!r}: layer_keep keys must be layer names, got {k!r}")
        _check_fraction(f"method {method!r}: layer_keep[{k!r}]", v)
    if isinstance(tol, bool) or not isinstance(tol, int | float) or not 0 < tol <= 0.5:
        raise PrunekitError(f"method {method!r}: budget_tol must be in (0, 0.5], got {tol!r}")


__all__ = ["CostModel", "filter_groups", "group_index", "keep_from_ratio", "keep_hook", "resolve_keep", "round_up",
           "solve_keep",
           "validate_budget_options"]
