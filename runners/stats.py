"""Test statistics for paired evaluations: p-values, score intervals, bootstrap, multiplicity."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
from scipy.special import ndtr

# Above this many discordant pairs the exact binomial sum is replaced by its normal approximation.
_EXACT_LIMIT = 2000


def mcnemar_p(baseline_only: int, candidate_only: int) -> float:
    """One-sided exact McNemar p-value that the candidate is worse than the baseline.

    `baseline_only`: rows the baseline gets right and the candidate wrong; `candidate_only`:
    the reverse. Under H0 (no difference) baseline_only ~ Binomial(n, 1/2) with n the
    discordant pairs; the p-value is P(X >= baseline_only).
    """
    n = baseline_only + candidate_only
    if n == 0:
        return 1.0
    if n > _EXACT_LIMIT:
        z = (baseline_only - n / 2 - 0.5) / math.sqrt(n / 4)
        return 1.0 - NormalDist().cdf(z)
    log_half_n = n * math.log(0.5)
    tail = sum(math.exp(math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) + log_half_n)
               for k in range(baseline_only, n + 1))
    return min(1.0, tail)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion."""
    if n == 0:
        return 0.0, 1.0
    low, high = wilson_bounds(np.array([successes]), np.array([n]), NormalDist().inv_cdf(0.5 + confidence / 2))
    return float(low[0]), float(high[0])


