"""What accuracy misses in generated text: refusals, format compliance, exact match, and drift
from the baseline over the length of the output.

Per prompt, each model's output is scored on its own (refused? format kept? exact?), and the
pair is compared token by token: where the candidate first leaves the baseline's path, how
many positions agree, and the per-step KL divergence while both still saw the same context.
Then everything is summed per slice value, and the checks judge the sums.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from runners import catalogue as cat
from runners.contracts import CheckResult, CheckSpec
from runners.decision import PAIRED
from runners.families.generation.greedy import Generation
from runners.families.classification.metrics import row_metrics
from runners.stats import mcnemar_p, wilson_interval
from runners.families.generation.prompts import PromptSet, matches
from runners.verdict import above, below, decide

DEFAULT_REFUSAL_PATTERNS = (
    r"\b(i|we)\s+(cannot|can't|can not|won't|will not|am unable to|am not able to)\b",
    r"\b(sorry|apologi[sz]e)\b",
    r"\bas an ai\b",
    r"\b(cannot|can't|unable to)\s+(help|assist|comply|provide)\b",
)
DEFAULT_CURVE_POSITIONS = (32, 64, 128, 256, 512)


def refused(texts: list[str], patterns: tuple[str, ...]) -> np.ndarray:
    anyone = re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE)  # one scan per text
    return np.array([anyone.search(t) is not None for t in texts], dtype=bool)


def format_ok(text: str, spec: dict[str, Any]) -> bool:
    """Does `text` keep the expected format: JSON that parses, JSON matching a schema, or a regex?"""
    if "regex" in spec:
        return re.fullmatch(spec["regex"], text.strip()) is not None
    try:
        value = json.loads(text)
    except ValueError:
        return False
    if "json_schema" in spec:
        import jsonschema

        return jsonschema.Draft202012Validator(spec["json_schema"]).is_valid(value)
    return True


@dataclass
class ModelScores:
    """One model's outputs scored on their own; NaN where a prompt has no format or reference."""

    texts: list[str]
    refused: np.ndarray
    format_ok: np.ndarray  # float: 1, 0 or NaN
    exact: np.ndarray  # float: 1, 0 or NaN


def score(texts: list[str], prompts: PromptSet, refusal_patterns: tuple[str, ...]) -> ModelScores:
    fmt = np.array([np.nan if p.format is None else float(format_ok(t, p.format))
                    for t, p in zip(texts, prompts.prompts)])
    exact = np.array([np.nan if p.reference is None else float(matches(t, p.reference, p.match))
                      for t, p in zip(texts, prompts.prompts)])
    return ModelScores(texts, refused(texts, refusal_patterns), fmt, exact)


@dataclass
class Drift:
    """The pair compared token by token, per prompt, and step by step where both models saw the
    same context: `step_*` hold one entry per such step, `step_rows` the prompt it belongs to."""

    compared: np.ndarray  # positions compared: the longer of the two outputs
    agree: np.ndarray  # positions where both chose the same token
    first_divergence: np.ndarray  # first differing position; == compared when identical
    curve_compared: np.ndarray  # (prompts, len(positions)): positions compared before each curve point
    curve_agree: np.ndarray
    positions: tuple[int, ...]
    nonfinite: np.ndarray  # bool per prompt: a step logit of either model was not finite
    step_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    step_kl: np.ndarray = field(default_factory=lambda: np.zeros(0))  # KL(baseline || candidate)
    step_top1: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # same top-1 token


@dataclass
class ForcedSteps:
    """Per prompt, per position of the baseline's continuation, from a teacher-forced pass of both
    models over it: KL(baseline || candidate) and top-1 agreement."""

    kl: list[np.ndarray]
    top1: list[np.ndarray]


