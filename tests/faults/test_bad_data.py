"""Bad evaluation data and mismatched models are bad input, named, never silently judged: real
ONNX models through real onnxruntime, real .npz files."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from runners.contracts import ArtifactSpec, CheckSpec, JobSpec, SuiteSpec
from runners.harness import run_job


def _job(demo: Path, data: Path, candidate: Path | None = None, slices: tuple[str, ...] = ("digit", "scan")) -> JobSpec:
    suite = SuiteSpec(name="digits", data=str(data), task="classification", slices=slices,
                      checks=(CheckSpec("max_drop", 0.03), CheckSpec("min_agreement", 0.95)), min_slice_size=50)
    return JobSpec(job_id="bad", target="local-cpu", model="digits-mlp", candidate="c",
                   baseline=ArtifactSpec(str(demo / "digits-fp32.onnx"), "onnxruntime"),
                   candidate_artifact=ArtifactSpec(str(candidate or demo / "digits-int8-dynamic.onnx"), "onnxruntime"),
                   suite=suite, batch_size=512)


def _with(demo: Path, target: Path, **columns: np.ndarray) -> Path:
    with np.load(demo / "digits-eval.npz") as archive:
        data = {name: archive[name] for name in archive.files}
    np.savez(target, **(data | columns))
    return target


def _input_error(result) -> str:
    assert result.status == "error" and result.error_kind == "input", (result.status, result.error)
    return result.error


@pytest.mark.parametrize("bad,what", [(10, "below the model's 10 output classes"), (99, "largest label 99"),
                                      (-1, "are negative")])
def test_labels_outside_the_models_classes_are_named(demo_dir: Path, tmp_path: Path, bad: int, what: str) -> None:
    labels = np.load(demo_dir / "digits-eval.npz")["labels"].copy()
    labels[[3, 7]] = bad
    error = _input_error(run_job(_job(demo_dir, _with(demo_dir, tmp_path / "bad.npz", labels=labels))))
    assert "bad.npz" in error and what in error and "2 row(s) (first: 3, 7)" in error


def test_fractional_labels_are_refused_not_truncated(demo_dir: Path, tmp_path: Path) -> None:
    labels = np.load(demo_dir / "digits-eval.npz")["labels"].astype(np.float64)
    labels[5] += 0.25
    error = _input_error(run_job(_job(demo_dir, _with(demo_dir, tmp_path / "float.npz", labels=labels))))
    assert "integer class indices" in error and "1 row(s) (first: 5)" in error
    whole = _with(demo_dir, tmp_path / "whole.npz", labels=np.round(labels).astype(np.float32))
    assert run_job(_job(demo_dir, whole)).status == "finished"  # integer-valued floats are fine


def test_a_candidate_with_another_class_count_is_bad_input_naming_it(demo_dir: Path, tmp_path: Path) -> None:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(demo_dir / "digits-fp32.onnx")
    for init in model.graph.initializer:
        if init.name in ("w2", "b2"):
            array = numpy_helper.to_array(init)
            init.CopyFrom(numpy_helper.from_array(np.concatenate([array, array[..., :1]], axis=-1), init.name))
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 11
    onnx.save(model, tmp_path / "eleven.onnx")
    error = _input_error(run_job(_job(demo_dir, demo_dir / "digits-eval.npz", tmp_path / "eleven.onnx")))
    assert "eleven.onnx" in error and "11 values per row" in error and "10" in error


def test_a_slice_column_with_a_value_per_row_is_refused_naming_it(demo_dir: Path, tmp_path: Path) -> None:
    rows = len(np.load(demo_dir / "digits-eval.npz")["labels"])
    data = _with(demo_dir, tmp_path / "ids.npz", example_id=np.arange(rows).astype(str))
    error = _input_error(run_job(_job(demo_dir, data, slices=("scan", "example_id"))))
    assert "'example_id'" in error and f"{rows} distinct values" in error and "max_slice_values" in error
    spec = _job(demo_dir, data, slices=("scan", "example_id"))
    spec = replace(spec, suite=replace(spec.suite, max_slice_values=rows))
    assert run_job(spec).status == "finished"  # a suite may raise its own limit
