"""Per-row comparison of baseline and candidate outputs, then sums per slice value.

Everything is vectorised: per-row quantities are computed once over all rows, and each
slice dimension costs one grouping pass (bincount / reduceat), not a Python loop per row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class RowMetrics:
    """One entry per evaluated row."""

    agree: np.ndarray  # bool: same top-1 class
    max_abs: np.ndarray  # max |baseline - candidate| over the row's outputs
    mean_abs: np.ndarray
    kl: np.ndarray  # KL(softmax(baseline) || softmax(candidate))
    cosine: np.ndarray
    correct_baseline: np.ndarray | None  # bool, when labels exist
    correct_candidate: np.ndarray | None


@dataclass
class GroupStats:
    """Counts and sums over one slice value (or the aggregate)."""

    n: int
    agree: int
    max_abs: float
    mean_abs: float
    kl: float
    cosine: float
    correct_baseline: int | None
    correct_candidate: int | None
    baseline_only: int | None  # baseline right, candidate wrong
    candidate_only: int | None


def _log_softmax(x: np.ndarray) -> np.ndarray:
    out = x - x.max(axis=1, keepdims=True)
    out -= np.log(np.exp(out).sum(axis=1, keepdims=True))
    return out


def row_metrics(baseline: np.ndarray, candidate: np.ndarray, labels: np.ndarray | None,
                output_kind: str = "logits") -> RowMetrics:
    """Compare two (rows, classes) output matrices row by row."""
    if baseline.shape != candidate.shape:
        raise ValueError(f"output shapes differ: baseline {baseline.shape}, candidate {candidate.shape}")
    b = baseline.reshape(len(baseline), -1).astype(np.float32, copy=False)
    c = candidate.reshape(len(candidate), -1).astype(np.float32, copy=False)
    pred_b, pred_c = b.argmax(axis=1), c.argmax(axis=1)
    diff = np.abs(b - c)
    if output_kind == "probabilities":
        log_b = np.log(np.clip(b, 1e-12, None))
        log_c = np.log(np.clip(c, 1e-12, None))
    else:
        log_b, log_c = _log_softmax(b), _log_softmax(c)
    kl = np.einsum("ij,ij->i", np.exp(log_b), log_b - log_c)
    dot = np.einsum("ij,ij->i", b, c)
    norms = np.sqrt(np.einsum("ij,ij->i", b, b) * np.einsum("ij,ij->i", c, c))
    cosine = np.divide(dot, norms, out=np.ones_like(dot), where=norms > 0)
    correct_b = correct_c = None
    if labels is not None:
        correct_b, correct_c = pred_b == labels, pred_c == labels
    return RowMetrics(agree=pred_b == pred_c, max_abs=diff.max(axis=1), mean_abs=diff.mean(axis=1),
                      kl=kl, cosine=cosine, correct_baseline=correct_b, correct_candidate=correct_c)


def _group(rm: RowMetrics, codes: np.ndarray, groups: int) -> list[GroupStats]:
    """Sums per group code in a few vectorised passes."""
    def sums(values: np.ndarray) -> np.ndarray:
        return np.bincount(codes, weights=values, minlength=groups)

    counts = np.bincount(codes, minlength=groups)
    order = np.argsort(codes, kind="stable")
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    nonempty = counts > 0
    max_abs = np.zeros(groups)
    max_abs[nonempty] = np.maximum.reduceat(rm.max_abs[order], starts[nonempty])
    agree, mean_abs, kl, cos = (sums(rm.agree), sums(rm.mean_abs), sums(rm.kl), sums(rm.cosine))
    paired = rm.correct_baseline is not None and rm.correct_candidate is not None
    if paired:
        cb, cc = rm.correct_baseline, rm.correct_candidate
        right_b, right_c = sums(cb), sums(cc)
        b_only, c_only = sums(cb & ~cc), sums(~cb & cc)
    out = []
    for g in range(groups):
        n = int(counts[g])
        safe = max(n, 1)
        out.append(GroupStats(
            n=n, agree=int(agree[g]), max_abs=float(max_abs[g]), mean_abs=float(mean_abs[g] / safe),
            kl=float(kl[g] / safe), cosine=float(cos[g] / safe),
            correct_baseline=int(right_b[g]) if paired else None,
            correct_candidate=int(right_c[g]) if paired else None,
            baseline_only=int(b_only[g]) if paired else None,
            candidate_only=int(c_only[g]) if paired else None,
        ))
    return out


def slice_stats(rm: RowMetrics, slices: dict[str, np.ndarray]) -> dict[tuple[str, str], GroupStats]:
    """Stats for the aggregate ("all", "all") and every value of every slice dimension."""
    rows = len(rm.agree)
    result = {("all", "all"): _group(rm, np.zeros(rows, dtype=np.intp), 1)[0]}
    for dimension, column in slices.items():
        values, codes = np.unique(column, return_inverse=True)
        for value, stats in zip(values, _group(rm, codes.ravel(), len(values))):
            result[(dimension, str(value))] = stats
    return result
