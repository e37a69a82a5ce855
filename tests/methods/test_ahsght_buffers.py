"""AHSGHT's step writes its temporaries into scratch memory kept across steps (benchmarks/overhead.py: a fresh
tensor per parameter per step cost more than the arithmetic): the numbers are exactly those of the update
written out with fresh tensors, in any memory format, and the scratch is in no checkpoint."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.methods.optim import AHSGHT


def _reference_step(params: list[torch.Tensor], state: dict, *, lr: float, mu: float, wd: float, nu: float,
                    nesterov: bool) -> None:
    """The AHSG-HT update with fresh tensors (the module docstring's formula, torch SGD's direction)."""
    with torch.no_grad():
        for p in params:
            if p.grad is None:
                continue
            st = state.setdefault(p, {})
            d = p.grad.add(p, alpha=wd) if wd else p.grad
            if mu:
                if "buf" not in st:
                    st["buf"] = d.clone()
                else:
                    st["buf"].mul_(mu).add_(d)
                d = d.add(st["buf"], alpha=mu) if nesterov else st["buf"]
            if "prev" not in st:
                st["prev"] = p.clone()
                p.add_(d, alpha=-lr)
            else:
                heavy = p - st["prev"]
                st["prev"].copy_(p)
                p.add_(d, alpha=-lr).add_(heavy, alpha=nu)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3),
                         nn.Flatten(), nn.Linear(4 * 4 * 4, 3), nn.Linear(3, 3))  # the last gets no gradient


def test_the_step_equals_the_update_written_out_with_fresh_tensors_in_any_memory_format() -> None:
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])
    for hp in ({"mu": 0.9, "wd": 5e-4, "nu": 0.1, "nesterov": True},
               {"mu": 0.9, "wd": 0.0, "nu": 0.1, "nesterov": True},
               {"mu": 0.0, "wd": 0.0, "nu": 0.25, "nesterov": False},
               {"mu": 0.9, "wd": 1e-3, "nu": 0.1, "nesterov": False}):
        for fmt in (torch.contiguous_format, torch.channels_last):
            a = _net().to(memory_format=fmt)
            b = copy.deepcopy(a)
            opt = AHSGHT(a.parameters(), lr=0.05, momentum=hp["mu"], weight_decay=hp["wd"], nu=hp["nu"],
                         nesterov=hp["nesterov"])
            ref: dict = {}
            for _ in range(4):
                for m in (a, b):
                    F.cross_entropy(m[:6](x), y).backward()  # the last Linear is unused: no gradient
                opt.step()
                _reference_step(list(b.parameters()), ref, lr=0.05, **hp)
                opt.zero_grad()
                b.zero_grad()
            assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True)), (hp, fmt)
            state = opt.state_dict()["state"]
            assert all(set(s) <= {"momentum_buffer", "prev"} for s in state.values())  # no scratch saved