def drift(baseline: Generation, candidate: Generation, positions: tuple[int, ...],
          forced: ForcedSteps | None = None) -> Drift:
    """Token agreement of the two outputs; the step comparison from `forced` (teacher-forced, every
    position of the baseline's output) or else from the kept step logits, up to and including
    the first divergence (past it the two models describe different texts)."""
    compared = np.maximum(baseline.lengths, candidate.lengths)
    width = baseline.tokens.shape[1]
    inside = np.arange(width)[None, :] < compared[:, None]
    equal = (baseline.tokens == candidate.tokens) & inside
    differs = ~equal & inside
    first = np.where(differs.any(axis=1), differs.argmax(axis=1), compared)
    cumulative = np.concatenate([np.zeros((len(equal), 1), np.int64), np.cumsum(equal, axis=1)], axis=1)
    points = np.minimum(np.array(positions), width)
    curve_compared = np.minimum(points[None, :], compared[:, None])
    curve_agree = np.take_along_axis(cumulative, curve_compared, axis=1)
    nonfinite = np.zeros(len(compared), bool)
    for logits in (baseline.logits, candidate.logits):
        if logits is not None:
            nonfinite |= ~np.isfinite(logits).reshape(len(compared), -1).all(axis=1)
    out = Drift(compared, equal.sum(axis=1), first, curve_compared, curve_agree, tuple(int(p) for p in positions),
                nonfinite)
    if forced is not None:
        out.step_rows = np.concatenate([np.full(len(k), r) for r, k in enumerate(forced.kl)]).astype(np.int64)
        out.step_kl = np.concatenate(forced.kl) if forced.kl else np.zeros(0)
        out.step_top1 = np.concatenate(forced.top1).astype(bool) if forced.top1 else np.zeros(0, bool)
        out.nonfinite |= np.array([not np.isfinite(k).all() for k in forced.kl], bool)
    elif baseline.logits is not None and candidate.logits is not None:
        shared = np.minimum(first + 1, np.minimum(baseline.lengths, candidate.lengths))
        rows, steps = np.nonzero(np.arange(width)[None, :] < shared[:, None])
        if len(rows):
            # Those steps as class-major rows: the same per-row KL as the classification harness.
            step_b = np.ascontiguousarray(baseline.logits[rows, steps].T)
            step_c = np.ascontiguousarray(candidate.logits[rows, steps].T)
            metrics = row_metrics(step_b, step_c, None)
            out.step_rows, out.step_kl = rows.astype(np.int64), metrics.column("kl").astype(np.float64)
            out.step_top1 = metrics.column("agree").astype(bool)
    return out


@dataclass
class GroupBehaviour:
    """Sums over one slice value (or the aggregate)."""

    n: int
    flags: dict[str, tuple[int, int, int, int, int]] = field(default_factory=dict)  # name -> n, base, cand, b_only, c_only
    compared: int = 0
    agree: int = 0
    identical: int = 0
    first_divergence: np.ndarray = field(default_factory=lambda: np.zeros(0))
    curve: dict[int, float] = field(default_factory=dict)
    kl_sum: float = 0.0
    kl_steps: int = 0
    kl_p99: float = 0.0
    top1_steps: int = 0  # steps where the candidate's top-1 token is the baseline's
    nonfinite: int = 0  # prompts with a non-finite step logit


def _pair_counts(base: np.ndarray, cand: np.ndarray) -> tuple[int, int, int, int, int]:
    known = ~(np.isnan(base) | np.isnan(cand)) if base.dtype.kind == "f" else np.ones(len(base), bool)
    b, c = base[known].astype(bool), cand[known].astype(bool)
    return int(known.sum()), int(b.sum()), int(c.sum()), int((b & ~c).sum()), int((~b & c).sum())


def group_behaviour(rows: np.ndarray, base: ModelScores, cand: ModelScores, pair: Drift) -> GroupBehaviour:
    g = GroupBehaviour(n=int(len(rows)))
    g.flags = {"refusal": _pair_counts(base.refused[rows], cand.refused[rows]),
               "format": _pair_counts(base.format_ok[rows], cand.format_ok[rows]),
               "exact": _pair_counts(base.exact[rows], cand.exact[rows])}
    g.compared, g.agree = int(pair.compared[rows].sum()), int(pair.agree[rows].sum())
    g.identical = int((pair.first_divergence[rows] >= pair.compared[rows]).sum())
    g.first_divergence = pair.first_divergence[rows][pair.first_divergence[rows] < pair.compared[rows]]
    compared, agreed = pair.curve_compared[rows].sum(axis=0), pair.curve_agree[rows].sum(axis=0)
    g.curve = {p: float(a / c) if c else 1.0 for p, a, c in zip(pair.positions, agreed, compared)}
    in_group = np.isin(pair.step_rows, rows)
    kl = pair.step_kl[in_group]
    g.kl_sum, g.kl_steps = float(kl.sum()), int(len(kl))
    g.kl_p99 = float(np.percentile(kl, 99)) if len(kl) else 0.0
    g.top1_steps = int(pair.step_top1[in_group].sum())
    g.nonfinite = int(pair.nonfinite[rows].sum())
    return g


def slice_behaviour(prompts: PromptSet, slices: tuple[str, ...], base: ModelScores, cand: ModelScores,
                    pair: Drift) -> dict[tuple[str, str], GroupBehaviour]:
    everything = np.arange(len(prompts.prompts))
    out = {("all", "all"): group_behaviour(everything, base, cand, pair)}
    for dimension in slices:
        column = np.array(prompts.column(dimension))
        for value in sorted(set(column.tolist())):
            out[(dimension, value)] = group_behaviour(np.flatnonzero(column == value), base, cand, pair)
    return out


