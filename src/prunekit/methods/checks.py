"""One-line checks of method options shared by several methods' ``Config.validate`` (each raises
:class:`~prunekit.errors.PrunekitError` naming the option)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from prunekit.errors import PrunekitError


def check_keep(value: Any, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise PrunekitError(f"{what} must be a fraction in (0, 1], got {value!r}")


def check_epochs(value: Any, what: str, minimum: int = 0, optional: bool = True) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise PrunekitError(f"{what} must be an integer >= {minimum}, got {value!r}")


def check_phase_lrs(cfg: Any, keys: tuple[str, ...]) -> None:
    for key in keys:
        check_lr(getattr(cfg, key), key)
    if not cfg.reset_momentum and any(getattr(cfg, k) is not None for k in keys):
        raise PrunekitError(f"{'/'.join(keys)} need reset_momentum: true (a phase's learning rate takes effect "
                            "when the engine rebuilds the optimizer at the phase start)")


def check_lr(value: Any, what: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not (value > 0 and math.isfinite(value)):
        raise PrunekitError(f"{what} must be a positive number or null, got {value!r}")


def is_int(v: Any, minimum: int) -> bool:
    """An int (not a bool) >= ``minimum``."""
    return isinstance(v, int) and not isinstance(v, bool) and v >= minimum


def is_num(v: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def is_bool(v: Any) -> bool:
    """True or False (not 0 / 1)."""
    return isinstance(v, bool)


Rule = tuple[Callable[[Any], bool], str]


def int_at_least(lo: int) -> Rule:
    """Rule: an integer >= ``lo``."""
    return (lambda v: is_int(v, lo)), f"an integer >= {lo}"


def one_of(choices: Sequence[str]) -> Rule:
    """Rule: one of ``choices``."""
    return (lambda v: v in choices), f"one of {', '.join(choices)}"


BOOL: Rule = (is_bool, "true or false")


def unit_interval(lo_open: bool = False, hi_open: bool = False) -> Rule:
    """Rule: a number in [0, 1], with either end open (``(0, 1]``, ``[0, 1)``, ...) as asked."""
    def ok(v: Any) -> bool:
        return is_num(v) and (v > 0 if lo_open else v >= 0) and (v < 1 if hi_open else v <= 1)

    return ok, f"a number in {'(' if lo_open else '['}0, 1{')' if hi_open else ']'}"


def optional(rule: Rule) -> Rule:
    """Rule: null, or what ``rule`` accepts."""
    ok, want = rule
    return (lambda v: v is None or ok(v)), f"{want} or null"


def check_options(method: str, cfg: Any, rules: Mapping[str, Rule]) -> None:
    """Check every option named in ``rules`` (``{option: (predicate, what it must be)}``); the first that
    fails is one line: ``method 'x': option must be <what>, got <value>``."""
    for key, (ok, want) in rules.items():
        v = getattr(cfg, key)
        if not ok(v):
            raise PrunekitError(f"method {method!r}: {key} must be {want}, got {v!r}")


__all__ = ["BOOL", "Rule", "check_epochs", "check_keep", "check_lr", "check_options", "check_phase_lrs",
           "int_at_least", "is_bool", "is_int", "is_num", "one_of", "optional", "unit_interval"]
