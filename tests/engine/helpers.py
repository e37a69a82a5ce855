"""Plain helpers shared by the engine tests: a callback with state, used by the resume and the own-loop tests."""

from __future__ import annotations

import torch

from prunekit.engine import Callback


class Counter(Callback):
    """A callback with state, to check it is restored on resume."""

    def __init__(self):
        self.n = 0
        self.buf = torch.zeros(3)

    def on_after_optimizer_step(self, t):
        self.n += 1
        self.buf += 1

    def state_dict(self):
        return {"n": self.n, "buf": self.buf.clone()}

    def load_state_dict(self, s):
        self.n, self.buf = s["n"], s["buf"].clone()
