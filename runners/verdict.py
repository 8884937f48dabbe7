"""The verdict rule every check family shares.

A check compares one measured figure with its tolerance in the direction the check names: it
is breached above the limit (`above`) or below it (`below`), with a little slack so that a
figure equal to its tolerance passes. A figure that is not finite is always breached, and a
slice where either model produced a non-finite output fails whatever its size: non-finite
numbers never pass. Otherwise a slice smaller than `min_slice_size` is insufficient.
"""

from __future__ import annotations

import math

from runners.contracts import FAIL, INSUFFICIENT, PASS

# Slack for float round-off, so that a value equal to its tolerance passes.
EPS = 1e-12


def above(measured: float, limit: float) -> bool:
    """Breached when `measured` exceeds `limit` (or is not a finite number)."""
    return not math.isfinite(measured) or measured > limit + EPS


def below(measured: float, limit: float) -> bool:
    """Breached when `measured` falls short of `limit` (or is not a finite number)."""
    return not math.isfinite(measured) or measured < limit - EPS


def decide(n: int, min_slice_size: int, breached: bool, nonfinite: int = 0) -> str:
    """pass / fail / insufficient for one check on one slice of `n` rows."""
    if nonfinite:
        return FAIL
    if n < min_slice_size:
        return INSUFFICIENT
    return FAIL if breached else PASS
