"""Confidence bounds that decide: the intervals against published values and an independent
reference, the corrections against scipy, and each policy on the real demo models."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from scipy import optimize, stats

from runners.contracts import CheckSpec
from runners.decision import classify, paired_evidence, proportion_evidence
from runners.harness import run_job
from runners.stats import (benjamini_hochberg, bootstrap_ratios, holm, paired_bounds, paired_score_z,
                           wilson_interval)
from tests.runners.test_harness import by_slice, job

POLICIES = ("point", "release", "alert")


# Newcombe (1998), "Two-sided confidence intervals for the single proportion", Table I, method 3 (Wilson).
@pytest.mark.parametrize("x,n,low,high", [(81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605),
                                          (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718)])
def test_wilson_bounds_match_the_published_table(x: int, n: int, low: float, high: float) -> None:
    assert wilson_interval(x, n, 0.95) == pytest.approx((low, high), abs=5e-5)
    # The vectorised bounds that decide are one-sided at the suite's confidence: 0.975 each is the 95% interval.
    evidence = proportion_evidence([x], [n], [0.5], 0.975)[0]
    assert (evidence["bound_low"], evidence["bound_high"]) == pytest.approx((low, high), abs=5e-5)


def reference_tango_bounds(b: int, c: int, n: int, confidence: float) -> tuple[float, float]:
    """Tango's score interval the slow way: the constrained likelihood maximised numerically (not
    the closed form), the score statistic inverted with Brent's method."""
    def constrained_sd(delta: float) -> float:
        def negative_log_likelihood(q: float) -> float:  # q = p(c); p(b) = q + delta; the rest 1 - 2q - delta
            cells = np.array([q + delta, q, 1 - 2 * q - delta])
            counts = np.array([b, c, n - b - c])
            return -float(np.sum(counts[counts > 0] * np.log(np.clip(cells[counts > 0], 1e-300, None))))
        low, high = max(0.0, -delta), (1 - delta) / 2
        q = optimize.minimize_scalar(negative_log_likelihood, bounds=(low, high), method="bounded",
                                     options={"xatol": 1e-13}).x
        return np.sqrt(n * (2 * q + delta - delta ** 2))

    def score(delta: float) -> float:
        return (b - c - n * delta) / constrained_sd(delta)

    z = stats.norm.ppf(confidence)
    lower = optimize.brentq(lambda d: score(d) - z, -0.999999, (b - c) / n) if b - c > -n else -1.0
    upper = optimize.brentq(lambda d: score(d) + z, (b - c) / n, 0.999999) if b - c < n else 1.0
    return lower, upper


@pytest.mark.parametrize("b,c,n", [(12, 2, 50), (1, 7, 21), (6, 16, 161), (150, 86, 1600), (5, 4, 26),
                                   (3, 0, 40), (40, 20, 160)])
def test_tango_bounds_match_an_independent_reference(b: int, c: int, n: int) -> None:
    low, high = paired_bounds(np.array([b]), np.array([c]), np.array([n]), 0.975)
    assert (float(low[0]), float(high[0])) == pytest.approx(reference_tango_bounds(b, c, n, 0.975), abs=2e-6)


def test_tango_statistic_is_sound_without_discordant_rows() -> None:
    # No row differs: the difference is shown within a wide enough tolerance, never beyond any.
    z = paired_score_z(np.array([0]), np.array([0]), np.array([200]), np.array([0.05]))
    assert z[0] < -3  # shown below +0.05 at better than 99.9%
    assert paired_score_z(np.array([0]), np.array([0]), np.array([200]), np.array([0.0]))[0] == 0.0
    low, high = paired_bounds(np.array([0]), np.array([0]), np.array([30]), 0.95)
    assert low[0] < 0 < high[0] and high[0] > 0.05  # 30 identical rows cannot show a 0.05 tolerance


def test_paired_evidence_has_the_coverage_it_claims() -> None:
    # 20,000 simulated slices of 300 rows at a true drop of exactly 0.02: the upper bound at 0.95
    # misses the truth in about 5% of them.
    rng = np.random.default_rng(7)
    counts = rng.multinomial(300, [0.03 + 0.02, 0.03, 1 - 0.08], size=20_000)
    evidence = paired_evidence(counts[:, 0], counts[:, 1], np.full(20_000, 300), np.full(20_000, 0.02), 0.95)
    missed = np.mean([e["bound_high"] < 0.02 for e in evidence])
    assert 0.035 < missed < 0.065


def test_corrections_match_scipy_and_the_hand_computed_values() -> None:
    p = np.array([0.01, 0.04, 0.03, 0.005])
    assert holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert benjamini_hochberg(p) == pytest.approx([0.02, 0.04, 0.04, 0.02])
    many = np.random.default_rng(3).uniform(0, 0.2, 60) ** 2
    assert benjamini_hochberg(many) == pytest.approx(stats.false_discovery_control(many, method="bh"))
    assert np.all(holm(many) >= many) and np.all(np.diff(holm(many)[np.argsort(many)]) >= 0)


def test_bootstrap_is_seeded_and_vectorised() -> None:
    values = np.random.default_rng(0).exponential(0.05, 5000)
    first = bootstrap_ratios(values, np.ones_like(values), 500, seed=11)
    assert np.array_equal(first, bootstrap_ratios(values, np.ones_like(values), 500, seed=11))
    assert not np.array_equal(first, bootstrap_ratios(values, np.ones_like(values), 500, seed=12))
    assert first.std() == pytest.approx(values.std() / np.sqrt(len(values)), rel=0.15)


