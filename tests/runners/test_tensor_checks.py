"""Tensor-level comparison: the atol/rtol element rule and the error statistics, per slice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from runners.contracts import CheckSpec
from runners.families.classification.data import load_eval_data
from runners.families.classification.evaluate import judge_outputs, run_model
from runners.families.classification.metrics import build_slice_index
from runners.families.classification.tensor_checks import tensor_stats
from tests.runners.test_harness import job


def test_element_rule_and_statistics_per_slice() -> None:
    rng = np.random.default_rng(4)
    rows = 1000
    b = rng.normal(size=(6, rows)).astype(np.float32)
    c = b.copy()
    group = rng.choice(["x", "y"], rows)
    c[:, group == "y"] += 0.5  # only slice y moves
    stats = tensor_stats(b, c, build_slice_index({"g": group}, rows), atol=0.1, rtol=0.01)
    x, y, everything = stats[("g", "x")], stats[("g", "y")], stats[("all", "all")]
    assert x.within == x.values == 6 * (group == "x").sum() and x.p99_abs == 0.0
    expected_y = (0.5 <= 0.1 + 0.01 * np.abs(b[:, group == "y"])).sum()
    assert y.within == expected_y and y.median_abs == pytest.approx(0.5, abs=1e-6)
    assert everything.values == 6 * rows and everything.within == x.within + y.within
    diffs = np.abs(c - b)
    assert everything.p99_abs == pytest.approx(np.percentile(diffs, 99)) and everything.max_abs == diffs.max()


def test_tensor_checks_on_real_quantized_models(demo_dir: Path) -> None:
    checks = (CheckSpec("min_within_tolerance", 0.99), CheckSpec("max_median_abs_diff", 0.5),
              CheckSpec("max_p99_abs_diff", 2.0))
    spec = job(demo_dir, "digits-w8a3.onnx", checks=checks, slice_checks=checks, tensor_tolerance={"atol": 0.5, "rtol": 0.05})
    data = load_eval_data(spec.suite.data, spec.suite.slices)
    outputs = [run_model(a, {}, data, 256) for a in (spec.baseline, spec.candidate_artifact)]
    results = judge_outputs(*outputs, data, spec.suite)
    within = {(r.dimension, r.value): r for r in results if r.check == "min_within_tolerance"}
    # The low-bit candidate's logits move most on faint scans: the element rule fails there first.
    assert within[("scan", "faint")].candidate < within[("scan", "clean")].candidate
    assert within[("scan", "faint")].verdict == "fail"
    # Truncation lowers every activation, so absolute logit errors grow with the logits: largest
    # on full-contrast scans, whose top-1 still holds. The p99 rule sees that, the relative rule
    # above singles out the faint scans.
    p99 = {(r.dimension, r.value): r for r in results if r.check == "max_p99_abs_diff"}
    assert p99[("scan", "clean")].candidate > p99[("scan", "faint")].candidate
    assert p99[("scan", "clean")].verdict == "fail"
    assert {"median_abs", "p99_abs", "max_abs", "elements"} <= set(p99[("all", "all")].statistic)
