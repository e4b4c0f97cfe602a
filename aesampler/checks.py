"""Checks of plain values given to the API: integers, finite numbers, data splits.

One owner for what "a positive integer" means (``True`` is not one, ``2.0`` is not one) and for
the words a message uses, so the chain, the samplers, the evaluation and the bench agree. Each
check returns the value it accepted and raises ``error`` (default :class:`ValueError`; the
caller's own error class where it has one) with a message naming the argument and the value.

A leaf module: it imports no other part of aesampler.
"""

from __future__ import annotations

import math
from typing import Any

#: The data splits a dataset provides and samplers are fitted on.
SPLITS: tuple[str, ...] = ("train", "valid", "test")


def is_int(value: Any, types: tuple[type, ...] = (int,)) -> bool:
    """Whether ``value`` is an integer of ``types`` (a bool never is)."""
    return isinstance(value, types) and not isinstance(value, bool)


def int_words(low: int, *, bound: bool = False) -> str:
    """How a message says "an integer >= low": ``"a positive integer"`` for low 1 and
    ``"a non-negative integer"`` for low 0, or with ``bound`` always ``"an integer >= low"``."""
    if not bound and low in (0, 1):
        return "a positive integer" if low == 1 else "a non-negative integer"
    return f"an integer >= {low}"


def check_int(
    name: str,
    value: Any,
    low: int = 1,
    *,
    error: type[Exception] = ValueError,
    bound: bool = False,
    types: tuple[type, ...] = (int,),
    allow_none: bool = False,
) -> int | None:
    """``value`` if it is an integer >= ``low`` (or None when allowed), else ``error`` (in the
    words of :func:`int_words`)."""
    if value is None and allow_none:
        return None
    if not is_int(value, types) or value < low:
        raise error(f"{name} must be {int_words(low, bound=bound)}, got {value!r}")
    return value


def check_number(
    name: str,
    value: Any,
    low: float = 0.0,
    high: float = math.inf,
    *,
    open_low: bool = False,
    error: type[Exception] = ValueError,
) -> float:
    """``value`` as a float if it is finite and in [low, high] ((low, high] with ``open_low``)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < low or value > high or (open_low and value == low):
        if high == math.inf and low == 0:
            wanted = "a positive number" if open_low else "a non-negative number"
        else:
            wanted = f"a number in {'(' if open_low else '['}{low:g}, {high:g}]"
        raise error(f"{name} must be {wanted}, got {value!r}")
    return float(value)


def check_split(name: str, value: Any, *, error: type[Exception] = ValueError) -> str:
    """``value`` if it names a data split (:data:`SPLITS`), else ``error``."""
    if value not in SPLITS:
        raise error(f"{name} must be 'train', 'valid' or 'test', got {value!r}")
    return value
