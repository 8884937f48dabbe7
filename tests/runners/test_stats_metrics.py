"""Statistics against scipy, and the vectorised slice sums against a plain per-row loop."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sp

from runners.families.classification.metrics import build_slice_index, kernel_available, row_metrics, slice_stats
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
    rm = row_metrics(b.T, c.T, np.array([0, 1]))
    assert rm.column("agree").tolist() == [1, 0]
    assert rm.column("correct_baseline").tolist() == [1, 1]
    assert rm.column("correct_candidate").tolist() == [1, 0]
    assert rm.column("baseline_only").tolist() == [0, 1]
    assert rm.max_abs.tolist() == [0.0, 1.0]
    assert rm.column("mean_abs").tolist() == [0.0, 1.0]
    assert rm.column("cosine").tolist() == pytest.approx([1.0, 0.0])
    p = np.exp([0.0, 1.0]) / np.exp([0.0, 1.0]).sum()
    assert rm.column("kl")[1] == pytest.approx(float((p * np.log(p / p[::-1])).sum()), rel=1e-5)
    assert rm.column("kl")[0] == pytest.approx(0.0, abs=1e-7)


def test_top1_ties_resolve_like_argmax() -> None:
    b = np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 0.0], [0.0, 0.0, 0.0]], np.float32)
    rm = row_metrics(b.T, np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1]], np.float32).T, np.array([1, 0, 0]))
    assert rm.column("correct_baseline").tolist() == [1, 1, 1]  # argmax picks the first of equal maxima
    assert rm.column("agree").tolist() == [1, 1, 0]


@pytest.mark.parametrize("many_values", [False, True])
def test_slice_sums_match_a_per_row_loop(many_values: bool) -> None:
    rng = np.random.default_rng(0)
    rows = 2000
    b, c = rng.normal(size=(rows, 5)), rng.normal(size=(rows, 5))
    labels = rng.integers(0, 5, rows)
    slices = {"lang": rng.choice(["de", "en", "fr", "ja"], rows), "len": rng.choice(["short", "long"], rows)}
    if many_values:  # past the dense indicator's limit: the bincount path
        slices["writer"] = rng.integers(0, 400, rows).astype(str)
    rm = row_metrics(b.T.copy(), c.T.copy(), labels)
    index = build_slice_index(slices, rows)
    assert (index.indicator is None) == many_values
    got = slice_stats(rm, index)
    assert {k for k in got if k[0] != "writer"} == {("all", "all")} | {("lang", v) for v in ("de", "en", "fr", "ja")} \
        | {("len", "short"), ("len", "long")}
    for (dim, value), s in got.items():
        mask = np.ones(rows, bool) if dim == "all" else slices[dim] == value
        assert s.n == mask.sum()
        assert s.agree == (b[mask].argmax(1) == c[mask].argmax(1)).sum()
        assert s.correct_candidate == (c[mask].argmax(1) == labels[mask]).sum()
        assert s.baseline_only == ((b[mask].argmax(1) == labels[mask]) & (c[mask].argmax(1) != labels[mask])).sum()
        assert s.max_abs == pytest.approx(np.abs(b[mask] - c[mask]).max(), rel=1e-6)
        ref_b, ref_c = b[mask] - b[mask].max(1, keepdims=True), c[mask] - c[mask].max(1, keepdims=True)
        log_b = ref_b - np.log(np.exp(ref_b).sum(1, keepdims=True))
        log_c = ref_c - np.log(np.exp(ref_c).sum(1, keepdims=True))
        assert s.kl == pytest.approx((np.exp(log_b) * (log_b - log_c)).sum(1).mean(), rel=1e-4)
        cos = (b[mask] * c[mask]).sum(1) / np.linalg.norm(b[mask], axis=1) / np.linalg.norm(c[mask], axis=1)
        assert s.cosine == pytest.approx(cos.mean(), rel=1e-4)


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="output shapes differ"):
        row_metrics(np.zeros((3, 2)), np.zeros((3, 4)), None)


def _outputs_with_hard_cases(rows: int, classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    b = (rng.normal(size=(classes, rows)) * 30).astype(np.float32)  # softmax terms far below expf's range
    c = (b + rng.normal(scale=0.5, size=b.shape)).astype(np.float32)
    c[:, :50] = b[:, :50]  # identical rows
    b[1, 50:60] = b[3, 50:60] = 1e3  # ties at the top: the first index wins, as numpy's argmax
    c[:, 60:70] = 0.0  # a zero vector: cosine is defined as 1
    return b, c, rng.integers(0, classes, rows)


@pytest.mark.skipif(not kernel_available(), reason="the compiled kernel was not built on this machine")
@pytest.mark.parametrize("labelled", [True, False])
def test_compiled_kernel_matches_the_numpy_path(labelled: bool) -> None:
    b, c, labels = _outputs_with_hard_cases(rows=5003, classes=7)  # not a multiple of the kernel's block
    labels = labels if labelled else None
    fused, plain = row_metrics(b, c, labels), row_metrics(b, c, labels, fused=False)
    np.testing.assert_array_equal(fused.table[0], plain.table[0])  # agreement, exactly
    np.testing.assert_array_equal(fused.table[4:], plain.table[4:])  # correctness counts, exactly
    np.testing.assert_allclose(fused.table[1:4], plain.table[1:4], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(fused.max_abs, plain.max_abs, rtol=1e-6)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_non_finite_outputs_are_compared_not_hidden() -> None:
    b, c, labels = _outputs_with_hard_cases(rows=300, classes=4)
    c[1, 7] = np.nan
    c[0, 8] = np.inf
    rm = row_metrics(b, c, labels)  # the kernel assumes finite values: these take the numpy path
    assert np.isnan(rm.column("kl")[7]) and np.isnan(rm.max_abs[7])
    assert np.isinf(rm.max_abs[8])
    np.testing.assert_array_equal(rm.table[:, 100:], row_metrics(b, c, labels, fused=False).table[:, 100:])
