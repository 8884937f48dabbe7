"""Plain, picklable data exchanged between the control plane and a target.

This module imports nothing heavy: the scheduler builds a JobSpec, ships it to a
Ray task on the target, and receives a JobResult back. Both carry a schema
version so that a daemon and its workers can tell when they disagree (v2: a CheckResult
names its check bare and carries the batch size and the external metric as fields).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

CONTRACT_VERSION = 2

# Verdicts, from worst to best; a candidate's verdict is the worst of its checks.
FAIL = "fail"
ERROR = "error"
INCONCLUSIVE = "inconclusive"  # the confidence bound straddles the tolerance: more rows would decide
INSUFFICIENT = "insufficient"
PASS = "pass"
VERDICT_ORDER = (FAIL, ERROR, INCONCLUSIVE, INSUFFICIENT, PASS)

AGGREGATE_DIMENSION = "all"


@dataclass(frozen=True)
class ArtifactSpec:
    """A model file and the runner that loads it."""

    path: str
    runner: str
    quantization: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CheckSpec:
    """One tolerance, fixed in advance: a check of the catalogue (runners/catalogue.py) and its limit."""

    name: str
    limit: float


@dataclass(frozen=True)
class SuiteSpec:
    """What to evaluate and how to judge it."""

    name: str
    data: str | None  # None for task "external"
    task: str
    slices: tuple[str, ...]
    checks: tuple[CheckSpec, ...]  # judged on the aggregate
    slice_checks: tuple[CheckSpec, ...] | None = None  # judged on every slice value; None: same as checks
    min_slice_size: int = 30
    max_slice_values: int = 1000  # distinct values per slice column; more is an error naming the column
    confidence: float = 0.95
    insufficient_blocks_gate: bool = False
    output_kind: str = "logits"  # or "probabilities"
    generation: dict[str, Any] | None = None  # task "generation": tokenizer, context, max_new_tokens, ...
    tensor_tolerance: dict[str, float] | None = None  # {"atol", "rtol"} for min_within_tolerance
    batch_sizes: tuple[int, ...] | None = None  # production batch sizes the candidate is judged at
    external: dict[str, Any] | None = None  # task "external": format, command, timeout_seconds, metrics
    decision: dict[str, Any] | None = None  # policy, correction, resamples (runners/decision.py); None: point

    def checks_for(self, dimension: str) -> tuple[CheckSpec, ...]:
        if dimension == AGGREGATE_DIMENSION or self.slice_checks is None:
            return self.checks
        return self.slice_checks


@dataclass(slots=True)  # not frozen: a planning pass builds 10^5 of these and frozen init is 3x slower
class JobSpec:
    """One (target, model, candidate, suite) evaluation, complete enough to run anywhere."""

    job_id: str
    target: str
    model: str
    candidate: str
    baseline: ArtifactSpec
    candidate_artifact: ArtifactSpec
    suite: SuiteSpec
    runner_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    batch_size: int = 1024
    trigger: str = "manual"
    config_hash: str = ""
    probes: dict[str, dict[str, Any]] = field(default_factory=dict)  # the target's custom probes
    job_key: str = ""  # what makes two jobs the same work: fingerprint, artifacts, suite, checks
    version: int = CONTRACT_VERSION


def job_spec_to_dict(spec: JobSpec) -> dict[str, Any]:
    return asdict(spec)


def job_spec_from_dict(data: dict[str, Any]) -> JobSpec:
    """Inverse of job_spec_to_dict (JSON turns tuples into lists; they are restored here)."""
    suite = dict(data["suite"])
    suite["slices"] = tuple(suite["slices"])
    suite["checks"] = tuple(CheckSpec(**c) for c in suite["checks"])
    if suite.get("batch_sizes") is not None:
        suite["batch_sizes"] = tuple(suite["batch_sizes"])
    if suite.get("slice_checks") is not None:
        suite["slice_checks"] = tuple(CheckSpec(**c) for c in suite["slice_checks"])
    return JobSpec(**{**data, "baseline": ArtifactSpec(**data["baseline"]),
                      "candidate_artifact": ArtifactSpec(**data["candidate_artifact"]), "suite": SuiteSpec(**suite)})


@dataclass
class CheckResult:
    """The judgement of one check on one slice (at one batch size, of one external metric)."""

    check: str  # the catalogue's name, bare (no batch size or metric in it)
    dimension: str
    value: str
    n: int
    baseline: float | None
    candidate: float | None
    delta: float | None
    tolerance: float
    verdict: str
    statistic: dict[str, float] = field(default_factory=dict)
    batch_size: int | None = None  # the production batch size it was judged at (suite batch_sizes); None: one size
    metric: str | None = None  # an external harness's metric ("acc"); None for the other tasks

    def __bool__(self) -> bool:
        return self.verdict == PASS

    @property
    def key(self) -> tuple[str, int | None, str | None]:
        """What tells two results of one slice apart: the check, its batch size, its metric."""
        return self.check, self.batch_size, self.metric

    @property
    def label(self) -> str:
        """The check as a reader names it: the name, then "(batch 64)" or "(acc)" where it has one."""
        return check_label(self.check, self.batch_size, self.metric)


def check_label(check: str, batch_size: int | None = None, metric: str | None = None) -> str:
    """A check with its batch size and metric, for people (never parsed back: the fields are the data)."""
    qualifiers = [f"batch {batch_size}"] if batch_size is not None else []
    qualifiers += [metric] if metric is not None else []
    return f"{check} ({', '.join(qualifiers)})" if qualifiers else check


@dataclass
class JobResult:
    """What a target sends back: verdicts, the evidence, and how to reproduce it."""

    job_id: str
    status: str  # "finished" or "error"
    verdict: str
    checks: list[CheckResult] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    error_kind: str | None = None  # "input" (bad artifacts/data), "stale_runtime" (see runners/loaded.py), "internal"
    started_at: float = 0.0
    finished_at: float = 0.0
    version: int = CONTRACT_VERSION
    # Row-level outputs (runners/rowoutputs.py): one compressed blob, empty where none were kept.
    row_outputs: bytes = b""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def worst_verdict(verdicts: list[str] | tuple[str, ...]) -> str:
    """The worst verdict in the list (PASS for an empty list)."""
    rank = {v: i for i, v in enumerate(VERDICT_ORDER)}
    return min(verdicts, key=lambda v: rank[v], default=PASS)
