"""Run JobSpecs as Ray tasks, each pinned to its target, and hand back JobResults.

Every job is a Ray task, also for the single local target: the embedded default starts a
local Ray on 127.0.0.1. Each wait has a deadline; a job that crashes its worker, raises,
or outlives its timeout becomes that job's error and the other jobs go on.
"""

from __future__ import annotations

import os
import socket
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from runners.contracts import ERROR, JobResult, JobSpec
from scheduler.config import LoadedConfig
from scheduler.config.schema import Placement

# A local Ray advertises the machine's network address unless told otherwise; keep it on loopback.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

# Fraction of a target's custom resource one job asks for: pins the task without limiting it.
PIN_AMOUNT = 0.001


class InfrastructureError(RuntimeError):
    """Ray cannot be started or reached."""


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast on a "host:port" nobody answers; ray.init would retry for minutes."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto" and other forms are Ray's to resolve
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise InfrastructureError(f"cannot start or reach {address}: {exc.strerror or exc}") from exc


def _execute(spec: JobSpec) -> JobResult:
    """The Ray task body; the harness and its heavy libraries load on the worker only."""
    from runners.harness import run_job

    return run_job(spec)


def placement_options(where: str | Placement) -> dict[str, Any]:
    """Ray task options that pin a job to its target's nodes."""
    if where == "local" or not isinstance(where, Placement):
        return {}
    if where.resource is not None:
        return {"resources": {where.resource: PIN_AMOUNT}}
    return {"label_selector": dict(where.labels or {})}


def error_result(spec: JobSpec, message: str, started: float) -> JobResult:
    return JobResult(job_id=spec.job_id, status="error", verdict=ERROR, error=message, error_kind="internal",
                     started_at=started, finished_at=time.time())


@dataclass
class _InFlight:
    spec: JobSpec
    submitted: float


class RayDispatcher:
    def __init__(self, loaded: LoadedConfig, address: str | None = None) -> None:
        self.loaded = loaded
        self.address = address or loaded.config.ray.address or os.environ.get("RAY_ADDRESS")
        self.startup_seconds = 0.0
        self._started_ray = False
        self._ray: Any = None
        self._task: Any = None

    def start(self) -> None:
        started = time.perf_counter()
        import ray

        self._ray = ray
        try:
            if not ray.is_initialized():
                kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                          "configure_logging": False}
                if self.address:
                    check_reachable(self.address)
                    ray.init(address=self.address, **kwargs)
                else:
                    ray.init(num_cpus=self.loaded.config.ray.num_cpus, **kwargs)
                self._started_ray = True
        except InfrastructureError:
            raise
        except Exception as exc:  # ray raises ConnectionError, RuntimeError, ValueError...
            where = self.address or "an embedded local Ray"
            raise InfrastructureError(f"cannot start or reach {where}: {exc}") from exc
        # Workers may crash mid-job: retry crashes once; the harness itself never raises.
        self._task = ray.remote(max_retries=1)(_execute)
        self.startup_seconds = time.perf_counter() - started

    def run(self, jobs: list[JobSpec], on_start: Callable[[JobSpec], Any],
            on_done: Callable[[JobSpec, JobResult], None]) -> None:
        """Dispatch every job, honouring each target's concurrency limit and the job timeout."""
        ray = self._ray
        cfg = self.loaded.config
        timeout = cfg.ray.job_timeout_seconds
        queues: dict[str, deque[JobSpec]] = {}
        for spec in jobs:
            queues.setdefault(spec.target, deque()).append(spec)
        running: dict[Any, _InFlight] = {}
        per_target = {name: 0 for name in queues}

        def submit_ready() -> None:
            for target, queue in queues.items():
                limit = cfg.targets[target].max_concurrent_jobs
                while queue and per_target[target] < limit:
                    spec = queue.popleft()
                    on_start(spec)
                    ref = self._task.options(**placement_options(cfg.targets[target].where)).remote(spec)
                    running[ref] = _InFlight(spec, time.time())
                    per_target[target] += 1

        submit_ready()
        while running:
            now = time.time()
            next_deadline = min(f.submitted + timeout for f in running.values())
            done, _ = ray.wait(list(running), num_returns=1, timeout=max(0.0, next_deadline - now))
            for ref in done:
                flight = running.pop(ref)
                per_target[flight.spec.target] -= 1
                on_done(flight.spec, self._collect(ref, flight))
            for ref, flight in list(running.items()):
                if time.time() >= flight.submitted + timeout:
                    ray.cancel(ref, force=True)
                    running.pop(ref)
                    per_target[flight.spec.target] -= 1
                    on_done(flight.spec, error_result(
                        flight.spec, f"timed out after {timeout:g}s (no result from target {flight.spec.target!r})",
                        flight.submitted))
            submit_ready()

    def _collect(self, ref: Any, flight: _InFlight) -> JobResult:
        try:
            return self._ray.get(ref)
        except self._ray.exceptions.RayError as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return error_result(flight.spec, f"{type(exc).__name__}: {first_line}", flight.submitted)

    def shutdown(self) -> None:
        if self._started_ray and self._ray is not None:
            self._ray.shutdown()
            self._started_ray = False
