"""Evaluation data readers, chosen by file suffix.

A dataset is a set of equally long columns: the model inputs (by input name), optional
`labels`, and one column per slice dimension. New formats register a reader here.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from runners.metrics import SliceIndex, build_slice_index

LABELS = "labels"


class DataError(ValueError):
    """The evaluation data cannot be used; the message names the file and the problem."""


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


def load_eval_data(path: str | Path, slice_columns: tuple[str, ...] | list[str]) -> EvalData:
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
    labels = columns.pop(LABELS, None)
    if labels is not None:
        labels = labels.astype(np.int64)
    if not columns:
        raise DataError(f"{path}: no model input arrays besides labels and slice columns")
    return EvalData(inputs=columns, labels=labels, slices=slices)
