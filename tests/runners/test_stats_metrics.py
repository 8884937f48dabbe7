"""Statistics against scipy, and the vectorised slice sums against a plain per-row loop."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sp

from runners.metrics import row_metrics, slice_stats
from runners.stats import mcnemar_p, wilson_interval


@pytest.mark.parametrize("b,c", [(0, 0), (5, 0), (3, 7), (40, 22), (1500, 1400), (3000, 2900)])
def test_mcnemar_matches_exact_binomial(b: int, c: int) -> None:
    expected = 1.0 if b + c == 0 else sp.binomtest(b, b + c, 0.5, alternative="greater").pvalue
    assert mcnemar_p(b, c) == pytest.approx(expected, rel=0.02, abs=1e-4)


@pytest.mark.parametrize("k,n,conf", [(8, 10, 0.95), (0, 25, 0.95), (95, 100, 0.99), (1466, 1482, 0.9)])
def test_wilson_matches_scipy(k: int, n: int, conf: float) -> None:
    ci = sp.binomtest(k, n).proportion_ci(confidence_level=conf, method="wilson")
    low, high = wilson_interval(k, n, conf)
    assert low == pytest.approx(ci.low, abs=1e-9)
    assert high == pytest.approx(ci.high, abs=1e-9)


def test_row_metrics_values() -> None:
    b = np.array([[2.0, 0.0], [0.0, 1.0]], np.float32)
    c = np.array([[2.0, 0.0], [1.0, 0.0]], np.float32)
    rm = row_metrics(b, c, np.array([0, 1]))
    assert rm.agree.tolist() == [True, False]
    assert rm.correct_baseline.tolist() == [True, True]
    assert rm.correct_candidate.tolist() == [True, False]
    assert rm.max_abs.tolist() == [0.0, 1.0]
    assert rm.cosine.tolist() == pytest.approx([1.0, 0.0])
    p = np.exp([0.0, 1.0]) / np.exp([0.0, 1.0]).sum()
    assert rm.kl[1] == pytest.approx(float((p * np.log(p / p[::-1])).sum()), rel=1e-5)
    assert rm.kl[0] == pytest.approx(0.0, abs=1e-7)


def test_slice_sums_match_a_per_row_loop() -> None:
    rng = np.random.default_rng(0)
    rows = 2000
    b, c = rng.normal(size=(rows, 5)), rng.normal(size=(rows, 5))
    labels = rng.integers(0, 5, rows)
    slices = {"lang": rng.choice(["de", "en", "fr", "ja"], rows), "len": rng.choice(["short", "long"], rows)}
    rm = row_metrics(b, c, labels)
    got = slice_stats(rm, slices)
    assert set(got) == {("all", "all")} | {("lang", v) for v in ("de", "en", "fr", "ja")} | \
        {("len", "short"), ("len", "long")}
    for (dim, value), s in got.items():
        mask = np.ones(rows, bool) if dim == "all" else slices[dim] == value
        assert s.n == mask.sum()
        assert s.agree == (b[mask].argmax(1) == c[mask].argmax(1)).sum()
        assert s.correct_candidate == (c[mask].argmax(1) == labels[mask]).sum()
        assert s.baseline_only == ((b[mask].argmax(1) == labels[mask]) & (c[mask].argmax(1) != labels[mask])).sum()
        assert s.max_abs == pytest.approx(np.abs(b[mask] - c[mask]).max(), rel=1e-6)
        assert s.kl == pytest.approx(rm.kl[mask].mean(), rel=1e-6)


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="output shapes differ"):
        row_metrics(np.zeros((3, 2)), np.zeros((3, 4)), None)
