"""The papers' optimizers in the ``torch.optim`` idiom: SSS's APG and SGHT's AHSG-HT gradient step.

APG: the modified stochastic Accelerated Proximal Gradient of Huang & Wang (2018).

SSS trains its scaling factors ``lambda`` with the objective ``loss(W, lambda) + gamma * ||lambda||_1``. The
L1 term is not smooth, so instead of a sub-gradient the factors take a proximal step (soft-thresholding,
which produces exact zeros), accelerated with Nesterov-style momentum. The paper (eq. 10-12) rewrites the
APG recursion so that it needs the gradient at the current point only (no second forward/backward), which is
the form of momentum SGD; the authors' MXNet optimizer (``APGNAG``) runs, per factor tensor and step::

    v      <- mu * v                                   # momentum buffer (starts at 0)
    z      <- lambda - eta * grad(lambda)              # eq. 10: gradient step at the current point
    z      <- sign(z) * max(|z| - eta * gamma, 0)      #         proximal step of gamma*||.||_1 (soft-threshold)
    v      <- z - lambda + v                           # eq. 11
    lambda <- z + mu * v                               # eq. 12
    lambda <- max(lambda, 0)                           # the code keeps factors non-negative

and :func:`apg_update` below is exactly that, line for line (``eta`` is the group's current learning rate,
so the threshold ``eta * gamma`` follows the learning-rate schedule as in the paper's code).

With ``gamma = 0`` (and ``nonnegative=False``) the prox is the identity and the update is Nesterov momentum
in Sutskever's velocity form, ``v <- mu*v - eta*g; lambda <- lambda - eta*g + mu*v``, which equals
``torch.optim.SGD(momentum=mu, nesterov=True)`` whenever the learning rate is constant (torch keeps the
buffer unscaled by the learning rate, so the two differ only across learning-rate changes).

Choices of ours (not in the paper): ``nonnegative`` is an option (default True, as the authors' code);
factors get no weight decay (as the paper), so the optimizer has none; by default each parameter group is
updated as one flattened vector (``flat=True``): the same element-wise arithmetic, a handful of kernels per
step instead of a handful per factor tensor, so the step costs no more than torch's momentum SGD on the
same tensors. The momentum buffers stay per parameter (``state[p]["momentum_buffer"]``), torch's idiom.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from prunekit.errors import PrunekitError


def soft_threshold(x: Tensor, threshold: float) -> Tensor:
    """``sign(x) * max(|x| - threshold, 0)``: the proximal operator of ``threshold * ||.||_1``.

    Computed as ``x - clamp(x, -t, t)``, which is the same number in floating point (rounding is symmetric)
    in two kernels instead of four.
    """
    return x - x.clamp(-threshold, threshold)


def apg_update(lam: Tensor, grad: Tensor, v: Tensor, *, lr: float, momentum: float, gamma: float,
               nonnegative: bool) -> None:
    """One APG step in place on ``lam`` (the factors, the paper's lambda) and ``v`` (momentum buffer).

    Call it under ``torch.no_grad()`` when ``lam`` is a parameter (:meth:`APG.step` does).
    """
    v.mul_(momentum)                                    # v <- mu v
    z = torch.add(lam, grad, alpha=-lr)                 # z <- lambda - eta * grad          (eq. 10)
    z = soft_threshold(z, lr * gamma)                   # z <- S_{eta*gamma}(z)             (eq. 10, prox)
    v.add_(z).sub_(lam)                                 # v <- z - lambda + v               (eq. 11)
    torch.add(z, v, alpha=momentum, out=lam)            # lambda <- z + mu v                (eq. 12)
    if nonnegative:
        lam.clamp_(min=0.0)                             # lambda <- max(lambda, 0)


class APG(torch.optim.Optimizer):
    """Accelerated proximal gradient for L1-penalised parameters (SSS's scaling factors).

    Args:
        params: tensors or parameter groups; each group may set its own ``gamma`` (one per structure type).
        lr: learning rate ``eta`` (the Trainer rescales it by the schedule, which also scales the threshold).
        momentum: ``mu`` in [0, 1).
        gamma: the L1 weight; the soft-threshold per step is ``lr * gamma``.
        nonnegative: clip factors at 0 after each step (the authors' code does).
        flat: update each group as one concatenated vector (same arithmetic, fewer kernels).
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]], lr: float = 0.1,
                 momentum: float = 0.9, gamma: float = 0.01, nonnegative: bool = True, flat: bool = True) -> None:
        _check_hparams(lr=lr, momentum=momentum, gamma=gamma)
        defaults = {"lr": lr, "momentum": momentum, "gamma": gamma, "nonnegative": nonnegative, "flat": flat}
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        _check_hparams(**{k: param_group[k] for k in ("lr", "momentum", "gamma") if k in param_group})
        super().add_param_group(param_group)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Tensor | None:  # type: ignore[override]
        """One APG step for every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params: list[Tensor] = []
            grads: list[Tensor] = []
            bufs: list[Tensor] = []
            sizes: list[int] = []
            one_d = same = True
            first: Tensor | None = None
            for p in group["params"]:
                g = p.grad
                if g is None:
                    continue
                if g.is_sparse:
                    raise PrunekitError("APG does not support sparse gradients")
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                if first is None:
                    first = p
                elif same and (p.device != first.device or p.dtype != first.dtype):
                    same = False
                params.append(p)
                grads.append(g)
                bufs.append(buf)
                sizes.append(p.numel())
                one_d = one_d and p.dim() == 1
            if not params:
                continue
            hp = {"lr": float(group["lr"]), "momentum": group["momentum"], "gamma": group["gamma"],
                  "nonnegative": group["nonnegative"]}
            if group["flat"] and len(params) > 1 and same:
                lam, g, v = _cat(params, one_d), _cat(grads, one_d), _cat(bufs, one_d)
                apg_update(lam, g, v, **hp)  # same arithmetic as per tensor, on the concatenation
                torch._foreach_copy_(params, _split(lam, sizes, params, one_d))
                torch._foreach_copy_(bufs, _split(v, sizes, bufs, one_d))
            else:
                for p, g, b in zip(params, grads, bufs, strict=True):
                    apg_update(p, g, b, **hp)
        return loss


def _cat(ts: list[Tensor], one_d: bool) -> Tensor:
    """One flat copy of ``ts`` (factor tensors are 1-D already: no reshape calls then)."""
    return torch.cat(ts if one_d else [t.reshape(-1) for t in ts])


def _split(flat: Tensor, sizes: list[int], like: list[Tensor], one_d: bool) -> tuple[Tensor, ...] | list[Tensor]:
    parts = torch.split_with_sizes(flat, sizes)
    return parts if one_d else [t.view_as(x) for t, x in zip(parts, like, strict=True)]


def _check_hparams(**hp: Any) -> None:
    for key, ok, want in (("lr", lambda x: x > 0, "a positive number"),
                          ("momentum", lambda x: 0 <= x < 1, "a number in [0, 1)"),
                          ("gamma", lambda x: x >= 0, "a number >= 0")):
        if key in hp:
            x = hp[key]
            if isinstance(x, bool) or not isinstance(x, int | float) or not ok(x):
                raise PrunekitError(f"APG: {key} must be {want}, got {x!r}")


class AHSGHT(torch.optim.Optimizer):
    """The gradient part of AHSG-HT: Nesterov momentum SGD with weight decay plus the heavy-ball term.

    ``w <- w - lr * d + nu * (w - w_prev)`` where ``d`` is torch's SGD direction (weight decay, momentum,
    dampening, Nesterov exactly as :class:`torch.optim.SGD`) and ``w_prev`` is the iterate before the
    previous step, kept in ``state["prev"]`` (after a hard threshold, that is the thresholded iterate).
    With ``nu=0`` this is exactly :class:`torch.optim.SGD`. ``threshold``, if given, is called at the end
    of :meth:`step` (``H_k``), for loops that want the whole AHSG-HT step in ``optimizer.step()``.
    """

    def __init__(self, params: Iterable[Any], lr: float = 0.1, momentum: float = 0.9, dampening: float = 0.0,
                 weight_decay: float = 5e-4, nesterov: bool = True, nu: float = 0.1,
                 threshold: Callable[[], Any] | None = None) -> None:
        if not (isinstance(lr, int | float) and lr >= 0):
            raise PrunekitError(f"AHSGHT: lr must be >= 0, got {lr!r}")
        if not (isinstance(momentum, int | float) and 0 <= momentum < 1):
            raise PrunekitError(f"AHSGHT: momentum must be in [0, 1), got {momentum!r}")
        if not (isinstance(weight_decay, int | float) and weight_decay >= 0):
            raise PrunekitError(f"AHSGHT: weight_decay must be >= 0, got {weight_decay!r}")
        if not (isinstance(nu, int | float) and 0 <= nu < 1):
            raise PrunekitError(f"AHSGHT: nu (heavy-ball weight) must be in [0, 1), got {nu!r}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise PrunekitError("AHSGHT: Nesterov momentum needs momentum > 0 and dampening 0")
        defaults = {"lr": lr, "momentum": momentum, "dampening": dampening, "weight_decay": weight_decay,
                    "nesterov": nesterov, "nu": nu}
        super().__init__(params, defaults)
        self.threshold = threshold
        self._buffers: dict[tuple[torch.device, torch.dtype], Tensor] = {}

    def _scratch(self, p: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """Two views shaped like ``p`` into scratch memory kept across steps, for the step's two temporaries
        (the direction and the heavy-ball term). The same arithmetic as into fresh tensors (``out=``), without
        allocating them every step: on a CPU a fresh tensor per parameter per step cost more than the
        arithmetic (page faults), so the whole AHSG-HT step now costs about a plain SGD step. (None, None)
        for a non-contiguous parameter (e.g. channels-last): fresh tensors in its layout, as before."""
        if not p.is_contiguous():
            return None, None
        key, n = (p.device, p.dtype), p.numel()
        buf = self._buffers.get(key)
        if buf is None or buf.shape[1] < n:
            buf = self._buffers[key] = torch.empty((2, n), device=p.device, dtype=p.dtype)
        return buf[0, :n].view_as(p), buf[1, :n].view_as(p)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, mu, damp = group["lr"], group["momentum"], group["dampening"]
            wd, nesterov, nu = group["weight_decay"], group["nesterov"], group["nu"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                s, h = self._scratch(p)  # where the step's temporaries go (None: fresh tensors)
                d = p.grad if wd == 0 else torch.add(p.grad, p, alpha=wd, out=s)  # g_t + lambda * w_t
                if mu != 0:
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = torch.clone(d).detach()
                    else:
                        buf.mul_(mu).add_(d, alpha=1 - damp)                # v_t = mu v_{t-1} + g
                    d = torch.add(d, buf, alpha=mu, out=s) if nesterov else buf  # Nesterov direction
                if nu == 0:
                    p.add_(d, alpha=-lr)
                    continue
                prev = state.get("prev")                                    # w_{t-1}
                if prev is None:                                            # first step: no history
                    state["prev"] = p.detach().clone()
                    p.add_(d, alpha=-lr)
                else:
                    heavy = torch.sub(p, prev, out=h)                       # w_t - w_{t-1}
                    prev.copy_(p)
                    p.add_(d, alpha=-lr).add_(heavy, alpha=nu)              # w_t - eta d + nu (w_t - w_{t-1})
        if self.threshold is not None:
            self.threshold()                                                # H_k
        return loss


__all__ = ["AHSGHT", "APG", "apg_update", "soft_threshold"]
