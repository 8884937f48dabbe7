"""The task families' table: every task has one, the harness asks it and nothing else, each job
imports only its own family, and neither plane imports the other's libraries."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from runners import catalogue as cat
from runners import families
from runners.contracts import ArtifactSpec, CheckResult, CheckSpec, JobSpec, SuiteSpec
from runners.datacheck import DataError
from runners.harness import run_job
from tests.conftest import REPO


def toy_family(spec: JobSpec, provenance: dict) -> tuple[list[CheckResult], bytes]:
    """A family registered from a test: one aggregate result, no rows."""
    provenance["toy"] = True
    return [CheckResult(spec.suite.checks[0].name, "all", "all", 100, 1.0, 1.0, 0.0, spec.suite.checks[0].limit,
                        "pass")], b"toy rows"


def test_every_catalogue_task_has_a_family_that_loads() -> None:
    assert tuple(families.FAMILIES) == cat.TASKS
    for task in cat.TASKS:
        assert callable(families.family(task))
    with pytest.raises(DataError, match="no task family 'speech'"):
        families.family("speech")


def test_the_harness_runs_a_family_registered_under_a_new_task(tmp_path: Path) -> None:
    families.FAMILIES["toy"] = f"{__name__}:toy_family"
    try:
        suite = SuiteSpec("s", None, "toy", (), (CheckSpec("max_drop", 0.1),))
        model = tmp_path / "m.bin"
        model.write_bytes(b"weights")
        spec = JobSpec("j", "cpu", "m", "c", ArtifactSpec(str(model), "onnxruntime"),
                       ArtifactSpec(str(model), "onnxruntime"), suite)
        result = run_job(spec)
    finally:
        del families.FAMILIES["toy"]
    assert result.status == "finished", result.error
    assert result.verdict == "pass" and result.provenance["toy"] is True and result.row_outputs == b"toy rows"
    unknown = run_job(spec)  # the task is gone from the table: bad input, named
    assert (unknown.status, unknown.error_kind) == ("error", "input") and "no task family 'toy'" in unknown.error


def imported_after(code: str) -> set[str]:
    done = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sorted(sys.modules)))"],
                          cwd=REPO, capture_output=True, text=True, check=True)
    return set(done.stdout.split())


def test_each_plane_keeps_to_its_libraries_and_a_job_to_its_family() -> None:
    control = imported_after("import scheduler.cli, scheduler.daemon, scheduler.exporter, scheduler.report_html")
    assert not control & {"torch", "onnxruntime", "tensorrt", "transformers"}
    assert not {m for m in control if m.startswith("runners.families.")}
    data = imported_after("import runners.harness, runners.families as f\nfor t in f.FAMILIES: f.family(t)")
    assert not data & {"ray", "apscheduler", "prometheus_client"}
    classification = imported_after("import runners.families as f; f.family('classification')")
    assert not {m for m in classification if m.startswith(("runners.families.generation", "runners.families.external"))}
