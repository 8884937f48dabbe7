"""Classification data readers, chosen by file suffix.

A dataset is a set of equally long columns: the model inputs (by input name), optional
`labels`, and one column per slice dimension. New formats register a reader here.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from runners.datacheck import DEFAULT_MAX_SLICE_VALUES, DataError, check_slice_values
from runners.families.classification.metrics import SliceIndex, build_slice_index

__all__ = ["DataError", "EvalData", "READERS", "check_labels_fit", "load_eval_data"]

LABELS = "labels"


@dataclass
class EvalData:
    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    slices: dict[str, np.ndarray]
    _index: SliceIndex | None = field(default=None, repr=False)

    @property
    def rows(self) -> int:
        return len(next(iter(self.inputs.values())))

    @property
    def slice_index(self) -> SliceIndex:
        """Rows grouped by slice value, built on first use and shared by every job on this data."""
        if self._index is None:
            self._index = build_slice_index(self.slices, self.rows)
        return self._index


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npz archive ({exc})") from exc


READERS: dict[str, Callable[[Path], dict[str, np.ndarray]]] = {".npz": _read_npz}


def _rows(mask: np.ndarray) -> str:
    where = np.flatnonzero(mask)
    return f"{len(where)} row(s) (first: {', '.join(str(i) for i in where[:5])})"


def _labels(path: Path, labels: np.ndarray) -> np.ndarray:
    """Integer class indices, or a DataError naming the rows that are not."""
    if labels.dtype.kind == "f":
        bad = ~np.isfinite(labels) | (labels != np.round(labels))
        if bad.any():
            raise DataError(f"{path}: labels must be integer class indices; {_rows(bad)} are not")
    elif labels.dtype.kind not in "iub":
        raise DataError(f"{path}: labels must be integer class indices, not {labels.dtype}")
    labels = labels.astype(np.int64)
    if (labels < 0).any():
        raise DataError(f"{path}: labels must be class indices >= 0; {_rows(labels < 0)} are negative")
    return labels


def check_labels_fit(path: str | Path, labels: np.ndarray, classes: int) -> None:
    """Labels the model's output cannot name would silently count as wrong answers."""
    outside = labels >= classes
    if outside.any():
        raise DataError(f"{path}: labels must be below the model's {classes} output classes; "
                        f"{_rows(outside)} are not (largest label {int(labels.max())})")


def load_eval_data(path: str | Path, slice_columns: tuple[str, ...] | list[str],
                   max_slice_values: int = DEFAULT_MAX_SLICE_VALUES) -> EvalData:
    """Read a dataset and split its columns into inputs, labels and slices."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: evaluation data file not found")
    reader = READERS.get(path.suffix)
    if reader is None:
        raise DataError(f"{path}: unsupported data format {path.suffix!r} (supported: {', '.join(READERS)})")
    columns = reader(path)
    if not columns:
        raise DataError(f"{path}: holds no arrays")
    lengths = {name: len(col) if col.ndim else 0 for name, col in columns.items()}
    if len(set(lengths.values())) != 1:
        detail = ", ".join(f"{k}={v}" for k, v in lengths.items())
        raise DataError(f"{path}: columns differ in length ({detail})")
    if next(iter(lengths.values())) == 0:
        raise DataError(f"{path}: holds no rows")
    missing = [s for s in slice_columns if s not in columns]
    if missing:
        raise DataError(f"{path}: slice column(s) {missing} not in the file (it has {sorted(columns)})")
    slices = {name: columns.pop(name).astype(str) for name in slice_columns}
    check_slice_values(path, slices, max_slice_values)
    labels = columns.pop(LABELS, None)
    if labels is not None:
        labels = _labels(path, labels)
    if not columns:
        raise DataError(f"{path}: no model input arrays besides labels and slice columns")
    return EvalData(inputs=columns, labels=labels, slices=slices)
