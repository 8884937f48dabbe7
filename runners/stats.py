"""Small, dependency-free test statistics for paired evaluations."""

from __future__ import annotations

import math
from statistics import NormalDist

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
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)
