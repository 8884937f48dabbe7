"""Recording dispatched work in the ledger, and the one-shot validation pass built on it."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable

from runners.contracts import PASS, JobResult, JobSpec
from scheduler.config import LoadedConfig
from scheduler.dispatch import RayDispatcher, error_result
from scheduler.outcome import (EXIT_BAD_INPUT, EXIT_GATE_FAILED, EXIT_INTERNAL, EXIT_PASS, RunRecord,
                               ValidationReport)
from scheduler.report import explain_failure

if TYPE_CHECKING:  # the ledger (and SQLAlchemy) load on the command's ledger thread, not here
    from scheduler.ledger import Ledger

__all__ = ["EXIT_BAD_INPUT", "EXIT_GATE_FAILED", "EXIT_INTERNAL", "EXIT_PASS", "LedgerListener", "RunRecord",
           "ValidationReport", "run_validation"]

log = logging.getLogger("revalidator.jobs")


class LedgerListener:
    """Writes every state change of a dispatched job to the ledger, and logs it."""

    def __init__(self, ledger: Ledger, on_result: Callable[[RunRecord], None] | None = None) -> None:
        self.ledger = ledger
        self.on_result = on_result

    def started(self, run_id: str, spec: JobSpec) -> None:
        self.ledger.mark_running(run_id)
        log.info("job started", extra={"fields": _fields(run_id, spec)})

    def finished(self, run_id: str, spec: JobSpec, result: JobResult) -> None:
        recorded = self.ledger.finish_run(run_id, result)
        fields = {**_fields(run_id, spec), "verdict": result.verdict, "recorded": recorded,
                  "seconds": round(result.finished_at - result.started_at, 3)}
        if result.error:
            fields["error"] = result.error.strip().splitlines()[0]
        failed = [f"{c.label} {explain_failure(c)}" for c in result.checks if c.verdict == "fail"]
        if failed:
            fields["failed"] = failed
        log.log(logging.WARNING if result.verdict != PASS else logging.INFO, "job finished", extra={"fields": fields})
        if recorded and self.on_result:
            self.on_result(RunRecord(run_id, spec, result))

    def retrying(self, run_id: str, spec: JobSpec, reason: str) -> None:
        self.ledger.requeue(run_id, reason, retry=True)
        log.warning("job retrying", extra={"fields": {**_fields(run_id, spec), "reason": reason}})

    def ended(self, run_id: str, spec: JobSpec, status: str, reason: str) -> None:
        recorded = self.ledger.close_unfinished(run_id, status, reason)
        log.warning(f"job {status}", extra={"fields": {**_fields(run_id, spec), "reason": reason}})
        if recorded and self.on_result:
            self.on_result(RunRecord(run_id, spec, error_result(spec, f"{status}: {reason}", 0.0)))

    def handed_back(self, run_id: str, spec: JobSpec, reason: str) -> None:
        self.ledger.requeue(run_id, reason)
        log.info("job handed back", extra={"fields": {**_fields(run_id, spec), "reason": reason}})

    def target_state(self, target: str, state: str, detail: str | None) -> None:
        self.ledger.set_target_state(target, state, detail)
        log.warning("target state", extra={"fields": {"target": target, "state": state, "detail": detail}})


def _fields(run_id: str, spec: JobSpec) -> dict[str, str]:
    return {"run_id": run_id, "target": spec.target, "model": spec.model, "candidate": spec.candidate,
            "suite": spec.suite.name, "trigger": spec.trigger}


def run_validation(loaded: LoadedConfig, jobs: list[JobSpec], ledger: Ledger,
                   dispatcher: RayDispatcher, progress: Callable[[int, int, RunRecord], None] | None = None,
                   give_up_writes_after: float | None = None) -> ValidationReport:
    """Dispatch `jobs` on a started dispatcher until all have ended; every job is queued in the ledger first."""
    report = ValidationReport(ray_startup_seconds=dispatcher.startup_seconds, ray_origin=dispatcher.ray_origin)

    def collect(record: RunRecord) -> None:
        report.records.append(record)
        if progress:
            progress(len(report.records), len(jobs), record)

    dispatcher.submit([(ledger.enqueue(spec), spec) for spec in jobs])
    listener = LedgerListener(ledger, collect)
    dispatcher.run_until_idle(listener, give_up_writes_after)
    if dispatcher.stopping.is_set():  # stopped by a signal: what did not finish is recorded as cancelled
        dispatcher.cancel_all(listener, f"validate stopped by {dispatcher.stop_reason or 'a stop request'}")
    order = {spec.job_id: i for i, spec in enumerate(jobs)}
    report.records.sort(key=lambda r: order[r.spec.job_id])
    return report
