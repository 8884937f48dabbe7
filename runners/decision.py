"""Verdicts that know their noise: confidence bounds decide, under a policy fixed in advance.

Every check whose figure has a sampling distribution gets evidence beside its point value:
one-sided confidence bounds at the suite's confidence, and two p-values against its tolerance,
`p_beyond` (small: the data show the change is beyond tolerance) and `p_within` (small: the data
show it is within). Paired accuracy-type differences use Tango's score statistic, single rates
(agreement, accuracy) the score test for one proportion, magnitudes (KL, |diff|, cosine,
per-token rates of generated text) a seeded bootstrap over rows or prompts.

The suite's policy then decides each (check, slice):
- `point`: the point value against the tolerance, as always (the evidence is reported only);
- `release`: pass only what is shown within tolerance, fail what is shown beyond it, and call
  the rest inconclusive, which keeps serving on the baseline (non-inferiority);
- `alert`: the same three outcomes, but an inconclusive result does not block serving: only
  what is shown beyond tolerance raises the alarm.
"Shown beyond" is judged on p-values adjusted across every check x slice (x batch size) of the
run (Holm, or Benjamini-Hochberg for drift reporting); "shown within" needs each test on its own,
because a pass needs every one of them (an intersection-union test keeps its level unadjusted).
Checks on a maximum or a quantile have no such bound and are decided on their point value.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from runners import catalogue
from runners.contracts import FAIL, INCONCLUSIVE, INSUFFICIENT, PASS, CheckResult, SuiteSpec
from runners.stats import (benjamini_hochberg, bootstrap_ratios, holm, lower_p, paired_bounds, paired_null_sd,
                           paired_score_z, proportion_score_z, upper_p, wilson_bounds, z_of)

POLICIES = ("point", "release", "alert")
CORRECTIONS = ("holm", "bh", "none")
# The power at which the detectable effect of a slice is stated.
POWER = 0.8


@dataclass(frozen=True)
class Policy:
    """How a suite turns evidence into verdicts; part of the job key, fixed before the run."""

    name: str = "point"
    correction: str = "holm"
    resamples: int = 1000  # bootstrap replicates for magnitudes
    confidence: float = 0.95

    @classmethod
    def of(cls, suite: SuiteSpec) -> "Policy":
        settings = suite.decision or {}
        return cls(name=settings.get("policy", "point"), correction=settings.get("correction", "holm"),
                   resamples=int(settings.get("resamples", 1000)), confidence=suite.confidence)

    @property
    def alpha(self) -> float:
        return 1.0 - self.confidence

    @property
    def inconclusive_blocks(self) -> bool:
        return self.name == "release"


def _summaries(estimate: np.ndarray, limit: np.ndarray, low: np.ndarray, high: np.ndarray, p_beyond: np.ndarray,
               p_within: np.ndarray, row_sd: np.ndarray, null_sd: np.ndarray, n: np.ndarray, confidence: float,
               method: str, direction: str) -> list[dict[str, Any]]:
    """The evidence fields every method reports, in the units of the check's tolerance, one dict per test."""
    margin = (z_of(confidence) + z_of(POWER)) * null_sd / np.sqrt(np.maximum(n, 1))
    sign = 1.0 if direction == "above" else -1.0
    columns = {"estimate": estimate, "bound_low": low, "bound_high": high, "p_beyond": p_beyond,
               "p_within": p_within, "row_sd": row_sd, "null_sd": null_sd,
               # the smallest true change this slice shows beyond tolerance, and the largest it shows
               # within, each with POWER probability at that size
               "detectable_beyond": limit + sign * margin, "detectable_within": limit - sign * margin}
    rows = [dict(zip(columns, values)) for values in zip(*(np.broadcast_to(v, np.shape(n)).tolist()
                                                            for v in columns.values()))]
    for row in rows:
        row.update(method=method, direction=direction, confidence=confidence)
    return rows


def paired_evidence(b: np.ndarray, c: np.ndarray, n: np.ndarray, limit: np.ndarray, confidence: float,
                    two_sided: bool = False) -> list[dict[str, Any]]:
    """Evidence on (b - c) / n, a difference of two paired rates, against `limit` (judged above it;
    with `two_sided`, |difference| above it). `b`, `c`: the discordant rows of each kind. Arrays: one
    test per element, computed together."""
    b, c, n, limit = (np.atleast_1d(np.asarray(x, dtype=np.float64)) for x in (b, c, n, limit))
    low, high = paired_bounds(b, c, n, confidence)
    estimate = (b - c) / np.maximum(n, 1)
    z_at = paired_score_z(b, c, n, limit)
    row_sd = np.sqrt(np.maximum((b + c) / np.maximum(n, 1) - estimate ** 2, 0.0))
    null_sd = paired_null_sd(b, c, n, limit)
    if not two_sided:
        return _summaries(estimate, limit, low, high, upper_p(z_at), lower_p(z_at), row_sd, null_sd, n, confidence,
                          "tango-score", "above")
    z_neg = paired_score_z(b, c, n, -limit)
    p_beyond = np.minimum(1.0, 2 * np.minimum(upper_p(z_at), lower_p(z_neg)))
    p_within = np.maximum(lower_p(z_at), upper_p(z_neg))  # two one-sided tests
    return _summaries(np.abs(estimate), limit, low, high, p_beyond, p_within, row_sd, null_sd, n, confidence,
                      "tango-score, two-sided", "above")


