"""Timing sides of a benchmark against each other on a noisy machine."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np


def time_sides(sides: dict[str, Callable[[], object]], repeats: int, warmup: bool = True) -> dict[str, list[float]]:
    """Seconds per run of every side: one warm-up each (unless the caller warmed them up more
    cheaply itself), then `repeats` rounds in which every side runs once, back to back, in
    alternating order (the side that runs second after a burst is measurably penalised, so each
    side goes first in half of the rounds)."""
    for run in sides.values() if warmup else ():
        run()
    times: dict[str, list[float]] = {side: [] for side in sides}
    order = list(sides)
    for _ in range(repeats):
        order.reverse()
        for side in order:
            started = time.perf_counter()
            sides[side]()
            times[side].append(time.perf_counter() - started)
    return times


def paired_ratio(times: dict[str, list[float]], numerator: str, denominator: str) -> float:
    """Median over rounds of numerator / denominator within the round."""
    return float(np.median(np.array(times[numerator]) / np.array(times[denominator])))
