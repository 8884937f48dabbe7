"""Tensor-level comparison, as Polygraphy's compare does it: every output element of the
candidate against the baseline's, with an atol/rtol pass rule and error statistics.

An element passes when |candidate - baseline| <= atol + rtol * |baseline|. Per slice value:
the share of elements that pass, and the median, p99 and maximum absolute error. Computed only
when a suite configures one of these checks (the quantiles need every element of the slice).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runners import catalogue as cat
from runners.contracts import CheckResult, CheckSpec
from runners.families.classification.metrics import SliceIndex
from runners.verdict import above, below, decide



@dataclass
class TensorStats:
    n: int  # rows
    values: int  # output elements compared
    within: int  # elements inside atol + rtol * |baseline|
    median_abs: float
    p99_abs: float
    max_abs: float
    nonfinite: int = 0  # elements where either output is not finite


def _stats(abs_diff: np.ndarray, within: np.ndarray, rows: int) -> TensorStats:
    if not abs_diff.size:
        return TensorStats(rows, 0, 0, 0.0, 0.0, 0.0)
    nonfinite = int(abs_diff.size - np.count_nonzero(np.isfinite(abs_diff)))
    median, p99 = np.percentile(abs_diff, (50, 99))  # NaN where an element is NaN: breached below
    return TensorStats(rows, int(abs_diff.size), int(within.sum()), float(median), float(p99), float(abs_diff.max()),
                       nonfinite)


def tensor_stats(baseline: np.ndarray, candidate: np.ndarray, index: SliceIndex, atol: float,
                 rtol: float) -> dict[tuple[str, str], TensorStats]:
    """Class-major (values, rows) outputs compared element by element, per slice value."""
    b = baseline.astype(np.float32, copy=False)
    abs_diff = np.abs(candidate.astype(np.float32, copy=False) - b)
    within = abs_diff <= atol + rtol * np.abs(b)
    rows = b.shape[1]
    out = {("all", "all"): _stats(abs_diff, within, rows)}
    ends = index.offsets[1:] + [len(index.keys)]
    for codes, order, offset, end in zip(index.codes, index.orders, index.offsets, ends):
        bounds = np.searchsorted(codes[order], np.arange(end - offset + 1))
        for code in range(end - offset):
            members = order[bounds[code]:bounds[code + 1]]
            out[index.keys[offset + code]] = _stats(abs_diff[:, members], within[:, members], len(members))
    return out


cat.judge_for(cat.MIN_WITHIN_TOLERANCE)(lambda s: s.within / max(s.values, 1))
cat.judge_for(cat.MAX_MEDIAN_ABS_DIFF)(lambda s: s.median_abs)
cat.judge_for(cat.MAX_P99_ABS_DIFF)(lambda s: s.p99_abs)


def judge_tensor(check: CheckSpec, dimension: str, value: str, s: TensorStats, min_slice_size: int) -> CheckResult:
    """One tensor check on one slice: its registered judge reads the figure from the slice's TensorStats."""
    declared = cat.get(check.name)
    measured = cat.judge(check.name)(s)
    ideal = 0.0 if declared.upper else 1.0
    breached = above(measured, check.limit) if declared.upper else below(measured, check.limit)
    return CheckResult(check=check.name, dimension=dimension, value=value, n=s.n, baseline=ideal, candidate=measured,
                       delta=measured - ideal, tolerance=check.limit,
                       verdict=decide(s.n, min_slice_size, breached, s.nonfinite),
                       statistic={"elements": s.values, "within": s.within, "median_abs": s.median_abs,
                                  "p99_abs": s.p99_abs, "max_abs": s.max_abs, "nonfinite_elements": s.nonfinite})