def proportion_evidence(successes: np.ndarray, n: np.ndarray, limit: np.ndarray, confidence: float
                        ) -> list[dict[str, Any]]:
    """Evidence on rates `successes / n` that must not fall below `limit` (score test, Wilson bounds)."""
    x, n, limit = (np.atleast_1d(np.asarray(v, dtype=np.float64)) for v in (successes, n, limit))
    rate = x / np.maximum(n, 1)
    low, high = wilson_bounds(x, n, z_of(confidence))
    z_at = proportion_score_z(x, n, limit)
    return _summaries(rate, limit, low, high, lower_p(z_at),
                      upper_p(z_at), np.sqrt(rate * (1 - rate)), np.sqrt(np.maximum(limit * (1 - limit), 0.0)), n,
                      confidence, "score (Wilson)", "below")


def bootstrap_evidence(numerator: np.ndarray, denominator: np.ndarray | None, limit: float, direction: str,
                       policy: Policy, label: str) -> dict[str, Any] | None:
    """Evidence on sum(numerator) / sum(denominator) (a mean without a denominator) from a seeded
    bootstrap over rows; None where there are no rows or a value is not finite (the check then
    fails on its point value)."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.ones_like(numerator) if denominator is None else np.asarray(denominator, dtype=np.float64)
    if not len(numerator) or not np.isfinite(numerator).all() or denominator.sum() <= 0:
        return None
    replicates = bootstrap_ratios(numerator, denominator, policy.resamples, zlib.crc32(label.encode()))
    replicates = replicates[np.isfinite(replicates)]
    if not len(replicates):
        return None
    estimate = numerator.sum() / denominator.sum()
    count = len(replicates)
    at_or_below = (1 + np.count_nonzero(replicates <= limit)) / (count + 1)
    at_or_above = (1 + np.count_nonzero(replicates >= limit)) / (count + 1)
    p_beyond, p_within = (at_or_below, at_or_above) if direction == "above" else (at_or_above, at_or_below)
    low, high = np.quantile(replicates, [policy.alpha, policy.confidence])
    row_sd = float(replicates.std()) * math.sqrt(len(numerator))
    return _summaries(np.array([estimate]), np.array([limit]), np.array([low]), np.array([high]),
                      np.array([p_beyond]), np.array([p_within]), np.array([row_sd]), np.array([row_sd]),
                      np.array([len(numerator)]), policy.confidence,
                      f"bootstrap ({count} resamples)", direction)[0]


def rows_needed(evidence: dict[str, Any], limit: float, confidence: float) -> int | None:
    """About how many rows would decide, if the estimate and its spread stayed where they are;
    None when the estimate sits on the tolerance (more rows alone will not decide)."""
    gap = abs(evidence["estimate"] - limit)
    sd = evidence["null_sd"]  # the spread the test itself uses
    if gap < 1e-12 or not math.isfinite(sd):
        return None
    if sd == 0:
        sd = math.sqrt(limit * (1 - limit)) if 0 < limit < 1 else 0.5  # nothing varied yet: assume the null's
    return int(math.ceil((z_of(confidence) * sd / gap) ** 2))


def plan_rows(check: str, limit: float, confidence: float, discordance: float, rate: float | None,
              tests: int = 1) -> int | None:
    """Rows a slice needs to show a clean candidate within `limit` with POWER probability, for each
    of `tests` tests of a run at once (a release gate passes only when every test passes).

    Paired checks: the true difference 0 with `discordance` of the rows answered differently
    (near-tie flips). Rate checks: the true rate `rate`. None for a check this cannot plan (a
    magnitude: its spread comes from a pilot run, see `rows_needed` in a report) or a rate that
    is not within its limit."""
    z_a, z_b = z_of(confidence), z_of(POWER ** (1 / max(tests, 1)))
    bound = catalogue.get(check).bound
    if bound == "paired":
        if limit <= 0:
            return None
        null_sd = float(paired_null_sd(discordance / 2, discordance / 2, 1.0, limit))
        return int(math.ceil(((z_a * null_sd + z_b * math.sqrt(discordance)) / limit) ** 2))
    if bound == "rate" and rate is not None and rate > limit:
        spread = z_a * math.sqrt(limit * (1 - limit)) + z_b * math.sqrt(rate * (1 - rate))
        return int(math.ceil((spread / (rate - limit)) ** 2))
    return None


def adjust(p_values: np.ndarray, correction: str) -> np.ndarray:
    if correction == "holm":
        return holm(p_values)
    if correction == "bh":
        return benjamini_hochberg(p_values)
    return np.asarray(p_values, dtype=np.float64)


def classify(p_beyond_adjusted: np.ndarray, p_within: np.ndarray, alpha: float) -> np.ndarray:
    """Per test: FAIL where shown beyond, PASS where shown within, INCONCLUSIVE otherwise."""
    return np.where(p_beyond_adjusted < alpha, FAIL, np.where(p_within < alpha, PASS, INCONCLUSIVE))


# Keys a judge leaves in CheckResult.statistic to say what its figure is made of; replaced by evidence.
PAIRED = "_paired"  # (b, c, n, limit, two_sided, scale): a difference of paired rates, (b - c) / n * scale
PROPORTION = "_proportion"  # (successes, n, limit): a rate that must not fall below limit
Magnitudes = Callable[[CheckResult], "tuple[np.ndarray, np.ndarray | None, str] | None"]
_SCALED = ("estimate", "bound_low", "bound_high", "row_sd", "null_sd", "detectable_beyond", "detectable_within")


def attach_evidence(checks: list[CheckResult], policy: Policy, magnitudes: Magnitudes | None = None) -> None:
    """Replace each judge's inputs by its evidence, computed for all tests of a kind at once.
    `magnitudes` gives the rows of a magnitude check (numerator, denominator, direction); they are
    bootstrapped only under a policy that decides on them."""
    for two_sided in (False, True):
        group = [c for c in checks if PAIRED in c.statistic and bool(c.statistic[PAIRED][4]) == two_sided]
        if group:
            b, cc, n, limit, _, scale = (np.array(v, dtype=np.float64) for v in zip(*(c.statistic[PAIRED] for c in group)))
            for check, evidence, factor in zip(group, paired_evidence(b, cc, n, limit, policy.confidence, two_sided),
                                               scale):
                del check.statistic[PAIRED]
                check.statistic.update({k: (v * float(factor) if k in _SCALED else v) for k, v in evidence.items()})
    group = [c for c in checks if PROPORTION in c.statistic]
    if group:
        x, n, limit = (np.array(v, dtype=np.float64) for v in zip(*(c.statistic[PROPORTION] for c in group)))
        for check, evidence in zip(group, proportion_evidence(x, n, limit, policy.confidence)):
            del check.statistic[PROPORTION]
            check.statistic.update(evidence)
    if magnitudes is None or policy.name == "point":
        return
    for check in checks:
        if check.verdict == INSUFFICIENT or "p_beyond" in check.statistic:
            continue
        rows = magnitudes(check)
        if rows is None:
            continue
        numerator, denominator, direction = rows
        evidence = bootstrap_evidence(numerator, denominator, check.tolerance, direction, policy,
                                      f"{check.label}/{check.dimension}={check.value}")
        if evidence is not None:
            check.statistic.update(evidence)


def decide_run(checks: list[CheckResult], suite: SuiteSpec) -> None:
    """Adjust for the many comparisons of one run (every check x slice x batch size with evidence)
    and set each check's verdict by the suite's policy (under `point` they stay the point rule's)."""
    policy = Policy.of(suite)
    attach_evidence(checks, policy)  # whatever a family left as inputs
    family = [c for c in checks if "p_beyond" in c.statistic and c.verdict != INSUFFICIENT
              and not _nonfinite(c)]
    adjusted = adjust(np.array([c.statistic["p_beyond"] for c in family]), policy.correction)
    verdicts = classify(adjusted, np.array([c.statistic["p_within"] for c in family]), policy.alpha)
    for check, p_adjusted, verdict in zip(family, adjusted, verdicts):
        check.statistic["p_beyond_adjusted"] = float(p_adjusted)
        check.statistic["correction"] = f"{policy.correction} over {len(family)} tests"
        check.statistic["shown"] = {FAIL: "beyond", PASS: "within", INCONCLUSIVE: "neither"}[str(verdict)]
        if policy.name == "point":
            continue
        check.verdict = str(verdict)
        if check.verdict == INCONCLUSIVE:
            check.statistic["rows_needed"] = rows_needed(check.statistic, check.tolerance, policy.confidence)
    if policy.name != "point":
        for check in checks:
            if "p_beyond" not in check.statistic and check.verdict in (PASS, FAIL):
                check.statistic["decided_on"] = "point value (no confidence bound for this check)"


def _nonfinite(check: CheckResult) -> bool:
    return any(check.statistic.get(k) for k in ("nonfinite_rows", "nonfinite_prompts", "nonfinite_elements"))


def verdict_for(checks: list[CheckResult], suite: SuiteSpec) -> str:
    """Fail if any check fails anywhere; otherwise insufficient when the aggregate could not be judged
    (or the suite says insufficient slices block); otherwise inconclusive if any test was; else pass."""
    verdicts = {c.verdict for c in checks}
    if FAIL in verdicts:
        return FAIL
    aggregate = {c.verdict for c in checks if c.dimension == "all"}
    if INSUFFICIENT in aggregate or (suite.insufficient_blocks_gate and INSUFFICIENT in verdicts):
        return INSUFFICIENT
    for verdict in ("error", INCONCLUSIVE):
        if verdict in verdicts:
            return verdict
    return PASS
