"""Stages and learning-rate schedules (prunekit.engine.stages): constant, step (default milestones never at
epoch zero), cosine and one-cycle factors with warm-up, as pure functions of the position in the stage."""

from __future__ import annotations

import pytest

from prunekit.engine import lr_factor


def test_lr_schedules():
    assert lr_factor("constant", 3.5, 3, 10, None, 0.1) == 1.0
    assert lr_factor("step", 0.0, 0, 10, [3, 6], 0.1) == 1.0
    assert lr_factor("step", 3.0, 3, 10, [3, 6], 0.1) == pytest.approx(0.1)
    assert lr_factor("step", 9.9, 9, 10, [3, 6], 0.2) == pytest.approx(0.04)
    assert lr_factor("cosine", 0.0, 0, 10, None, 0.1) == pytest.approx(1.0)
    assert lr_factor("cosine", 5.0, 5, 10, None, 0.1) == pytest.approx(0.5)
    assert lr_factor("onecycle", 3.0, 3, 10, None, 0.1) == pytest.approx(1.0)
    assert lr_factor("step", 0.5, 0, 10, [5], 0.1, warmup=1.0) == pytest.approx(0.501)
    with pytest.raises(ValueError):
        lr_factor("nope", 0, 0, 1, None, 0.1)


def test_default_step_milestones_never_hit_epoch_zero():
    assert lr_factor("step", 0.5, 0, 1, None, 0.1) == 1.0
    assert lr_factor("step", 1.0, 1, 2, None, 0.1) == pytest.approx(0.1)  # milestones [1, 2]
    assert lr_factor("step", 5.0, 5, 10, None, 0.1) == pytest.approx(0.1)