# -- checks -------------------------------------------------------------------------------------
def _rate_check(flag: str, two_sided: bool):
    def judge(g: GroupBehaviour, limit: float, confidence: float):
        n, base, cand, b_only, c_only = g.flags[flag]
        rb, rc = base / max(n, 1), cand / max(n, 1)
        statistic: dict[str, Any] = {"baseline_only": b_only, "candidate_only": c_only}
        if two_sided:  # a refusal rate that moves either way is a behaviour change
            statistic["mcnemar_p"] = min(1.0, 2 * mcnemar_p(max(b_only, c_only), min(b_only, c_only)))
            breached = above(abs(rc - rb), limit)
            statistic[PAIRED] = (c_only, b_only, n, limit, True, 1.0)  # candidate minus baseline, either way
            # A baseline that never refuses cannot show a drop, one that always refuses no rise:
            # say which direction this slice could judge.
            if n and base == 0:
                statistic["judged"] = "rise"
            elif n and base == n:
                statistic["judged"] = "drop"
        else:  # a drop: baseline right where the candidate is not
            statistic["mcnemar_p"] = mcnemar_p(b_only, c_only)
            breached = above(rb - rc, limit)
            statistic[PAIRED] = (b_only, c_only, n, limit, False, 1.0)
        return n, rb, rc, breached, statistic
    return judge


def _token_agreement(g: GroupBehaviour, limit: float, confidence: float):
    value = g.agree / g.compared if g.compared else 1.0
    low, high = wilson_interval(g.identical, g.n, confidence)
    statistic = {f"agreement@{p}": v for p, v in g.curve.items()}
    statistic |= {"identical_outputs": g.identical / max(g.n, 1), "identical_wilson_low": low,
                  "identical_wilson_high": high}
    for name, position in (divergence_quantiles(g.first_divergence) or {}).items():
        statistic[f"first_divergence_{name}"] = position
    return g.n, 1.0, value, below(value, limit), statistic


def divergence_quantiles(first_divergence: np.ndarray) -> dict[str, float] | None:
    """p10/p50/p90 of where the diverging outputs first left the baseline; None if none diverged."""
    if not len(first_divergence):
        return None
    return {f"p{q}": float(np.percentile(first_divergence, q)) for q in (10, 50, 90)}


def _mean_step_kl(g: GroupBehaviour, limit: float, confidence: float):
    if not g.kl_steps:  # nothing to measure (no step outputs kept): insufficient, never a pass
        return 0, 0.0, None, False, {"kl_steps": 0}
    value = g.kl_sum / g.kl_steps
    return g.n, 0.0, value, above(value, limit), {"kl_steps": g.kl_steps, "kl_p99": g.kl_p99}


def _step_top1(g: GroupBehaviour, limit: float, confidence: float):
    if not g.kl_steps:
        return 0, 1.0, None, False, {"steps": 0}
    value = g.top1_steps / g.kl_steps
    low, high = wilson_interval(g.top1_steps, g.kl_steps, confidence)
    return g.n, 1.0, value, below(value, limit), {"steps": g.kl_steps, "wilson_low": low, "wilson_high": high}


cat.judge_for(cat.MAX_REFUSAL_RATE_DELTA)(_rate_check("refusal", two_sided=True))
cat.judge_for(cat.MAX_FORMAT_DROP)(_rate_check("format", two_sided=False))
cat.judge_for(cat.MAX_EXACT_MATCH_DROP)(_rate_check("exact", two_sided=False))
cat.judge_for(cat.MIN_TOKEN_AGREEMENT)(_token_agreement)
cat.judge_for(cat.MAX_MEAN_STEP_KL)(_mean_step_kl)
cat.judge_for(cat.MIN_STEP_TOP1_AGREEMENT)(_step_top1)


def prompt_ratios(pair: Drift, prompts: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per prompt, the numerator and denominator of each check bootstrapped over prompts (a ratio over
    tokens or steps: the tokens of one prompt are not independent)."""
    steps = np.bincount(pair.step_rows, minlength=prompts).astype(np.float64)
    return {cat.MIN_TOKEN_AGREEMENT.name: (pair.agree.astype(np.float64), pair.compared.astype(np.float64)),
            cat.MAX_MEAN_STEP_KL.name: (np.bincount(pair.step_rows, weights=pair.step_kl, minlength=prompts), steps),
            cat.MIN_STEP_TOP1_AGREEMENT.name: (np.bincount(pair.step_rows, weights=pair.step_top1.astype(np.float64),
                                                           minlength=prompts), steps)}


def judge_generation(check: CheckSpec, dimension: str, value: str, g: GroupBehaviour, min_slice_size: int,
                     confidence: float) -> CheckResult | None:
    """One check on one slice; None where the slice holds no prompt the check applies to."""
    n, base, cand, breached, statistic = cat.judge(check.name)(g, check.limit, confidence)
    if cat.get(check.name).subset and n == 0:
        return None
    if g.nonfinite:
        statistic = statistic | {"nonfinite_prompts": g.nonfinite}
    return CheckResult(check=check.name, dimension=dimension, value=value, n=n, baseline=base, candidate=cand,
                       delta=None if cand is None else cand - base, tolerance=check.limit,
                       verdict=decide(n, min_slice_size, breached, g.nonfinite), statistic=statistic)
