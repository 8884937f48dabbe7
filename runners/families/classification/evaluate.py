"""The classification family's job: both models over the same rows in batches, compared per row,
summed per slice value, and every check judged on the aggregate and on every slice value.

With production `batch_sizes` the candidate runs once per size against one baseline run, and the
spread of every measured value across sizes goes into the provenance.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from runners import catalogue as cat
from runners import rowoutputs
from runners.backends import ArtifactError, make_runner
from runners.baseline_cache import BaselineCache, baseline_key
from runners.contracts import ArtifactSpec, CheckResult, JobSpec, SuiteSpec
from runners.decision import Policy, attach_evidence
from runners.families.classification.checks import judge
from runners.families.classification.data import DataError, EvalData, check_labels_fit, load_eval_data
from runners.families.classification.metrics import RowMetrics, SliceIndex, row_metrics, slice_members, slice_stats
from runners.families.classification.tensor_checks import judge_tensor, tensor_stats


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


def run(spec: JobSpec, provenance: dict[str, Any]) -> tuple[list[CheckResult], bytes]:
    """The family's entry (runners/families): the checks, and the run's row outputs."""
    data = load_eval_data(spec.suite.data, spec.suite.slices, spec.suite.max_slice_values)
    kept: dict[str, Any] = {}
    if spec.suite.batch_sizes:
        checks, provenance["batch_spread"] = run_at_batch_sizes(spec, data, provenance, kept)
    else:
        # One after the other: each model gets every core.
        baseline = baseline_outputs(spec, data, provenance)
        cand = spec.candidate_artifact
        candidate = run_model(cand, spec.runner_options.get(cand.runner, {}), data, spec.batch_size,
                              provenance["candidate"].setdefault("runtime", {}))
        check_same_shape(spec, baseline, candidate)
        checks = judge_outputs(baseline, candidate, data, spec.suite)
        kept["outputs"] = [baseline, candidate]
    return checks, rowoutputs.classification(*kept["outputs"], data.slices,
                                             **{k: v for k, v in kept.items() if k != "outputs"})
