"""Baseline: random filter (channel) pruning to the same budget, then fine-tuning.

The control every structured method must beat: which filters go is decided by a seeded random draw, not
by an importance score; how many go per layer is decided exactly as for :mod:`prunekit.methods.peers.l1_filter`
(``keep_ratio`` / ``layer_keep`` or a global ``macs_budget`` / ``params_budget``). Several papers (e.g.
Mittal et al. 2018, Liu et al. 2019) found random selection plus fine-tuning close to norm-based criteria;
a comparison without this row cannot show that a criterion matters.

Our choices: residual-coupled groups are pruned too (``coupled=True``), so the random row reaches the same
MACs as SGHT / SFP / Torch-Pruning's magnitude pruner; the draw is fixed by ``seed`` (one draw per group
channel, uniform), so reruns and every DDP rank choose the same filters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from prunekit.errors import PrunekitError
from prunekit.methods.peers.l1_filter import L1FilterConfig, OneShotFilterPruning


@dataclass
class RandomFilterConfig(L1FilterConfig):
    """L1-filter's budget and schedule options, plus the seed of the random draw."""

    coupled: bool = True
    seed: int = 0

    def validate(self) -> None:
        super().validate()
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise PrunekitError(f"method 'random-filter': seed must be an integer >= 0, got {self.seed!r}")


class RandomFilterPruning(OneShotFilterPruning):
    """Remove a seeded random choice of filters per group once, then fine-tune."""

    name = "random-filter"
    Config = RandomFilterConfig

    def channel_scores(self, h: Any) -> torch.Tensor:
        gen = torch.Generator().manual_seed(int(self.config.seed))
        return torch.rand(h.n_slots, generator=gen).to(h.device)


__all__ = ["RandomFilterConfig", "RandomFilterPruning"]
