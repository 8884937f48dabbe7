"""Per-row comparison of baseline and candidate outputs, then sums per slice value.

Everything is vectorised and sized for 10^5-10^6 rows: outputs arrive class-major
(classes x rows) so that every per-row reduction runs across contiguous rows, per-row
quantities are computed once, and all slice values of all dimensions are summed in one
matrix product with an indicator matrix built once per dataset.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import numpy as np

# Above this many slice values in total, sums use bincount instead of the dense indicator product.
_DENSE_GROUP_LIMIT = 256

# Output values per block of rows: small enough that a block's temporaries stay in cache.
_BLOCK_VALUES = 1 << 18

# Row quantities summed per slice value, in the column order of RowMetrics.table.
QUANTITIES = ("agree", "mean_abs", "kl", "cosine", "correct_baseline", "correct_candidate",
              "baseline_only", "candidate_only", "nonfinite")
# Their rows in the table, by name (the C kernel writes the same order).
(_AGREE, _MEAN_ABS, _KL, _COSINE, _CORRECT_B, _CORRECT_C, _B_ONLY, _C_ONLY,
 _NONFINITE) = (QUANTITIES.index(q) for q in QUANTITIES)


@dataclass
class SliceIndex:
    """The grouping of a dataset's rows by every slice value; built once per dataset."""

    keys: list[tuple[str, str]]  # (dimension, value) per group, aggregate first
    counts: np.ndarray  # rows per group
    codes: list[np.ndarray]  # per dimension: group code per row
    orders: list[np.ndarray]  # per dimension: rows sorted by code, for per-group maxima
    offsets: list[int]  # per dimension: index of its first group in `keys`
    indicator: np.ndarray | None  # (groups, rows) float32 one-hot, when groups are few


def build_slice_index(slices: dict[str, np.ndarray], rows: int) -> SliceIndex:
    keys: list[tuple[str, str]] = [("all", "all")]
    counts, codes, orders, offsets = [np.array([rows])], [], [], []
    for dimension, column in slices.items():
        values, inverse = np.unique(column, return_inverse=True)
        inverse = inverse.ravel().astype(np.int32)
        offsets.append(len(keys))
        keys += [(dimension, str(v)) for v in values]
        codes.append(inverse)
        orders.append(np.argsort(inverse, kind="stable"))
        counts.append(np.bincount(inverse, minlength=len(values)))
    indicator = None
    if len(keys) <= _DENSE_GROUP_LIMIT:
        indicator = np.zeros((len(keys), rows), dtype=np.float32)
        indicator[0] = 1.0
        for offset, code in zip(offsets, codes):
            indicator[offset + code, np.arange(rows)] = 1.0
    return SliceIndex(keys, np.concatenate(counts), codes, orders, offsets, indicator)


@dataclass
class RowMetrics:
    """Per-row quantities: `table` is (len(QUANTITIES), rows) float32; max_abs apart (a max, not a sum)."""

    table: np.ndarray
    max_abs: np.ndarray
    labelled: bool

    def column(self, name: str) -> np.ndarray:
        return self.table[QUANTITIES.index(name)]


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
    nonfinite: int = 0  # rows where either model's output holds a NaN or an infinity


def _top1(shifted: np.ndarray, selector: np.ndarray, hits: np.ndarray) -> np.ndarray:
    """argmax over classes from class-major outputs minus their row maxima (first index on ties)."""
    np.equal(shifted, 0.0, out=hits, casting="unsafe")
    index_and_count = selector @ hits  # row 0: sum of k over maxima; row 1: number of maxima
    top = index_and_count[0].astype(np.int64)
    ties = np.flatnonzero(index_and_count[1] > 1)
    if len(ties):
        top[ties] = shifted[:, ties].argmax(axis=0)
    return top


def _chunk(b: np.ndarray, c: np.ndarray, labels: np.ndarray | None, table: np.ndarray,
           max_abs: np.ndarray) -> None:
    """Per-row quantities for a block of rows, written into `table` and `max_abs` (views)."""
    classes = len(b)
    selector = np.stack([np.arange(classes, dtype=np.float32), np.ones(classes, np.float32)])
    hits = np.empty_like(b)
    max_b, max_c = b.max(axis=0), c.max(axis=0)
    shifted_b, shifted_c = b - max_b, c - max_c
    top_b, top_c = _top1(shifted_b, selector, hits), _top1(shifted_c, selector, hits)
    table[_AGREE] = top_b == top_c
    diff = b - c
    exp_b = np.exp(shifted_b, out=shifted_b)
    total_b = exp_b.sum(axis=0)
    total_c = np.exp(shifted_c, out=shifted_c).sum(axis=0)
    # KL(p_b || p_c) = sum_k p_b,k (b_k - c_k) - logsumexp(b) + logsumexp(c)
    table[_KL] = np.einsum("ij,ij->j", exp_b, diff) / total_b - max_b - np.log(total_b) + max_c + np.log(total_c)
    np.abs(diff, out=diff)
    diff.max(axis=0, out=max_abs)
    table[_MEAN_ABS] = diff.sum(axis=0) / classes
    norms = np.sqrt(np.einsum("ij,ij->j", b, b) * np.einsum("ij,ij->j", c, c))
    dot = np.einsum("ij,ij->j", b, c)
    table[_COSINE] = np.divide(dot, norms, out=np.ones_like(dot), where=norms > 0)
    table[_NONFINITE] = ~(np.isfinite(b).all(axis=0) & np.isfinite(c).all(axis=0))
    if labels is not None:
        right_b, right_c = top_b == labels, top_c == labels
        table[_CORRECT_B], table[_CORRECT_C] = right_b, right_c
        table[_B_ONLY], table[_C_ONLY] = right_b & ~right_c, ~right_b & right_c


