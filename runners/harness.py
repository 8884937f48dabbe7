"""The validation harness: what one job does on its target.

Probe the stack, hash every input, run baseline then candidate over the same rows in
batches, compare them per slice, judge every check, and return a JobResult with the
verdicts and the provenance needed to reproduce them, with what the process actually loaded.
Never raises: a failure becomes the job's error, classified as bad input, a stale runtime in
the worker, or internal.
"""

from __future__ import annotations

import json
import time
import traceback
from typing import Any

import numpy as np

from runners.backends import ArtifactError, make_runner
from runners import catalogue as cat
from runners.baseline_cache import BaselineCache, baseline_key
from runners.checks import judge
from runners.contracts import ERROR, ArtifactSpec, CheckResult, JobResult, JobSpec, SuiteSpec
from runners.decision import Policy, attach_evidence, decide_run, verdict_for
from runners.data import DataError, EvalData, check_labels_fit, load_eval_data
from runners.external import compare, results_for
from runners.generative import LM_RUNNERS, GenerationSettings, generate, judge_generations, load_inputs
from runners.hashing import artifact_digests, sha256_path
from runners.loaded import StaleRuntime, check_loaded, installed_runtimes
from runners.metrics import RowMetrics, SliceIndex, row_metrics, slice_members, slice_stats
from runners import rowoutputs
from runners.probes import probe_stack
from runners.tensor_checks import judge_tensor, tensor_stats


def run_model(artifact: ArtifactSpec, options: dict[str, Any], data: EvalData, batch_size: int,
              runtime: dict[str, Any] | None = None) -> np.ndarray:
    """Load one model, run every row in batches, release it; outputs are class-major. `runtime`
    receives how the runner computed (device, numeric mode, providers, engine), for the provenance."""
    with make_runner(artifact.runner, artifact.path, options) as runner:
        outputs = runner.infer_all(data.inputs, batch_size, class_major=True)
        if runtime is not None:
            runtime.update(runner.describe())
        return outputs


def baseline_outputs(spec: JobSpec, data: EvalData, provenance: dict[str, Any] | None) -> np.ndarray:
    """The baseline's outputs on the suite's rows: made once per key on this node and reused by
    the other candidates' jobs (with how the runner computed them); where they came from goes
    into the provenance. Without a provenance (no digests to key on) they are computed here."""
    options = spec.runner_options.get(spec.baseline.runner, {})
    if provenance is None:
        return run_model(spec.baseline, options, data, spec.batch_size)

    def compute() -> dict[str, np.ndarray]:
        runtime: dict[str, Any] = {}
        outputs = run_model(spec.baseline, options, data, spec.batch_size, runtime)
        return {"outputs": outputs, "runtime": np.array(json.dumps(runtime, default=str))}

    key = baseline_key("classification", spec, provenance, options, spec.batch_size)
    arrays, record = BaselineCache.from_env().fetch(key, spec.job_id, compute)
    provenance["baseline"].setdefault("runtime", {}).update(json.loads(str(arrays["runtime"])))
    provenance["baseline_outputs"] = record
    return arrays["outputs"]


def check_same_shape(spec: JobSpec, baseline: np.ndarray, candidate: np.ndarray) -> None:
    """A candidate with another output shape is another model: bad input, named."""
    if baseline.shape != candidate.shape:
        raise ArtifactError(f"{spec.candidate_artifact.path}: its output has {candidate.shape[0]} values per row, "
                            f"the baseline's ({spec.baseline.path}) {baseline.shape[0]}: not a quantized "
                            f"version of the same model")


def judge_outputs(baseline: np.ndarray, candidate: np.ndarray, data: EvalData,
                  suite: SuiteSpec) -> list[CheckResult]:
    """Every check on the aggregate and on every value of every slice dimension.

    `baseline` and `candidate` are class-major outputs, as run_model returns them."""
    if data.labels is None:
        needing = sorted({c.name for c in suite.checks + (suite.slice_checks or ()) if cat.get(c.name).needs_labels})
        if needing:
            raise DataError(f"{suite.data}: checks {needing} need a 'labels' array, and the file has none")
    else:
        check_labels_fit(suite.data, data.labels, len(baseline))
    rows = row_metrics(baseline, candidate, data.labels, suite.output_kind)
    tensors = None
    if any(cat.get(c.name).family == "tensor" for c in suite.checks + (suite.slice_checks or ())):
        tolerance = suite.tensor_tolerance or {}
        tensors = tensor_stats(baseline, candidate, data.slice_index, tolerance.get("atol", 0.0),
                               tolerance.get("rtol", 0.0))
    results = []
    for (dimension, value), stats in slice_stats(rows, data.slice_index).items():
        for check in suite.checks_for(dimension):
            if cat.get(check.name).family == "tensor":
                results.append(judge_tensor(check, dimension, value, tensors[(dimension, value)],
                                            suite.min_slice_size))
            else:
                results.append(judge(check, dimension, value, stats, suite.min_slice_size, suite.confidence))
    attach_evidence(results, Policy.of(suite), _row_magnitudes(rows, data.slice_index))
    return results


