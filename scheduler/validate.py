"""One validation pass: plan the jobs, record each in the ledger, dispatch on Ray, record results."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from runners.contracts import ERROR, FAIL, PASS, JobResult, JobSpec
from scheduler.config import LoadedConfig
from scheduler.dispatch import RayDispatcher
from scheduler.ledger import Ledger

# Exit codes (the CLI contract).
EXIT_PASS, EXIT_GATE_FAILED, EXIT_BAD_INPUT, EXIT_INTERNAL = 0, 1, 2, 3


@dataclass
class RunRecord:
    run_id: str
    spec: JobSpec
    result: JobResult


@dataclass
class ValidationReport:
    records: list[RunRecord] = field(default_factory=list)
    ray_startup_seconds: float = 0.0

    def exit_code(self) -> int:
        """3 for an internal error, else 2 for bad input, else 1 for a gate that did not pass, else 0."""
        results = [r.result for r in self.records]
        if any(r.verdict == ERROR and r.error_kind != "input" for r in results):
            return EXIT_INTERNAL
        if any(r.verdict == ERROR for r in results):
            return EXIT_BAD_INPUT
        if any(r.verdict != PASS for r in results):
            return EXIT_GATE_FAILED
        return EXIT_PASS

    @property
    def failed(self) -> list[RunRecord]:
        return [r for r in self.records if r.result.verdict == FAIL]


def run_validation(loaded: LoadedConfig, jobs: list[JobSpec], ledger: Ledger,
                   dispatcher: RayDispatcher, progress: Callable[[int, int, RunRecord], None] | None = None,
                   ) -> ValidationReport:
    """Dispatch `jobs` on a started dispatcher; every run is in the ledger before it starts."""
    report = ValidationReport(ray_startup_seconds=dispatcher.startup_seconds)
    run_ids: dict[str, str] = {}

    def on_start(spec: JobSpec) -> None:
        run_ids[spec.job_id] = ledger.start_run(spec)

    def on_done(spec: JobSpec, result: JobResult) -> None:
        run_id = run_ids[spec.job_id]
        ledger.finish_run(run_id, result)
        record = RunRecord(run_id, spec, result)
        report.records.append(record)
        if progress:
            progress(len(report.records), len(jobs), record)

    dispatcher.run(jobs, on_start, on_done)
    order = {spec.job_id: i for i, spec in enumerate(jobs)}
    report.records.sort(key=lambda r: order[r.spec.job_id])
    return report
