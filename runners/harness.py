"""The validation harness: what one job does on its target.

Probe the stack, hash every input, hand the job to its task family (runners/families: it runs
baseline then candidate on the same inputs and judges every check on every slice), decide the
verdicts under the suite's policy, and return a JobResult with them and the provenance needed to
reproduce them, with what the process actually loaded.
Never raises: a failure becomes the job's error, classified as bad input, a stale runtime in
the worker, or internal.
"""

from __future__ import annotations

import time
import traceback
from typing import Any

from runners.backends import ArtifactError
from runners.contracts import ERROR, CheckResult, JobResult, JobSpec, SuiteSpec
from runners.datacheck import DataError
from runners.decision import Policy, decide_run, verdict_for
from runners.families import family
from runners.hashing import artifact_digests, sha256_path
from runners.loaded import StaleRuntime, check_loaded, installed_runtimes
from runners.probes import probe_stack


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
        # The suite's task family judges every check on every slice (runners/families).
        result.checks, result.row_outputs = family(spec.suite.task)(spec, result.provenance)
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
