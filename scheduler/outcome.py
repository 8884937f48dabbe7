"""What a one-shot validation produced: its records and the exit code they add up to (the CLI
contract). Read by the report and the command line; made by scheduler/validate.py."""

from __future__ import annotations

from dataclasses import dataclass, field

from runners.contracts import ERROR, INCONCLUSIVE, PASS, JobResult, JobSpec

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
    # or "address", "shared, started", "shared, reused" (scheduler/local_ray.py), "shared, kept driver"
    ray_origin: str = "embedded"

    def exit_code(self) -> int:
        """3 for an internal or infrastructure error (a stale runtime in a worker among them), else 2 for
        bad input, else 1 for a gate that did not pass, else 0."""
        results = [r.result for r in self.records]
        if any(r.verdict == ERROR and r.error_kind != "input" for r in results):
            return EXIT_INTERNAL
        if any(r.verdict == ERROR for r in results):
            return EXIT_BAD_INPUT
        if any(r.result.verdict != PASS and not _alert_inconclusive(r) for r in self.records):
            return EXIT_GATE_FAILED
        return EXIT_PASS


def _alert_inconclusive(record: RunRecord) -> bool:
    """An inconclusive verdict under the `alert` policy does not fail the gate: it is reported only."""
    decision = record.spec.suite.decision or {}
    return record.result.verdict == INCONCLUSIVE and decision.get("policy") == "alert"