def _row_magnitudes(rows: RowMetrics, index: SliceIndex):
    """The per-row values of a mean-over-rows check on its slice, for the bootstrap."""
    def of(check: CheckResult) -> tuple[np.ndarray, None, str] | None:
        declared = cat.get(check.check)
        if declared.bound != "rows":
            return None
        members = slice_members(index, (check.dimension, check.value))
        return rows.column(declared.row_quantity)[members], None, "above" if declared.upper else "below"
    return of


def run_at_batch_sizes(spec: JobSpec, data: EvalData, provenance: dict[str, Any] | None = None,
                       kept: dict[str, Any] | None = None) -> tuple[list[CheckResult], list[dict[str, Any]]]:
    """The candidate at every production batch size against one baseline run; every check is
    judged at each size (its `batch_size` field says which), and the spread across sizes is reported.

    Dynamic quantization picks activation scales per batch, so the same rows can get different
    predictions at different batch sizes; the fp32 baseline is the batch-independent reference.
    `kept`, where given, receives the outputs at the first size (the run's row outputs)."""
    options = spec.runner_options.get
    runtime = provenance["candidate"].setdefault("runtime", {}) if provenance else None
    baseline = baseline_outputs(spec, data, provenance)
    checks: list[CheckResult] = []
    measured: dict[tuple[str, str, str], list[float]] = {}
    for size in spec.suite.batch_sizes:
        candidate = run_model(spec.candidate_artifact, options(spec.candidate_artifact.runner, {}), data, size,
                              runtime)
        check_same_shape(spec, baseline, candidate)
        if kept is not None and not kept:
            kept.update(outputs=(baseline, candidate), candidate_batch_size=size)
        for check in judge_outputs(baseline, candidate, data, spec.suite):
            measured.setdefault((check.check, check.dimension, check.value), []).append(check.candidate)
            check.batch_size = size
            checks.append(check)
    spread = [{"check": name, "dimension": dimension, "value": value, "min": min(values), "max": max(values),
               "spread": max(values) - min(values)}
              for (name, dimension, value), values in measured.items() if values[0] is not None]
    spread.sort(key=lambda s: -s["spread"])
    return checks, spread


def run_generation(spec: JobSpec, provenance: dict[str, Any]) -> tuple[list[CheckResult], dict[str, Any]]:
    """Both models generate on the same prompts; the checks and the drift curves."""
    settings = GenerationSettings.of(spec.suite)
    runners = {spec.baseline.runner, spec.candidate_artifact.runner}
    if "openai" in runners:  # an OpenAI-compatible endpoint on either side
        from runners.lm_endpoint import run_endpoint_generation

        checks, curves, extra = run_endpoint_generation(spec, settings, provenance)
        provenance.update(extra)
        return checks, curves
    if runners & LM_RUNNERS:
        from runners.lm_generation import run_lm_generation

        checks, curves, extra = run_lm_generation(spec, settings, provenance)
        provenance.update(extra)
        return checks, curves
    inputs = load_inputs(spec.suite, settings)
    generations = [generate(a, spec.runner_options.get(a.runner, {}), inputs, settings, spec.batch_size)
                   for a in (spec.baseline, spec.candidate_artifact)]
    provenance["_rows"] = rowoutputs.generation(generations[0].tokens, generations[0].lengths,
                                                generations[1].tokens, generations[1].lengths,
                                                {d: inputs.prompts.column(d) for d in spec.suite.slices})
    return judge_generations(*generations, inputs, spec.suite, settings)


def candidate_verdict(checks: list[CheckResult], suite: SuiteSpec) -> str:
    """Fail if any check fails anywhere. Insufficient slices are always reported; they block
    the gate only when the aggregate itself is insufficient or the suite says they must."""
    return verdict_for(checks, suite)


