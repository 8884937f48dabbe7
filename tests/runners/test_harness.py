"""The harness on real quantized models: verdicts per slice, insufficient slices, provenance, errors."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from runners.contracts import ArtifactSpec, CheckSpec, JobSpec, SuiteSpec
from runners.families.classification.data import load_eval_data
from runners.families.classification.evaluate import judge_outputs, run_model
from runners.harness import candidate_verdict, run_job

CHECKS = (CheckSpec("max_drop", 0.03), CheckSpec("min_agreement", 0.95))
SLICE_CHECKS = (CheckSpec("max_drop", 0.08), CheckSpec("min_agreement", 0.90))


def suite(demo: Path, **overrides) -> SuiteSpec:
    base = SuiteSpec(name="digits", data=str(demo / "digits-eval.npz"), task="classification",
                     slices=("digit", "scan"), checks=CHECKS, slice_checks=SLICE_CHECKS, min_slice_size=50)
    return replace(base, **overrides)


def job(demo: Path, candidate: str, runner: str = "onnxruntime", **suite_overrides) -> JobSpec:
    quant = {"method": "static-qdq", "weight_bits": 4, "activation_bits": 2,
             "calibration_set": str(demo / "calibration.npz")}
    return JobSpec(job_id="j1", target="local-cpu", model="digits-mlp", candidate=candidate,
                   baseline=ArtifactSpec(str(demo / "digits-fp32.onnx"), "onnxruntime"),
                   candidate_artifact=ArtifactSpec(str(demo / candidate), runner, quant),
                   suite=suite(demo, **suite_overrides), batch_size=512, config_hash="cfg123")


def by_slice(result, check: str) -> dict[tuple[str, str], object]:
    return {(c.dimension, c.value): c for c in result.checks if c.check == check}


def test_planted_slice_failure_with_aggregate_within_tolerance(demo_dir: Path) -> None:
    result = run_job(job(demo_dir, "digits-w8a3.onnx"))
    assert result.status == "finished" and result.verdict == "fail"
    drop, agreement = by_slice(result, "max_drop"), by_slice(result, "min_agreement")
    # The aggregate holds...
    assert drop[("all", "all")].verdict == "pass"
    assert 0 < -drop[("all", "all")].delta <= 0.03
    assert agreement[("all", "all")].verdict == "pass"
    # ...while the faint scans regress far beyond their tolerance, with strong paired evidence.
    faint = drop[("scan", "faint")]
    assert faint.verdict == "fail" and -faint.delta > 0.15
    assert faint.statistic["mcnemar_p"] < 1e-4
    assert faint.statistic["baseline_only"] > faint.statistic["candidate_only"]
    assert agreement[("scan", "faint")].verdict == "fail"
    assert agreement[("scan", "faint")].statistic["wilson_high"] < 0.9
    failing = {(c.dimension, c.value) for c in result.checks if c.verdict == "fail"}
    assert failing == {("scan", "faint")}


@pytest.mark.parametrize("candidate,runner", [("digits-int8-dynamic.onnx", "onnxruntime"),
                                              ("digits-int8-static.onnx", "onnxruntime"),
                                              ("digits-int8-dynamic.ts", "torch")])
def test_clean_int8_candidates_pass_every_slice(demo_dir: Path, candidate: str, runner: str) -> None:
    result = run_job(job(demo_dir, candidate, runner))
    assert result.verdict == "pass", [c for c in result.checks if c.verdict != "pass"]
    assert len(result.checks) == 2 * (1 + 10 + 3)  # two checks on aggregate, ten digits, three scans


def test_small_slice_is_insufficient_never_passed(demo_dir: Path) -> None:
    result = run_job(job(demo_dir, "digits-int8-dynamic.onnx", min_slice_size=100))
    faint = [c for c in result.checks if c.value == "faint"]
    assert faint and all(c.verdict == "insufficient" and c.n < 100 for c in faint)
    assert result.verdict == "pass"  # reported, but the aggregate and the other slices decide
    strict = run_job(job(demo_dir, "digits-int8-dynamic.onnx", min_slice_size=100, insufficient_blocks_gate=True))
    assert strict.verdict == "insufficient"
    too_small = run_job(job(demo_dir, "digits-int8-dynamic.onnx", min_slice_size=10_000))
    assert too_small.verdict == "insufficient"


def test_the_planted_failure_hides_when_the_slice_is_too_small_to_judge(demo_dir: Path) -> None:
    result = run_job(job(demo_dir, "digits-w8a3.onnx", min_slice_size=100))
    assert all(c.verdict == "insufficient" for c in result.checks if c.value == "faint")
    assert result.verdict == "pass"


def test_outputs_are_deterministic(demo_dir: Path) -> None:
    first, second = (run_job(job(demo_dir, "digits-w8a3.onnx")) for _ in range(2))
    assert [(c.candidate, c.verdict) for c in first.checks] == [(c.candidate, c.verdict) for c in second.checks]


def test_provenance_is_complete(demo_dir: Path) -> None:
    result = run_job(job(demo_dir, "digits-w8a3.onnx"))
    prov = result.provenance

    def sha(name: str) -> str:
        return hashlib.sha256((demo_dir / name).read_bytes()).hexdigest()

    assert prov["baseline"]["sha256"] == sha("digits-fp32.onnx")
    assert prov["candidate"]["sha256"] == sha("digits-w8a3.onnx")
    assert prov["suite"]["data_sha256"] == sha("digits-eval.npz")
    assert prov["calibration_set_sha256"] == sha("calibration.npz")
    assert prov["quantization"] == {"method": "static-qdq", "weight_bits": 4, "activation_bits": 2,
                                    "calibration_set": str(demo_dir / "calibration.npz")}
    assert prov["suite"]["checks"] == {"max_drop": 0.03, "min_agreement": 0.95}
    assert prov["suite"]["slice_checks"] == {"max_drop": 0.08, "min_agreement": 0.90}
    assert prov["config_hash"] == "cfg123" and prov["batch_size"] == 512
    components = prov["fingerprint"]["components"]
    for key in ("kernel", "os", "python", "cpu_model", "cpu_flags", "onnxruntime", "torch"):
        assert components[key]
    assert len(prov["fingerprint"]["hash"]) == 16
    assert prov["fingerprint"]["probes"]["nvidia"]["status"] in ("ok", "not_applicable")


def test_corrupt_candidate_is_an_input_error_naming_the_file(demo_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "digits-w8a3.onnx"
    broken.write_bytes(b"\x00garbage")
    spec = job(demo_dir, "digits-w8a3.onnx")
    spec = replace(spec, candidate_artifact=replace(spec.candidate_artifact, path=str(broken)))
    result = run_job(spec)
    assert (result.status, result.verdict, result.error_kind) == ("error", "error", "input")
    assert str(broken) in result.error and "cannot load the model" in result.error
    assert result.provenance["candidate"]["sha256"] == hashlib.sha256(b"\x00garbage").hexdigest()


def test_label_checks_without_labels_are_refused(demo_dir: Path, tmp_path: Path) -> None:
    data = load_eval_data(demo_dir / "digits-eval.npz", ["digit", "scan"])
    unlabeled = tmp_path / "unlabeled.npz"
    np.savez(unlabeled, pixels=data.inputs["pixels"], digit=data.slices["digit"], scan=data.slices["scan"])
    result = run_job(job(demo_dir, "digits-int8-dynamic.onnx", data=str(unlabeled)))
    assert result.error_kind == "input" and "need a 'labels' array" in result.error
    # Output-only checks work without labels.
    ok = run_job(job(demo_dir, "digits-int8-dynamic.onnx", data=str(unlabeled),
                     checks=(CheckSpec("min_agreement", 0.95), CheckSpec("max_mean_kl", 0.01)), slice_checks=None))
    assert ok.verdict == "pass"


def test_every_check_kind_is_judged(demo_dir: Path) -> None:
    data = load_eval_data(demo_dir / "digits-eval.npz", ["scan"])
    s = suite(demo_dir, slices=("scan",), slice_checks=None, checks=tuple(
        CheckSpec(n, v) for n, v in [("max_drop", 0.03), ("max_relative_drop", 0.03), ("min_accuracy", 0.9),
                                     ("min_agreement", 0.95), ("max_mean_kl", 0.2), ("max_abs_diff", 100.0),
                                     ("max_mean_abs_diff", 10.0), ("min_cosine", 0.9)]))
    base = run_model(ArtifactSpec(str(demo_dir / "digits-fp32.onnx"), "onnxruntime"), {}, data, 1024)
    cand = run_model(ArtifactSpec(str(demo_dir / "digits-w8a3.onnx"), "onnxruntime"), {}, data, 1024)
    checks = judge_outputs(base, cand, data, s)
    faint = {c.check: c for c in checks if c.value == "faint"}
    assert set(faint) == {c.name for c in s.checks}
    assert faint["max_relative_drop"].verdict == "fail"
    assert faint["min_accuracy"].verdict == "fail" and faint["min_accuracy"].candidate < 0.9
    assert faint["min_cosine"].candidate < 1.0
    same = judge_outputs(base, base.copy(), data, s)
    assert all(c.verdict == "pass" for c in same)
    assert candidate_verdict(same, s) == "pass"

