"""The grid runner's verdicts on single rows (the whole grid runs in test_harness.py)."""

from __future__ import annotations

from prunekit.compare.runner import matched


def test_a_row_is_matched_within_its_targets_tolerance() -> None:
    macs = {"target_kind": "macs", "target": 0.5, "macs_frac": 0.52}
    assert matched(macs, 0.05) and not matched({**macs, "macs_frac": 0.55}, 0.05)
    lat = {"target_kind": "latency", "target": 0.5, "target_batch": 64, "latency_batch": 64,
           "latency_frac_batch": 0.54}
    assert not matched(lat, 0.05)  # 8% off the grid's 5%
    assert matched({**lat, "target_tol": 0.1}, 0.05)  # the latency target's own 10%
    assert not matched({**lat, "target_batch": 1}, 0.05)  # not timed at the target's batch: no claim
    assert not matched({"target_kind": "", "target": None}, 0.05)  # no target (dense, trimming)