def provenance(spec: JobSpec, fingerprint: dict[str, Any]) -> dict[str, Any]:
    """Everything needed to audit and reproduce the run."""
    calibration = spec.candidate_artifact.quantization.get("calibration_set")
    baseline = artifact_digests(spec.baseline.path)
    # A recipe candidate is the baseline's own files: hash them once.
    same = spec.candidate_artifact.path == spec.baseline.path
    candidate = baseline if same else artifact_digests(spec.candidate_artifact.path)
    return {
        "baseline": {"path": spec.baseline.path, "runner": spec.baseline.runner, **baseline},
        "candidate": {"path": spec.candidate_artifact.path, "runner": spec.candidate_artifact.runner, **candidate},
        "quantization": dict(spec.candidate_artifact.quantization),
        "calibration_set_sha256": sha256_path(calibration) if calibration else None,
        "suite": {"name": spec.suite.name, "data": spec.suite.data,
                  "data_sha256": sha256_path(spec.suite.data) if spec.suite.data else None,
                  "external": spec.suite.external,
                  "task": spec.suite.task, "slices": list(spec.suite.slices),
                  "checks": {c.name: c.limit for c in spec.suite.checks},
                  "slice_checks": {c.name: c.limit for c in spec.suite.checks_for("slice")},
                  "min_slice_size": spec.suite.min_slice_size, "confidence": spec.suite.confidence,
                  "decision": {**vars(Policy.of(spec.suite))},
                  **_generation_provenance(spec.suite)},
        "runner_options": spec.runner_options,
        "batch_size": spec.batch_size,
        "config_hash": spec.config_hash,
        "fingerprint": fingerprint,
    }


def _generation_provenance(suite: SuiteSpec) -> dict[str, Any]:
    if not suite.generation:
        return {}
    tokenizer = suite.generation.get("tokenizer")
    return {"generation": dict(suite.generation), "tokenizer_sha256": sha256_path(tokenizer) if tokenizer else None}


def run_job(spec: JobSpec) -> JobResult:
    """Run one job end to end on this machine."""
    started = time.time()
    result = JobResult(job_id=spec.job_id, status="error", verdict=ERROR, started_at=started)
    try:
        fingerprint = probe_stack(custom=spec.probes)
        result.provenance = provenance(spec, fingerprint)
        # A worker that already holds an older runtime than the one recorded runs nothing.
        result.provenance["loaded"] = check_loaded(fingerprint["components"])
        if spec.suite.task == "generation":
            result.checks, result.provenance["drift"] = run_generation(spec, result.provenance)
            result.row_outputs = result.provenance.pop("_rows", b"")
        elif spec.suite.task == "external":
            settings = spec.suite.external or {}
            scores = [results_for(a, settings) for a in (spec.baseline, spec.candidate_artifact)]
            result.checks = compare(*scores, spec.suite, tuple(settings.get("metrics") or ()) or None)
        else:
            data = load_eval_data(spec.suite.data, spec.suite.slices, spec.suite.max_slice_values)
            kept: dict[str, Any] = {}
            if spec.suite.batch_sizes:
                result.checks, result.provenance["batch_spread"] = run_at_batch_sizes(spec, data, result.provenance,
                                                                                      kept)
            else:
                # One after the other: each model gets every core.
                baseline = baseline_outputs(spec, data, result.provenance)
                cand = spec.candidate_artifact
                candidate = run_model(cand, spec.runner_options.get(cand.runner, {}), data, spec.batch_size,
                                      result.provenance["candidate"].setdefault("runtime", {}))
                check_same_shape(spec, baseline, candidate)
                result.checks = judge_outputs(baseline, candidate, data, spec.suite)
                kept["outputs"] = [baseline, candidate]
            result.row_outputs = rowoutputs.classification(*kept["outputs"], data.slices, **{
                k: v for k, v in kept.items() if k != "outputs"})
        decide_run(result.checks, spec.suite)
        # Again with what the job imported itself, and against the disk now (an upgrade during the job).
        result.provenance["loaded"] = check_loaded(fingerprint["components"], installed_runtimes())
        result.verdict = candidate_verdict(result.checks, spec.suite)
        result.status = "finished"
    except StaleRuntime as exc:  # what ran is not what the record says: no verdict from it
        result.error, result.error_kind, result.checks = str(exc), "stale_runtime", []
        result.provenance["loaded"] = exc.loaded
    except (ArtifactError, DataError) as exc:
        result.error, result.error_kind = str(exc), "input"
    except Exception as exc:  # anything else inside a job is that job's internal error
        result.error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}"
        result.error_kind = "internal"
    result.finished_at = time.time()
    return result
