"""The evaluation data reader: columns split into inputs, labels and slices; bad files named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from runners.families.classification.data import DataError, load_eval_data


def test_columns_are_split(tmp_path: Path) -> None:
    path = tmp_path / "eval.npz"
    np.savez(path, pixels=np.zeros((4, 2), np.float32), labels=np.array([0, 1, 0, 1]), lang=np.array(list("aabb")))
    data = load_eval_data(path, ["lang"])
    assert list(data.inputs) == ["pixels"]
    assert data.labels.tolist() == [0, 1, 0, 1]
    assert data.slices["lang"].tolist() == ["a", "a", "b", "b"]
    assert data.rows == 4


@pytest.mark.parametrize("columns,slices,message", [
    ({"x": np.zeros(3), "labels": np.zeros(2)}, [], "columns differ in length"),
    ({"x": np.zeros(3)}, ["lang"], r"slice column\(s\) \['lang'\] not in the file"),
    ({"labels": np.zeros(3), "lang": np.zeros(3)}, ["lang"], "no model input arrays"),
    ({"x": np.zeros(0)}, [], "holds no rows"),
])
def test_bad_columns_are_named(tmp_path: Path, columns: dict, slices: list[str], message: str) -> None:
    path = tmp_path / "eval.npz"
    np.savez(path, **columns)
    with pytest.raises(DataError, match=message):
        load_eval_data(path, slices)


def test_unreadable_and_unknown_files(tmp_path: Path) -> None:
    broken = tmp_path / "eval.npz"
    broken.write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"eval\.npz: not a readable \.npz archive"):
        load_eval_data(broken, [])
    with pytest.raises(DataError, match="unsupported data format '.csv'"):
        (tmp_path / "eval.csv").write_text("a,b\n")
        load_eval_data(tmp_path / "eval.csv", [])
    with pytest.raises(DataError, match="evaluation data file not found"):
        load_eval_data(tmp_path / "absent.npz", [])
