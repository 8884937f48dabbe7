"""Non-finite outputs never pass: real ONNX models that emit NaN, through real onnxruntime and
the real harness, fail every check of every slice that holds such a row, in every family."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from runners.contracts import ArtifactSpec, CheckSpec, JobSpec, SuiteSpec
from runners.harness import run_job
from tests.runners import test_generative as generative

EVERY_CLASSIFICATION_CHECK = tuple(CheckSpec(name, limit) for name, limit in (
    ("max_drop", 0.5), ("min_agreement", 0.1), ("max_mean_kl", 10.0), ("max_abs_diff", 1e6),
    ("max_mean_abs_diff", 1e6), ("min_cosine", 0.0), ("min_within_tolerance", 0.5),
    ("max_median_abs_diff", 1e6), ("max_p99_abs_diff", 1e6)))


def _with_nan_bias(source: Path, target: Path, column: int | None) -> Path:
    """The model with the last layer's bias set to NaN in one column (or in every column)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(source)
    last = max((i for i in model.graph.initializer if i.name.startswith("b") and i.name[1:].isdigit()),
               key=lambda i: int(i.name[1:]))
    bias = numpy_helper.to_array(last).copy()
    bias[slice(None) if column is None else column] = np.nan
    last.CopyFrom(numpy_helper.from_array(bias, last.name))
    onnx.save(model, target)
    return target


def _nan_on_faint_scans(source: Path, target: Path) -> Path:
    """logits + 0 * sqrt(sum(pixels) - 100): NaN exactly on rows whose pixels sum below 100."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(source)
    graph = model.graph
    output = graph.output[0].name
    for node in graph.node:
        node.output[:] = ["raw_logits" if o == output else o for o in node.output]
    graph.initializer.extend([numpy_helper.from_array(np.array([1], np.int64), "axes"),
                              numpy_helper.from_array(np.array(100, np.float32), "threshold"),
                              numpy_helper.from_array(np.array(0, np.float32), "zero")])
    graph.node.extend([
        helper.make_node("ReduceSum", ["pixels", "axes"], ["pixel_sum"], keepdims=1),
        helper.make_node("Sub", ["pixel_sum", "threshold"], ["margin"]),
        helper.make_node("Sqrt", ["margin"], ["root"]),
        helper.make_node("Mul", ["root", "zero"], ["poison"]),
        helper.make_node("Add", ["raw_logits", "poison"], [output])])
    onnx.save(model, target)
    return target


def classification_job(demo: Path, candidate: Path) -> JobSpec:
    suite = SuiteSpec(name="digits", data=str(demo / "digits-eval.npz"), task="classification",
                      slices=("digit", "scan"), checks=EVERY_CLASSIFICATION_CHECK, min_slice_size=50,
                      tensor_tolerance={"atol": 1e6, "rtol": 0.0})
    return JobSpec(job_id="nan", target="local-cpu", model="digits-mlp", candidate="nan",
                   baseline=ArtifactSpec(str(demo / "digits-fp32.onnx"), "onnxruntime"),
                   candidate_artifact=ArtifactSpec(str(candidate), "onnxruntime"), suite=suite, batch_size=512)


@pytest.mark.parametrize("column", [3, None], ids=["one-logit-column", "every-logit"])
def test_nan_logits_fail_every_check_on_every_slice(demo_dir: Path, tmp_path: Path, column: int | None) -> None:
    candidate = _with_nan_bias(demo_dir / "digits-fp32.onnx", tmp_path / "nan.onnx", column)
    result = run_job(classification_job(demo_dir, candidate))
    assert result.status == "finished" and result.verdict == "fail"
    assert {c.check for c in result.checks} == {c.name for c in EVERY_CLASSIFICATION_CHECK}
    passed = [(c.check, c.value) for c in result.checks if c.verdict != "fail"]
    assert not passed
    aggregate = [c for c in result.checks if c.dimension == "all"]
    assert all(c.statistic.get("nonfinite_rows", c.statistic.get("nonfinite_elements")) for c in aggregate)
    assert next(c for c in aggregate if c.check == "max_drop").statistic["nonfinite_rows"] == 1482


def test_nan_on_some_rows_fails_only_the_slices_holding_them(demo_dir: Path, tmp_path: Path) -> None:
    candidate = _nan_on_faint_scans(demo_dir / "digits-fp32.onnx", tmp_path / "nan-faint.onnx")
    result = run_job(classification_job(demo_dir, candidate))
    by_scan = {c.value: c for c in result.checks if c.dimension == "scan" and c.check == "max_drop"}
    assert by_scan["faint"].verdict == "fail" and by_scan["faint"].statistic["nonfinite_rows"] == by_scan["faint"].n
    assert by_scan["clean"].verdict == "pass" and "nonfinite_rows" not in by_scan["clean"].statistic
    assert by_scan["noisy"].verdict == "pass"
    # Each digit slice holds a few faint rows: too few to judge its accuracy, enough to fail.
    digits = [c for c in result.checks if c.dimension == "digit"]
    assert digits and all(c.verdict == "fail" for c in digits)
    assert result.verdict == "fail"


def test_a_tiny_slice_with_a_nan_row_fails_rather_than_insufficient(demo_dir: Path, tmp_path: Path) -> None:
    candidate = _nan_on_faint_scans(demo_dir / "digits-fp32.onnx", tmp_path / "nan-faint.onnx")
    spec = classification_job(demo_dir, candidate)
    spec = replace(spec, suite=replace(spec.suite, min_slice_size=10_000))
    result = run_job(spec)
    faint = [c for c in result.checks if c.value == "faint"]
    clean = [c for c in result.checks if c.value == "clean"]
    assert faint and all(c.verdict == "fail" for c in faint)
    assert clean and all(c.verdict == "insufficient" for c in clean)


def test_nan_step_logits_fail_every_generation_check(demo_dir: Path, tmp_path: Path) -> None:
    candidate = _with_nan_bias(demo_dir / "charlm-fp32.onnx", tmp_path / "charlm-nan.onnx", 5)
    spec = generative.job(demo_dir, "charlm-fp32.onnx")
    spec.candidate_artifact = ArtifactSpec(str(candidate), "onnxruntime")
    result = run_job(spec)
    assert result.status == "finished" and result.verdict == "fail"
    assert result.checks and all(c.verdict == "fail" for c in result.checks)
    aggregate = next(c for c in result.checks if c.dimension == "all" and c.check == "max_mean_step_kl")
    assert aggregate.statistic["nonfinite_prompts"] == aggregate.n