def wilson_bounds(successes: np.ndarray, n: np.ndarray, z: float) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score bounds at the normal quantile `z`, for arrays of counts (n = 0 reads as one row)."""
    n = np.maximum(np.asarray(n, dtype=np.float64), 1)
    p = np.asarray(successes, dtype=np.float64) / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return np.maximum(0.0, centre - half), np.minimum(1.0, centre + half)


# -- confidence bounds that decide (vectorised: the soundness benchmark calls them on 10^5 slices) ------------
def z_of(confidence: float) -> float:
    """The one-sided normal quantile: P(Z <= z) = confidence."""
    return NormalDist().inv_cdf(confidence)


def paired_score_z(b: np.ndarray, c: np.ndarray, n: np.ndarray, delta: np.ndarray | float) -> np.ndarray:
    """Tango's score statistic for H0: p(b) - p(c) = delta, paired rows.

    `b`: rows where the baseline is right and the candidate wrong (or, generally, the first
    model has the event and the second not), `c` the reverse, `n` all rows. Large values say the
    difference exceeds `delta`. The variance comes from the cell probabilities restricted to
    the null (their maximum-likelihood values under `delta`), which keeps the statistic sound
    when there are few or no discordant rows.
    """
    b, c, n = (np.asarray(x, dtype=np.float64) for x in (b, c, n))
    with np.errstate(invalid="ignore", divide="ignore"):
        return _score(b, c, n, np.asarray(delta, dtype=np.float64))


def _restricted_q(b: np.ndarray, c: np.ndarray, n: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """The maximum-likelihood probability of a `c` row under the null difference `delta` (Tango)."""
    w = delta * (2 * n - b + c) - (b + c)
    return (np.sqrt(np.maximum(w * w + 8 * n * c * delta * (1 - delta), 0.0)) - w) / np.maximum(4 * n, 1e-300)


def _score(b: np.ndarray, c: np.ndarray, n: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """paired_score_z on float arrays, without conversions (the bisection calls it 40 times)."""
    q = _restricted_q(b, c, n, delta)
    variance = n * (2 * q + delta * (1 - delta))
    numerator = b - c - n * delta
    z = numerator / np.sqrt(variance)
    degenerate = ~(variance > 0)
    if degenerate.any():  # no spread under the null: the sign of the numerator decides
        z[degenerate] = np.sign(numerator[degenerate]) * np.inf
        z[degenerate & (numerator == 0)] = 0.0
    return z


def paired_null_sd(b: np.ndarray, c: np.ndarray, n: np.ndarray, delta: np.ndarray | float) -> np.ndarray:
    """Per-row standard deviation of the paired difference at `delta` (Tango's restricted estimate)."""
    b, c, n = (np.asarray(x, dtype=np.float64) for x in (b, c, n))
    delta = np.asarray(delta, dtype=np.float64)
    q = _restricted_q(b, c, n, delta)
    return np.sqrt(np.maximum(2 * q + delta * (1 - delta), 0.0))


def paired_bounds(b: np.ndarray, c: np.ndarray, n: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """One-sided lower and upper confidence bounds for p(b) - p(c), each at `confidence` (Tango's
    score interval, found by bisection on the statistic, which decreases in delta; both bounds of
    every test in one vectorised pass)."""
    z = z_of(confidence)
    b, c, n = (np.atleast_1d(np.asarray(x, dtype=np.float64)) for x in (b, c, n))
    bb, cc, nn = (np.concatenate([x, x]) for x in (b, c, n))
    target = np.concatenate([np.full(b.shape, z), np.full(b.shape, -z)])  # lower bound at z, upper at -z
    lo, hi = np.full(bb.shape, -1.0), np.full(bb.shape, 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        for _ in range(40):  # 2^-40: far below any tolerance
            mid = (lo + hi) / 2
            above_target = _score(bb, cc, nn, mid) > target
            lo, hi = np.where(above_target, mid, lo), np.where(above_target, hi, mid)
    bounds = (lo + hi) / 2
    return bounds[:len(b)], bounds[len(b):]


def proportion_score_z(x: np.ndarray, n: np.ndarray, p0: float) -> np.ndarray:
    """Score statistic for H0: proportion = p0; large values say it is above p0."""
    x, n = np.asarray(x, dtype=np.float64), np.asarray(n, dtype=np.float64)
    numerator = x - n * p0
    variance = n * p0 * (1 - p0)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = numerator / np.sqrt(variance)
    return np.where(variance > 0, z, np.where(numerator > 0, np.inf, np.where(numerator < 0, -np.inf, 0.0)))


def upper_p(z: np.ndarray) -> np.ndarray:
    """P(Z >= z) under the null: evidence that the quantity is above the tested value."""
    return ndtr(-np.asarray(z, dtype=np.float64))


def lower_p(z: np.ndarray) -> np.ndarray:
    """P(Z <= z) under the null: evidence that the quantity is below the tested value."""
    return ndtr(np.asarray(z, dtype=np.float64))


def bootstrap_ratios(numerator: np.ndarray, denominator: np.ndarray, resamples: int, seed: int,
                     chunk_values: int = 1 << 21) -> np.ndarray:
    """`resamples` bootstrap replicates of sum(numerator) / sum(denominator) over rows drawn with
    replacement (a mean when the denominator is all ones). Seeded, so a result is reproducible
    on every machine; drawn in chunks so memory stays bounded for 10^6 rows."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    rows = len(numerator)
    rng = np.random.default_rng(seed)
    out = np.empty(resamples)
    step = max(1, chunk_values // max(rows, 1))
    for start in range(0, resamples, step):
        picks = rng.integers(0, rows, size=(min(step, resamples - start), rows))
        with np.errstate(invalid="ignore", divide="ignore"):
            out[start:start + len(picks)] = numerator[picks].sum(axis=1) / denominator[picks].sum(axis=1)
    return out


def holm(p: np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values along the last axis: control the family-wise error rate."""
    p = np.asarray(p, dtype=np.float64)
    m = p.shape[-1] if p.ndim else 0
    if not m:
        return p
    order = np.argsort(p, axis=-1, kind="stable")
    ranked = np.take_along_axis(p, order, axis=-1) * (m - np.arange(m))
    adjusted = np.minimum(1.0, np.maximum.accumulate(ranked, axis=-1))
    out = np.empty_like(p)
    np.put_along_axis(out, order, adjusted, axis=-1)
    return out


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values along the last axis: control the false discovery rate."""
    p = np.asarray(p, dtype=np.float64)
    m = p.shape[-1] if p.ndim else 0
    if not m:
        return p
    order = np.argsort(p, axis=-1, kind="stable")
    scaled = np.take_along_axis(p, order, axis=-1) * m / np.arange(1, m + 1)
    adjusted = np.minimum(1.0, np.flip(np.minimum.accumulate(np.flip(scaled, -1), axis=-1), -1))
    out = np.empty_like(p)
    np.put_along_axis(out, order, adjusted, axis=-1)
    return out
