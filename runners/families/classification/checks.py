"""Checks: tolerances fixed in advance, judged on the aggregate and on every slice value.

Each check reads a GroupStats and returns (baseline, candidate, breached, statistic). For
output-comparison checks the "baseline" is the value the baseline scores against itself
(agreement 1, KL 0, ...), so `delta` always reads as candidate minus baseline.
"""

from __future__ import annotations

from typing import Callable

from runners import catalogue as cat
from runners.contracts import CheckResult, CheckSpec
from runners.decision import PAIRED, PROPORTION
from runners.families.classification.metrics import GroupStats
from runners.stats import mcnemar_p, wilson_interval
from runners.verdict import above, below, decide

Judgement = tuple[float, float, bool, dict[str, float]]
Judge = Callable[[GroupStats, float, float], Judgement]


def _accuracies(s: GroupStats) -> tuple[float, float]:
    n = max(s.n, 1)
    return s.correct_baseline / n, s.correct_candidate / n


def _paired_evidence(s: GroupStats) -> dict[str, float]:
    return {"mcnemar_p": mcnemar_p(s.baseline_only, s.candidate_only),
            "baseline_only": s.baseline_only, "candidate_only": s.candidate_only}


@cat.judge_for(cat.MAX_DROP)
def _max_drop(s: GroupStats, limit: float, confidence: float) -> Judgement:
    base, cand = _accuracies(s)
    paired = (s.baseline_only, s.candidate_only, s.n, limit, False, 1.0)
    return base, cand, above(base - cand, limit), _paired_evidence(s) | {PAIRED: paired}


@cat.judge_for(cat.MAX_RELATIVE_DROP)
def _max_relative_drop(s: GroupStats, limit: float, confidence: float) -> Judgement:
    base, cand = _accuracies(s)
    relative = (base - cand) / base if base > 0 else 0.0
    evidence = _paired_evidence(s) | {"relative_drop": relative}
    if base > 0:  # the baseline's accuracy taken as given: a relative limit is an absolute one scaled by it
        evidence[PAIRED] = (s.baseline_only, s.candidate_only, s.n, limit * base, False, 1.0 / base)
    return base, cand, above(relative, limit), evidence


@cat.judge_for(cat.MIN_ACCURACY)
def _min_accuracy(s: GroupStats, limit: float, confidence: float) -> Judgement:
    base, cand = _accuracies(s)
    low, high = wilson_interval(s.correct_candidate, s.n, confidence)
    return base, cand, below(cand, limit), {"wilson_low": low, "wilson_high": high,
                                            PROPORTION: (s.correct_candidate, s.n, limit)}


@cat.judge_for(cat.MIN_AGREEMENT)
def _min_agreement(s: GroupStats, limit: float, confidence: float) -> Judgement:
    agreement = s.agree / max(s.n, 1)
    low, high = wilson_interval(s.agree, s.n, confidence)
    return 1.0, agreement, below(agreement, limit), {"wilson_low": low, "wilson_high": high,
                                                     PROPORTION: (s.agree, s.n, limit)}


def _upper(field: str, ideal: float) -> Judge:
    def judge(s: GroupStats, limit: float, confidence: float) -> Judgement:
        value = getattr(s, field)
        return ideal, value, above(value, limit), {}
    return judge


def _lower(field: str, ideal: float) -> Judge:
    def judge(s: GroupStats, limit: float, confidence: float) -> Judgement:
        value = getattr(s, field)
        return ideal, value, below(value, limit), {}
    return judge


cat.judge_for(cat.MAX_MEAN_KL)(_upper("kl", 0.0))
cat.judge_for(cat.MAX_ABS_DIFF)(_upper("max_abs", 0.0))
cat.judge_for(cat.MAX_MEAN_ABS_DIFF)(_upper("mean_abs", 0.0))
cat.judge_for(cat.MIN_COSINE)(_lower("cosine", 1.0))


def judge(check: CheckSpec, dimension: str, value: str, stats: GroupStats,
          min_slice_size: int, confidence: float) -> CheckResult:
    """Judge one check on one slice (the shared rule: runners/verdict.py)."""
    base, cand, breached, statistic = cat.judge(check.name)(stats, check.limit, confidence)
    if stats.nonfinite:
        statistic = statistic | {"nonfinite_rows": stats.nonfinite}
    return CheckResult(check=check.name, dimension=dimension, value=value, n=stats.n,
                       baseline=base, candidate=cand, delta=cand - base, tolerance=check.limit,
                       verdict=decide(stats.n, min_slice_size, breached, stats.nonfinite), statistic=statistic)
