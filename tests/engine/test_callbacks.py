"""Callbacks (prunekit.engine.callbacks): a callback driven from a user's own training loop through LoopState,
without the Trainer."""

from __future__ import annotations

import torch
from torch import nn

from prunekit import data
from prunekit.engine import LoopState
from tests.engine.helpers import Counter
from tests.helpers import synthetic, tiny_lenet


def test_callback_works_in_a_users_own_loop():
    train, _ = synthetic(192, 64)
    model = tiny_lenet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    state = LoopState(model, [opt])
    cb = Counter()
    for x, y in data.iterate(train, 32, shuffle=True, seed=0, epoch=0):
        nn.functional.cross_entropy(state.model(x), y).backward()
        opt.step()
        opt.zero_grad()
        cb.on_after_optimizer_step(state)
        state.step += 1
    assert cb.n == state.step == len(train) // 32