def _load_kernel() -> ctypes.CDLL | None:
    """The fused C kernel built at install (runners/_rowmetrics.c), or None where it was not built."""
    try:
        from runners import _rowmetrics
    except ImportError:
        return None
    library = ctypes.CDLL(_rowmetrics.__file__)
    pointer = ctypes.c_void_p
    library.revalidator_row_metrics.argtypes = [pointer, pointer, ctypes.c_int64, ctypes.c_int64, pointer,
                                                pointer, pointer]
    library.revalidator_row_metrics.restype = None
    library.revalidator_all_finite.argtypes = [pointer, ctypes.c_int64]
    library.revalidator_all_finite.restype = ctypes.c_int
    return library


_KERNEL = _load_kernel()


def kernel_available() -> bool:
    return _KERNEL is not None


def _fused(b: np.ndarray, c: np.ndarray, labels: np.ndarray | None, table: np.ndarray,
           max_abs: np.ndarray) -> bool:
    """Run the compiled kernel when it exists and the outputs are finite (it is built with
    -ffast-math, so non-finite values take the numpy path); False when it did not run."""
    if _KERNEL is None:
        return False
    b, c = np.ascontiguousarray(b), np.ascontiguousarray(c)
    if not (_KERNEL.revalidator_all_finite(b.ctypes.data, b.size)
            and _KERNEL.revalidator_all_finite(c.ctypes.data, c.size)):
        return False
    label_pointer = None
    if labels is not None:
        labels = np.ascontiguousarray(labels, dtype=np.int64)
        label_pointer = labels.ctypes.data
    _KERNEL.revalidator_row_metrics(b.ctypes.data, c.ctypes.data, b.shape[0], b.shape[1], label_pointer,
                                    table.ctypes.data, max_abs.ctypes.data)
    return True


def row_metrics(baseline: np.ndarray, candidate: np.ndarray, labels: np.ndarray | None,
                output_kind: str = "logits", fused: bool = True) -> RowMetrics:
    """Compare class-major (classes, rows) outputs row by row: in one pass of the compiled
    kernel where it is built and the outputs are finite, else in cache-sized numpy blocks."""
    if baseline.shape != candidate.shape:
        raise ValueError(f"output shapes differ: baseline {baseline.shape}, candidate {candidate.shape}")
    b = baseline.astype(np.float32, copy=False)
    c = candidate.astype(np.float32, copy=False)
    if output_kind == "probabilities":  # compare in log space, as for logits
        b, c = np.log(np.clip(b, 1e-12, None)), np.log(np.clip(c, 1e-12, None))
    rows = b.shape[1]
    table = np.zeros((len(QUANTITIES), rows), dtype=np.float32)
    max_abs = np.empty(rows, dtype=np.float32)
    if fused and _fused(b, c, labels, table, max_abs):
        return RowMetrics(table=table, max_abs=max_abs, labelled=labels is not None)
    step = max(1024, _BLOCK_VALUES // max(len(b), 1))
    blocks = [slice(lo, min(lo + step, rows)) for lo in range(0, rows, step)]

    for block in blocks:
        _chunk(b[:, block], c[:, block], None if labels is None else labels[block], table[:, block],
               max_abs[block])
    return RowMetrics(table=table, max_abs=max_abs, labelled=labels is not None)


def slice_stats(rm: RowMetrics, index: SliceIndex) -> dict[tuple[str, str], GroupStats]:
    """Stats for the aggregate ("all", "all") and every value of every slice dimension."""
    if index.indicator is not None:
        sums = index.indicator @ rm.table.T
    else:
        sums = np.vstack([rm.table.sum(axis=1, dtype=np.float64)] + [
            np.stack([np.bincount(code, weights=col, minlength=len(counts))
                      for col in rm.table], axis=1)
            for code, counts in zip(index.codes, _split_counts(index)[1:])])
    maxima = np.zeros(len(index.keys))
    maxima[0] = rm.max_abs.max()
    for offset, order, counts in zip(index.offsets, index.orders, _split_counts(index)[1:]):
        starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
        maxima[offset:offset + len(counts)] = np.maximum.reduceat(rm.max_abs[order], starts)
    out = {}
    for g, key in enumerate(index.keys):
        n = int(index.counts[g])
        s = sums[g]
        mean = max(n, 1)
        labelled = rm.labelled
        out[key] = GroupStats(
            n=n, agree=round(float(s[_AGREE])), max_abs=float(maxima[g]), mean_abs=float(s[_MEAN_ABS]) / mean,
            kl=float(s[_KL]) / mean, cosine=float(s[_COSINE]) / mean,
            correct_baseline=round(float(s[_CORRECT_B])) if labelled else None,
            correct_candidate=round(float(s[_CORRECT_C])) if labelled else None,
            baseline_only=round(float(s[_B_ONLY])) if labelled else None,
            candidate_only=round(float(s[_C_ONLY])) if labelled else None,
            nonfinite=round(float(s[_NONFINITE])))
    return out


def slice_members(index: SliceIndex, key: tuple[str, str]) -> np.ndarray:
    """The row indices of one slice value (every row for the aggregate)."""
    g = index.keys.index(key)
    if g == 0:
        return np.arange(int(index.counts[0]))
    dimension = max(d for d, offset in enumerate(index.offsets) if offset <= g)
    return np.flatnonzero(index.codes[dimension] == g - index.offsets[dimension])


def _split_counts(index: SliceIndex) -> list[np.ndarray]:
    """Group counts of the aggregate, then of each dimension."""
    bounds = [0] + index.offsets + [len(index.keys)]
    return [index.counts[a:b] for a, b in zip(bounds, bounds[1:])]
