"""Latency targets: ``{latency: 0.5}`` means half of the dense network's latency measured in a runtime, at a
batch size, with a number of threads.

How (NetAdapt, Yang et al. 2018; HALP, Shen et al. 2022): every convolution / linear layer gets a lookup
table of its latency against its (input, output) width, measured once on this machine in the target runtime
(:mod:`prunekit.metrics.runtime`) and cached on disk as JSON, keyed by the layer's shape, the runtime (and its
version), threads and batch. The network's predicted latency for given kept channels per group is the
dense network's measured latency minus the tables' dense sum plus the tables at the thinned widths (the rest:
additions, pooling, the runtime's per-call overhead, held constant). :class:`LatencyModel` offers this as a
cost for :func:`prunekit.methods.budget.solve_keep`, the solver every filter method uses. The solver's
widths (near one uniform ratio) are then moved, one allowed width step at a time, to where channels are cheap
in the runtime: :func:`more_macs` keeps the most MACs for the predicted latency (a layer whose channels cost
little there, e.g. a wide late-stage conv in NCHWc blocks, stays wider than its MACs share says).

A prediction is only a prediction: :func:`solve_latency` builds the thinned network (real channel removal),
measures it against the dense one (interleaved, medians) and, when the measured ratio misses the target by
more than the tolerance, rescales the solver's aim by target / measured and solves again (a few rounds; the
closest is kept). Widths snap to the runtime's preferred multiple (8 for ONNX Runtime's CPU NCHWc kernels)
unless ``round_to`` says otherwise; a target below what that multiple can reach (every group at 8 channels
still too slow) is searched again at half the multiple, and the report says so.

Use it with any filter method (SGHT, L1-filter, SFP, Torch-Pruning magnitude, random-filter)::

    with latency_target({"latency": 0.5, "runtime": "onnxruntime", "batch": 1, "threads": 1}) as report:
        experiment.run(cfg, ...)          # the method's keep counts now come from the latency target
    print(report["measured"], report["target"])
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from prunekit.errors import PrunekitError
from prunekit.metrics import runtime as _rt

PREFERRED_MULTIPLE = {"onnxruntime": 8, "eager": 1, "deployed": 1, "cuda": 8}

_GRID_STEP = 8  # table widths: multiples of 8 (and the full width)


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """Where latency tables live: ``path``, else ``$PRUNEKIT_CACHE/latency``, else ``~/.cache/prunekit/latency``."""
    if path is not None:
        return Path(path)
    root = os.environ.get("PRUNEKIT_CACHE")
    return Path(root) / "latency" if root else Path.home() / ".cache" / "prunekit" / "latency"


# ------------------------------------------------------------------------------------------- target
@dataclass(frozen=True)
class LatencyTarget:
    """``latency``: fraction of the dense network's measured latency; where it is measured; how closely."""

    latency: float
    runtime: str = "onnxruntime"
    batch: int = 1
    threads: int = 1
    round_to: int | None = None  # None: the runtime's preferred multiple (PREFERRED_MULTIPLE)
    tol: float = 0.05            # accept a measured ratio within tol * target
    corrections: int = 3         # re-solves after measuring the real network
    rounds: int = 15             # interleaved timing rounds per check
    clock: str = "auto"          # see prunekit.metrics.runtime (auto: a thread's CPU time for one CPU thread)
    min_keep: int = 1
    cache: str | None = None     # table directory (default: see cache_dir)

    @classmethod
    def parse(cls, spec: Mapping[str, Any] | LatencyTarget) -> LatencyTarget:
        """From ``{latency: 0.5, runtime: onnxruntime, batch: 1, threads: 1, ...}``, validated (one line per
        mistake)."""
        if isinstance(spec, LatencyTarget):
            return spec
        if not isinstance(spec, Mapping) or "latency" not in spec:
            raise PrunekitError(f"a latency target is a mapping with a 'latency' fraction, got {spec!r}")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(spec) - names)
        if unknown:
            raise PrunekitError(f"latency target: unknown key(s) {', '.join(unknown)}; valid keys: "
                                f"{', '.join(sorted(names))}")
        t = cls(**dict(spec))
        frac = t.latency
        if isinstance(frac, bool) or not isinstance(frac, int | float) or not 0 < frac <= 1:
            raise PrunekitError(f"latency target: latency must be a fraction in (0, 1], got {frac!r}")
        if t.clock not in _rt.CLOCKS:
            raise PrunekitError(f"latency target: clock must be one of {', '.join(_rt.CLOCKS)}, got {t.clock!r}")
        if t.runtime not in _rt.RUNTIMES:
            raise PrunekitError(f"latency target: unknown runtime {t.runtime!r}; choose from {', '.join(_rt.RUNTIMES)}")
        for name in ("batch", "threads", "rounds", "min_keep"):
            v = getattr(t, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise PrunekitError(f"latency target: {name} must be an integer >= 1, got {v!r}")
        if t.round_to is not None and (isinstance(t.round_to, bool) or not isinstance(t.round_to, int)
                                       or t.round_to < 1):
            raise PrunekitError(f"latency target: round_to must be an integer >= 1 or null, got {t.round_to!r}")
        if isinstance(t.corrections, bool) or not isinstance(t.corrections, int) or t.corrections < 0:
            raise PrunekitError(f"latency target: corrections must be an integer >= 0, got {t.corrections!r}")
        if isinstance(t.tol, bool) or not isinstance(t.tol, int | float) or not 0 < t.tol <= 0.5:
            raise PrunekitError(f"latency target: tol must be in (0, 0.5], got {t.tol!r}")
        return t

    @property
    def snap(self) -> int:
        return self.round_to if self.round_to is not None else PREFERRED_MULTIPLE.get(self.runtime, 1)


# ------------------------------------------------------------------------------------------- tables
@dataclass
class LayerTable:
    """Latency (ms, one forward at the batch) of one layer shape at each (input width, output width)."""

    key: dict[str, Any]
    ins: list[int]
    outs: list[int]
    ms: list[list[float]] = field(default_factory=list)

    def at(self, cin: np.ndarray, cout: np.ndarray) -> np.ndarray:
        """Bilinear interpolation on the grid."""
        gi, go, m = np.asarray(self.ins, float), np.asarray(self.outs, float), np.asarray(self.ms, float)
        return _bilinear(gi, go, m, np.asarray(cin, float), np.asarray(cout, float))


def _bilinear(gi: np.ndarray, go: np.ndarray, m: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    def axis(g: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        v = np.clip(v, g[0], g[-1])
        if len(g) == 1:
            z = np.zeros(v.shape, dtype=np.int64)
            return z, z, np.zeros(v.shape)
        hi = np.clip(np.searchsorted(g, v, side="left"), 1, len(g) - 1)
        lo = hi - 1
        return lo, hi, (v - g[lo]) / (g[hi] - g[lo])

    i0, i1, wi = axis(gi, x)
    o0, o1, wo = axis(go, y)
    return ((1 - wi) * (1 - wo) * m[i0, o0] + wi * (1 - wo) * m[i1, o0] + (1 - wi) * wo * m[i0, o1]
            + wi * wo * m[i1, o1])


_GRID_POINTS = 10  # at most this many widths per table axis (wider layers: coarser steps, interpolated)


def _grid(full: int, thin: bool, step: int = _GRID_STEP) -> list[int]:
    """Table widths: multiples of ``step`` below ``full`` (``step`` doubled until at most ``_GRID_POINTS``
    remain), ``full``, and 1 (the narrowest)."""
    if not thin:
        return [full]
    while step > 0 and full / step > _GRID_POINTS:
        step *= 2
    return sorted({1, *range(step, full, step), full})


def _versions(runtime: str) -> str:
    if runtime == "onnxruntime":
        return "ort-" + _rt.require_onnxruntime().__version__
    return "torch-" + torch.__version__.split("+")[0]


def _cell_module(spec: dict[str, Any], cin: int, cout: int, runtime: str) -> nn.Module:
    """The layer at one width, as the runtime runs it: conv + bias (+ BN in eager) + ReLU, or a linear."""
    if spec["op"] == "linear":
        return nn.Linear(cin, cout)
    conv = nn.Conv2d(cin, cout, spec["kernel"], stride=spec["stride"], padding=spec["padding"],
                     dilation=spec["dilation"], bias=runtime != "eager")
    parts: list[nn.Module] = [conv]
    if runtime == "eager":
        parts.append(nn.BatchNorm2d(cout))
    parts.append(nn.ReLU())
    return nn.Sequential(*parts).eval()


def layer_table(spec: dict[str, Any], runtime: str, *, batch: int, threads: int, thin_in: bool, thin_out: bool,
                directory: Path, rounds: int = 7, clock: str = "auto", step: int = _GRID_STEP) -> LayerTable:
    """The cached table of one layer shape, measured now if the cache has none."""
    clock = _rt.resolve_clock(clock, runtime, threads)
    key = {**spec, "v": 2, "runtime": runtime, "version": _versions(runtime), "threads": threads, "batch": batch,
           "clock": clock, "step": step,
           "thin_in": thin_in, "thin_out": thin_out, "machine": platform.machine(), "node": platform.node()}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    path = directory / f"{runtime}-b{batch}-t{threads}-{digest}.json"
    if path.is_file():
        try:
            data = json.loads(path.read_text())
            if data.get("key") == key:
                return LayerTable(data["key"], data["ins"], data["outs"], data["ms"])
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache file is measured again and rewritten
    ins = _grid(spec["in"], thin_in, step)
    outs = _grid(spec["out"], thin_out, step)
    cells: dict[tuple[int, int], _rt.Prepared] = {}
    # the runtime's cost of one call with (almost) nothing to do: a network pays it once, not per layer
    cells[(0, 0)] = _rt.prepare(nn.Sequential(nn.ReLU()), runtime, torch.randn(1, 1), threads=threads, clock=clock)
    for ci in ins:
        for co in outs:
            x = torch.randn((batch, ci, *spec["hw"])) if spec["op"] == "conv2d" else torch.randn(batch, ci)
            cells[(ci, co)] = _rt.prepare(_cell_module(spec, ci, co, runtime), runtime, x, threads=threads,
                                          clock=clock)
    for p in cells.values():
        p.time_ms(2)
    samples: dict[tuple[int, int], list[float]] = {k: [] for k in cells}
    for _ in range(rounds):  # interleaved, like every other measurement here
        for k, p in cells.items():
            samples[k].extend(p.time_ms(2))
    call = float(np.median(samples[(0, 0)]))
    ms = [[max(0.0, float(np.median(samples[(ci, co)])) - call) for co in outs] for ci in ins]
    table = LayerTable(key, ins, outs, ms)
    from prunekit.atomic import write_text

    directory.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(asdict(table)))
    return table


# ------------------------------------------------------------------------------------------- model
class LatencyModel:
    """Predicted latency (ms) as a function of the kept channels of every group; a cost for ``solve_keep``
    (``cost``, ``batch_cost``, ``dense``, ``sizes``, with ``kind="latency"``)."""

    def __init__(self, cost: Any, layers: list[tuple[int, LayerTable, int, int]], dense_ms: float) -> None:
        self.cost_model = cost
        self.sizes = cost.sizes
        self.layers = layers  # (term index in the cost model, table, full in width, full out width)
        self.dense_ms = float(dense_ms)
        self.rest_ms = 0.0
        self.rest_ms = self.dense_ms - self.predict_many(self.sizes[None, :])[0]

    @classmethod
    def build(cls, model: nn.Module, example: torch.Tensor, groups: Sequence[Any], target: LatencyTarget, *,
              dense_ms: float) -> LatencyModel:
        """Tables for every conv (ungrouped) / linear layer of ``model``, and the rest calibrated so that the
        dense prediction equals ``dense_ms`` (the measured latency)."""
        from prunekit.methods.budget import CostModel

        x1 = example[:1]
        cost = CostModel.build(model, x1, groups)
        hw: dict[str, tuple[int, int]] = {}
        mods = dict(model.named_modules())
        handles = [m.register_forward_hook(
            lambda mod, inp, out, n=n: hw.__setitem__(n, tuple(inp[0].shape[2:]))) for n, m in mods.items()
            if isinstance(m, nn.Conv2d)]
        try:
            with torch.no_grad():
                was = model.training
                model.eval()
                model(x1)
                model.train(was)
        finally:
            for h in handles:
                h.remove()
        directory = cache_dir(target.cache)
        layers = []
        spec: dict[str, Any]
        for i, t in enumerate(cost.terms):
            m = mods.get(t.name)
            thin_out, thin_in = bool(t.out_side[1]), bool(t.in_side[1])
            if isinstance(m, nn.Conv2d) and m.groups == 1 and t.name in hw:
                spec = {"op": "conv2d", "in": m.in_channels, "out": m.out_channels, "kernel": list(m.kernel_size),
                        "stride": list(m.stride), "padding": list(m.padding) if not isinstance(m.padding, str)
                        else m.padding, "dilation": list(m.dilation), "hw": list(hw[t.name])}
            elif isinstance(m, nn.Linear):
                spec = {"op": "linear", "in": m.in_features, "out": m.out_features}
            else:
                continue  # grouped / depthwise convs and other layers: part of the constant rest
            table = layer_table(spec, target.runtime, batch=target.batch, threads=target.threads,
                                thin_in=thin_in, thin_out=thin_out, directory=directory, clock=target.clock,
                                step=min(_GRID_STEP, max(4, target.snap)))
            layers.append((i, table, int(spec["in"]), int(spec["out"])))
        return cls(cost, layers, dense_ms)

    def predict_many(self, keeps: np.ndarray) -> np.ndarray:
        c = self.cost_model
        f = np.asarray(keeps, dtype=np.float64) / np.maximum(self.sizes, 1)
        fo = c._out_c[None, :] + f @ c._out_a.T
        fi = c._in_c[None, :] + f @ c._in_a.T
        total = np.full(f.shape[0], self.rest_ms)
        for i, table, cin, cout in self.layers:
            total += table.at(np.round(fi[:, i] * cin), np.round(fo[:, i] * cout))
        return total

    # -- the cost interface of prunekit.methods.budget.solve_keep --
    def cost(self, keep: Sequence[float] | np.ndarray, kind: str = "latency") -> float:
        return float(self.predict_many(np.asarray(keep, dtype=np.float64)[None, :])[0])

    def batch_cost(self, keeps: np.ndarray, kind: str = "latency") -> np.ndarray:
        return self.predict_many(keeps)

    def dense(self, kind: str = "latency") -> float:
        return self.dense_ms


# ------------------------------------------------------------------------------------------- solve + check
def thinned(model: nn.Module, example: torch.Tensor, groups: Sequence[Any], keep: Sequence[int]) -> nn.Module:
    """A copy of ``model`` with each group cut to its first ``keep[g]`` channels (real removal; which channels
    go does not change latency)."""
    from prunekit.surgery import remove_channels

    m = copy.deepcopy(model).eval()
    plan = {g.name: list(range(k, g.size)) for g, k in zip(groups, keep, strict=True) if k < g.size}
    if plan:
        remove_channels(m, plan, example[:1])
    return m


def check_rounds(target: LatencyTarget, dense_ms: float) -> int:
    """Timing rounds for a check: ``target.rounds``, more for fast networks (about 0.3 s of dense forwards
    per check, at most 200 rounds), since short timings are the noisiest."""
    return max(target.rounds, min(200, int(np.ceil(300.0 / (3 * max(dense_ms, 1e-3))))))


def measured_ratio(dense: nn.Module, thin: nn.Module, example: torch.Tensor, target: LatencyTarget,
                   rounds: int | None = None) -> tuple[float, float, float]:
    """``(thin ms, dense ms, thin / dense)`` in the target's runtime, interleaved medians."""
    rows = _rt.measure({"dense": dense, "thin": thin}, example[:1], runtimes=[target.runtime],
                       batches=[target.batch], threads=target.threads, rounds=rounds or target.rounds, repeats=3,
                       warmup=3,
                       clock=target.clock)
    ms = {r["model"]: r["median_ms"] for r in rows}
    return ms["thin"], ms["dense"], ms["thin"] / ms["dense"]


def solve_latency(model: nn.Module, example: torch.Tensor, groups: Sequence[Any],
                  target: LatencyTarget | Mapping[str, Any], *, report: dict[str, Any] | None = None) -> list[int]:
    """Keep counts per group whose measured latency is ``target.latency`` of the dense network's, checked by
    measuring the real thinned network and corrected when off (see the module docstring).

    When no network at the runtime's preferred multiple lands within the tolerance (a target near the floor
    of every group at that multiple) and the user set no ``round_to``, the search runs once more at half the
    multiple (ONNX Runtime: 4) and the closer result is kept; the report says which multiple was used
    (``round_to``) and that it fell back (``fallback_from``)."""
    t = LatencyTarget.parse(target)
    _rt.check_runtimes([t.runtime])
    device = "cuda" if t.runtime == "cuda" else "cpu"  # a training model may sit on another device
    dense = copy.deepcopy(model).to(device).eval()
    x1 = example[:1].detach().to(device)
    dense_ms = _rt.measure({"dense": dense}, x1, runtimes=[t.runtime], batches=[t.batch], threads=t.threads,
                           rounds=t.rounds, repeats=3, warmup=3, clock=t.clock)[0]["median_ms"]
    lm = LatencyModel.build(dense, x1, groups, t, dense_ms=dense_ms)
    snaps = [t.snap] + ([t.snap // 2] if t.round_to is None and t.snap >= 2 else [])
    best: tuple[float, list[int], dict[str, Any]] | None = None
    history: list[dict[str, Any]] = []
    for snap in snaps:
        found, tried = _search(dense, x1, groups, t, lm, snap, dense_ms)
        history += tried
        if best is None or found[0] < best[0]:
            best = found
        if best[0] <= t.tol:
            break
    assert best is not None
    used = int(best[2]["round_to"])
    if best[0] > 2 * t.tol:
        raise PrunekitError(f"latency target {t.latency} ({t.runtime}, batch {t.batch}, {t.threads} thread(s)): "
                            f"the closest measured network runs at {best[2]['measured']:.3f} of dense; "
                            f"raise the target or lower round_to (widths tried at multiples of "
                            f"{', '.join(str(n) for n in dict.fromkeys(h['round_to'] for h in history))})")
    where = f"latency target {t.latency} ({t.runtime}, batch {t.batch})"
    if best[0] > t.tol:
        warnings.warn(f"prunekit: {where}: the closest measured network runs at {best[2]['measured']:.3f} of "
                      f"dense ({100 * best[0]:.0f}% off, beyond the {100 * t.tol:.0f}% tolerance)", stacklevel=2)
    if used != t.snap:
        warnings.warn(f"prunekit: {where}: reached with widths at multiples of {used}, not the runtime's {t.snap} "
                      f"(every group at {t.snap} channels is still too slow)", stacklevel=2)
    if report is not None:
        report.update({"target": t.latency, "runtime": t.runtime, "batch": t.batch, "threads": t.threads,
                       "round_to": used, "measured": best[2]["measured"], "predicted": best[2]["predicted"],
                       "thin_ms": best[2]["thin_ms"], "dense_ms": best[2]["dense_ms"], "keep": best[1],
                       "within_tol": best[0] <= t.tol, "history": history})
        if used != t.snap:
            report["fallback_from"] = t.snap
    return best[1]


def _search(dense: nn.Module, x1: torch.Tensor, groups: Sequence[Any], t: LatencyTarget, lm: LatencyModel,
            snap: int, dense_ms: float) -> tuple[tuple[float, list[int], dict[str, Any]], list[dict[str, Any]]]:
    """Solve, thin, measure and re-aim with widths at multiples of ``snap``: ``((error, keep, entry), tried)``
    for the measured network closest to the target."""
    from prunekit.methods.budget import solve_keep

    aim = float(t.latency)
    best: tuple[float, list[int], dict[str, Any]] | None = None
    history: list[dict[str, Any]] = []
    seen: set[tuple[int, ...]] = set()
    floor = [g.size if g.size <= snap else min(g.size, max(snap, t.min_keep)) for g in groups]
    for step in range(t.corrections + 1):
        try:
            keep = solve_keep(lm, min(1.0, aim), "latency",  # type: ignore[arg-type]  # same interface
                              tol=min(0.01, t.tol / 2), min_keep=t.min_keep, round_to=snap)
        except PrunekitError:  # the aim is below the prediction at the narrowest widths: measure those
            keep = list(floor)
        keep = more_macs(lm, [int(k) for k in keep], snap=snap, floor=floor,
                         limit=max(lm.cost(keep), min(1.0, aim) * lm.dense_ms))
        if tuple(keep) in seen:  # the solver's steps are coarse: nothing new to measure
            break
        seen.add(tuple(keep))
        thin = thinned(dense, x1, groups, keep)
        thin_ms, ref_ms, ratio = measured_ratio(dense, thin, x1, t, check_rounds(t, dense_ms))
        entry = {"step": step, "aim": aim, "round_to": snap, "predicted": lm.cost(keep) / lm.dense_ms,
                 "measured": ratio, "thin_ms": thin_ms, "dense_ms": ref_ms, "keep": keep}
        history.append(entry)
        err = abs(ratio - t.latency) / t.latency
        if best is None or err < best[0]:
            best = (err, keep, entry)
        if err <= t.tol:
            break
        aim = _next_aim(history, t.latency)
    assert best is not None
    return best, history


def _widths(size: int, snap: int, floor: int) -> list[int]:
    """A group's allowed widths: multiples of ``snap`` from ``floor`` up, and the full width."""
    return sorted({size, *(w for w in range(snap, size, snap) if w >= floor)} | ({floor} if floor <= size else set()))


def more_macs(lm: LatencyModel, keep: Sequence[int], *, snap: int, floor: Sequence[int], limit: float,
              max_moves: int = 1000) -> list[int]:
    """``keep`` moved, one allowed width step at a time, to the widths that keep the most MACs while the
    predicted latency stays within ``limit`` (ms): a latency budget is spent where channels are cheap in the
    runtime (NetAdapt / HALP keep the most useful channels for the latency; with no trained importance at
    bind time, MACs kept is the proxy). Each round tries one step up on every group and every (up one
    group, down another) swap, and takes the feasible move that adds the most MACs; it stops when none adds
    any."""
    sizes = [int(s) for s in lm.sizes]
    ladders = [_widths(s, max(1, snap), int(f)) for s, f in zip(sizes, floor, strict=True)]
    cur = np.asarray(keep, dtype=np.int64)
    if any(int(k) not in lad for k, lad in zip(cur, ladders, strict=True)):
        return [int(k) for k in cur]  # widths off the ladder (a custom round_to): leave them as solved
    macs = float(lm.cost_model.batch_cost(cur[None, :], "macs")[0])
    n = len(cur)
    for _ in range(max_moves):
        pos = [lad.index(int(k)) for k, lad in zip(cur, ladders, strict=True)]
        up = [ladders[i][pos[i] + 1] if pos[i] + 1 < len(ladders[i]) else None for i in range(n)]
        down = [ladders[i][pos[i] - 1] if pos[i] > 0 else None for i in range(n)]
        cands = []
        for i in range(n):
            if up[i] is None:
                continue
            c = cur.copy()
            c[i] = up[i]
            cands.append(c)
            for j in range(n):
                if j != i and down[j] is not None:
                    c2 = c.copy()
                    c2[j] = down[j]
                    cands.append(c2)
        if not cands:
            break
        arr = np.stack(cands)
        ok = lm.predict_many(arr) <= limit
        gain = lm.cost_model.batch_cost(arr, "macs") - macs
        gain = np.where(ok, gain, -np.inf)
        j = int(np.argmax(gain))
        if not gain[j] > 1e-9 * max(macs, 1.0):
            break
        cur, macs = arr[j], macs + float(gain[j])
    return [int(k) for k in cur]


def _next_aim(history: list[dict[str, Any]], target: float) -> float:
    """The solver's next aim: interpolate between the closest measured points on either side of the target
    (aim -> measured is monotone), else rescale the last aim by target / measured."""
    below = [h for h in history if h["measured"] < target]
    above = [h for h in history if h["measured"] >= target]
    if below and above:
        lo = max(below, key=lambda h: h["measured"])
        hi = min(above, key=lambda h: h["measured"])
        if hi["measured"] > lo["measured"] and hi["aim"] != lo["aim"]:
            w = (target - lo["measured"]) / (hi["measured"] - lo["measured"])
            return lo["aim"] + w * (hi["aim"] - lo["aim"])
    last = history[-1]
    return last["aim"] * target / last["measured"]


@contextmanager
def latency_target(spec: Mapping[str, Any] | LatencyTarget) -> Iterator[dict[str, Any]]:
    """Within this block every filter method (through :func:`prunekit.methods.budget.groups_and_keep`) takes
    its keep counts from the latency target ``spec``; the yielded dict receives the check's figures
    (``target``, ``measured``, ``predicted``, ``keep``, ``history``) when a method binds."""
    from prunekit.methods.budget import keep_hook

    t = LatencyTarget.parse(spec)
    _rt.check_runtimes([t.runtime])
    report: dict[str, Any] = {}
    solved: dict[tuple[tuple[str, int], ...], list[int]] = {}

    def hook(model: nn.Module, example_inputs: Any, groups: Sequence[Any]) -> list[int]:
        x = example_inputs[0] if isinstance(example_inputs, tuple | list) else example_inputs
        if not isinstance(x, torch.Tensor):
            raise PrunekitError("a latency target needs a model with one input tensor")
        key = tuple((str(g.name), int(g.size)) for g in groups)
        if key not in solved:  # a method that binds again (e.g. after surgery) keeps the widths it was given
            solved[key] = solve_latency(model, x, groups, t, report=report)
        return list(solved[key])

    with keep_hook(hook):
        yield report


__all__ = [
    "PREFERRED_MULTIPLE",
    "LatencyModel",
    "LatencyTarget",
    "LayerTable",
    "cache_dir",
    "latency_target",
    "layer_table",
    "measured_ratio",
    "more_macs",
    "solve_latency",
    "thinned",
]