def test_classify_gives_three_outcomes() -> None:
    verdicts = classify(np.array([0.001, 0.5, 0.5]), np.array([0.9, 0.001, 0.4]), 0.05)
    assert verdicts.tolist() == ["fail", "pass", "inconclusive"]


@pytest.mark.parametrize("policy", POLICIES)
def test_the_planted_slice_failure_fails_under_every_policy(demo_dir: Path, policy: str) -> None:
    result = run_job(job(demo_dir, "digits-w8a3.onnx", decision={"policy": policy, "correction": "holm"},
                         checks=(CheckSpec("max_drop", 0.03), CheckSpec("min_agreement", 0.95),
                                 CheckSpec("max_mean_kl", 0.2)),
                         slice_checks=(CheckSpec("max_drop", 0.08), CheckSpec("min_agreement", 0.90),
                                       CheckSpec("max_mean_kl", 0.3))))
    assert result.verdict == "fail"
    faint = by_slice(result, "max_drop")[("scan", "faint")]
    assert faint.verdict == "fail"
    assert faint.statistic["bound_low"] > 0.08  # shown beyond its tolerance, not only estimated beyond
    assert faint.statistic["correction"].startswith("holm over ")
    kl = by_slice(result, "max_mean_kl")[("scan", "faint")]
    assert kl.verdict == "fail"
    if policy != "point":  # the magnitudes are bootstrapped only where they decide
        assert kl.statistic["method"].startswith("bootstrap") and kl.statistic["bound_low"] > 0.3
    assert result.provenance["suite"]["decision"]["name"] == policy


def _one_flip_slice(demo_dir: Path, tmp_path: Path) -> Path:
    """The demo eval set with a 'probe' slice of 40 rows on which the w8a3 candidate answers
    exactly one row differently from the baseline (found by running both models)."""
    import onnxruntime as ort

    data = dict(np.load(demo_dir / "digits-eval.npz"))
    inputs = {k: v for k, v in data.items() if k not in ("labels", "digit", "scan")}
    predictions = []
    for model in ("digits-fp32.onnx", "digits-w8a3.onnx"):
        session = ort.InferenceSession(str(demo_dir / model), providers=["CPUExecutionProvider"])
        predictions.append(session.run(None, inputs)[0].argmax(axis=1))
    right_b = predictions[0] == data["labels"]
    flipped = np.flatnonzero(right_b & (predictions[1] != data["labels"]))
    same = np.flatnonzero(predictions[0] == predictions[1])
    assert len(flipped) >= 1
    probe = np.full(len(right_b), "rest", dtype=object)
    probe[np.concatenate([flipped[:1], same[:39]])] = "tiny"
    data["probe"] = probe.astype(str)
    out = tmp_path / "eval-with-probe.npz"
    np.savez(out, **data)
    return out


@pytest.mark.parametrize("policy", POLICIES)
def test_a_tiny_slice_with_one_flipped_row_is_never_a_fail_under_alert(demo_dir: Path, tmp_path: Path,
                                                                       policy: str) -> None:
    data = _one_flip_slice(demo_dir, tmp_path)
    result = run_job(job(demo_dir, "digits-w8a3.onnx", data=str(data), slices=("probe",), min_slice_size=30,
                         decision={"policy": policy, "correction": "holm"},
                         slice_checks=(CheckSpec("max_drop", 0.02),)))
    tiny = by_slice(result, "max_drop")[("probe", "tiny")]
    assert tiny.n == 40 and tiny.statistic["baseline_only"] == 1
    expected = {"point": "fail", "release": "inconclusive", "alert": "inconclusive"}[policy]
    assert tiny.verdict == expected  # 1/40 = 0.025 > 0.02 on its point value, but nothing is shown
    if policy != "point":
        assert tiny.statistic["rows_needed"] is not None
        assert result.verdict == "inconclusive"


def test_the_correction_spans_every_batch_size_and_keeps_each_result_apart(demo_dir: Path) -> None:
    """Judged at two batch sizes under release: one result per (check, slice, batch size), each with its
    own evidence, and the run's correction counts the tests of both sizes together."""
    sizes = (1, 64)
    result = run_job(job(demo_dir, "digits-int8-dynamic.onnx", batch_sizes=sizes,
                         decision={"policy": "release", "correction": "holm"},
                         checks=(CheckSpec("max_drop", 0.03), CheckSpec("min_agreement", 0.95)),
                         slice_checks=(CheckSpec("max_drop", 0.08),)))
    assert result.status == "finished", result.error
    keys = [(c.key, c.dimension, c.value) for c in result.checks]
    assert len(keys) == len(set(keys))
    assert {c.batch_size for c in result.checks} == set(sizes) and {c.check for c in result.checks} == {
        "max_drop", "min_agreement"}
    tested = [c for c in result.checks if "p_beyond" in c.statistic and c.verdict != "insufficient"]
    assert {c.batch_size for c in tested} == set(sizes)
    assert {c.statistic["correction"] for c in tested} == {f"holm over {len(tested)} tests"}
    aggregate = {c.batch_size: c for c in result.checks if c.check == "max_drop" and c.dimension == "all"}
    assert set(aggregate) == set(sizes)  # the aggregate once per size, not merged into one
