"""Run jobs as Ray tasks, each pinned to its target's nodes.

Every job is a Ray task, also for the single local target: the embedded default starts a
local Ray on 127.0.0.1. Every wait has a deadline. Per target, at most `max_concurrent_jobs`
run at once. A worker or node failure is retried with exponential backoff (the ledger's run
id makes the retry idempotent); a job that no node can take is recorded as unschedulable
once its deadline passes, never left pending; a job past its timeout is cancelled; on stop,
in-flight jobs get a drain deadline, then are cancelled and handed back for the next start.

A job never runs in a worker started before its target's stack last changed, nor in one that was
found running a stale runtime (scheduler/generations.py).

Every report to the listener (a ledger write, in practice) goes through an outbox
(scheduler/outbox.py); no job starts while writes wait there. The task bodies and their
placement are in scheduler/tasks.py.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

from runners.contracts import ERROR, JobResult, JobSpec
from scheduler.config import LoadedConfig
from scheduler.generations import WorkerGenerations
from scheduler.local_ray import Attachment, SharedLocalRay, for_one_shot
from scheduler.outbox import Outbox
from scheduler.probing import InFlightProbes
from scheduler.ray_attach import InfrastructureError, SharedRay, check_reachable
from scheduler.ledger_errors import LedgerWriteError
from scheduler.tasks import available_nodes, execute, placeable, placement_options, probe, warm
from scheduler.warmup import WarmUps

log = logging.getLogger("revalidator.dispatch")

# A local Ray advertises the machine's network address unless told otherwise; keep it on loopback.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

# Longest single wait, so that stop requests and deadlines are noticed promptly.
_TICK_SECONDS = 0.25
# Most workers a one-shot command warms per target (scheduler/warmup.py).
_MAX_WARM_WORKERS = 4


class Listener(Protocol):
    """Where the dispatcher reports each job's fate (the ledger, in practice)."""

    def started(self, run_id: str, spec: JobSpec) -> None: ...
    def finished(self, run_id: str, spec: JobSpec, result: JobResult) -> None: ...
    def retrying(self, run_id: str, spec: JobSpec, reason: str) -> None: ...
    def ended(self, run_id: str, spec: JobSpec, status: str, reason: str) -> None: ...
    def handed_back(self, run_id: str, spec: JobSpec, reason: str) -> None: ...
    def target_state(self, target: str, state: str, detail: str | None) -> None: ...


def error_result(spec: JobSpec, message: str, started: float) -> JobResult:
    return JobResult(job_id=spec.job_id, status="error", verdict=ERROR, error=message, error_kind="internal",
                     started_at=started, finished_at=time.time())


@dataclass
class _Pending:
    run_id: str
    spec: JobSpec
    queued_at: float
    attempt: int = 0
    not_before: float = 0.0
    waiting_since: float | None = None  # since when no node could take it


@dataclass
class _Running:
    pending: _Pending
    submitted: float


class RayDispatcher:
    def __init__(self, loaded: LoadedConfig, address: str | None = None,
                 shared: SharedLocalRay | None = None) -> None:
        self.loaded = loaded
        self.address = address or loaded.config.ray.address or os.environ.get("RAY_ADDRESS")
        self._shared = SharedRay(None if self.address else shared)  # a local Ray kept between one-shot commands
        self.startup_seconds = 0.0
        self._started_ray = False
        self._ray: Any = None
        self._pending: list[_Pending] = []
        self._running: dict[Any, _Running] = {}
        self._lock = threading.Lock()
        self.stopping = threading.Event()
        self.stop_reason: str | None = None
        self._outbox = Outbox()
        self.generations = WorkerGenerations()
        self._warm = WarmUps()
        self._probes = InFlightProbes()

    @classmethod
    def for_one_shot(cls, loaded: LoadedConfig) -> "RayDispatcher":
        """A dispatcher for a one-shot command: on the embedded default it shares a kept local Ray."""
        ray_cfg = loaded.config.ray
        return cls(loaded, shared=for_one_shot(ray_cfg.address, ray_cfg.keep_local_seconds, ray_cfg.num_cpus))

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        started = time.perf_counter()
        if self._shared.attachment is None and "ray" not in sys.modules:
            self.attach_shared()
        import ray

        self._ray = ray
        try:
            if not ray.is_initialized():
                kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                          "configure_logging": False}
                if self.address:
                    check_reachable(self.address)
                    ray.init(address=self.address, **kwargs)
                elif not self._shared.init(ray, kwargs):
                    # "local": a new instance, never whatever cluster this machine started last
                    ray.init(address="local", num_cpus=self.loaded.config.ray.num_cpus, **kwargs)
                self._started_ray = True
        except InfrastructureError:
            raise
        except Exception as exc:  # ray raises ConnectionError, RuntimeError, ValueError...
            where = self.address or "an embedded local Ray"
            raise InfrastructureError(f"cannot start or reach {where}: {exc}") from exc
        # Retries are ours (with backoff, recorded in the ledger), not Ray's.
        self._job_task = ray.remote(max_retries=0)(execute)
        self._probe_task = ray.remote(max_retries=0, num_cpus=0)(probe)
        self._warm_task = ray.remote(max_retries=0)(warm)
        self.startup_seconds = time.perf_counter() - started

    @property
    def ray_origin(self) -> str:
        """Which Ray this dispatcher uses: "address", "embedded", "shared, started", "shared, reused" or
        "shared, kept driver"."""
        return "address" if self.address else self._shared.origin

    def attach_shared(self) -> None:
        """Attach to the shared local Ray, starting it if needed; where that fails this command starts
        its own, and says why. Called before Ray is imported: Ray reads its token settings once, then."""
        self._shared.attach()

    def adopt_shared(self, attachment: Attachment) -> None:
        """Run on the shared local Ray this process has joined already, under the hold it took (the kept
        driver: scheduler/kept_driver.py); `start` then finds Ray initialized and leaves it running."""
        self._shared.adopt(attachment)

    def warm(self, jobs: list[JobSpec]) -> None:
        """Start each of these jobs' targets' worker now, while the command still plans
        (scheduler/warmup.py); one-shot commands only: the daemon's workers outlive its jobs."""
        targets = self.loaded.config.targets
        tasks: dict[str, list[str]] = {}
        for spec in jobs:
            if spec.target in targets:
                tasks.setdefault(spec.target, []).append(spec.suite.task)
        # Only pinned targets need the cluster's state (two GCS calls): "local" is wherever Ray runs.
        available = available_nodes(self._ray) if any(targets[t].where != "local" for t in tasks) else ({}, [])
        plan = {t: (tuple(sorted(set(v))), min(len(v), targets[t].max_concurrent_jobs, _MAX_WARM_WORKERS))
                for t, v in tasks.items() if placeable(targets[t].where, available)}

        def submit(target: str, task_names: tuple[str, ...]) -> Any:
            return self._warm_task.options(**placement_options(targets[target].where),
                                           **self.generations.options(target)).remote(task_names)

        self._warm.start(plan, submit)

    def shutdown(self) -> None:
        if self._ray is not None:
            self._warm.cancel(self._ray)
            self._probes.cancel(self._ray)
        if self._started_ray and self._ray is not None:
            self._ray.shutdown()
            self._started_ray = False
        self._shared.release()

    # -- probing ------------------------------------------------------------------------------
    def probe(self, targets: list[str], timeout: float) -> dict[str, dict[str, Any] | str]:
        """Each target's stack, probed on its own nodes: {target: stack} or {target: why not}. A probe
        that does not answer within `timeout` stays in flight for the next call (scheduler/probing.py)."""
        cfg = self.loaded.config
        out: dict[str, dict[str, Any] | str] = {}
        available = available_nodes(self._ray)
        placed = [name for name in targets if placeable(cfg.targets[name].where, available)]
        out.update({name: "no node offers this target" for name in targets if name not in placed})

        def submit(name: str) -> Any:
            # In the target's job workers: a worker of their own would often be reaped between polls
            # (Ray keeps one idle worker per CPU) and every probe would then wait for a new one.
            options = {**placement_options(cfg.targets[name].where), **self.generations.options(name)}
            return self._probe_task.options(**options).remote(self.loaded.probe_specs(name))

        for name, stack in self._probes.collect(self._ray, submit, placed, timeout).items():
            out[name] = stack
            if isinstance(stack, dict):
                self.generations.note(name, stack["hash"])
        return out

    # -- jobs ---------------------------------------------------------------------------------
    def submit(self, jobs: list[tuple[str, JobSpec]]) -> None:
        """Add (run_id, spec) pairs to the queue; thread-safe."""
        now = time.time()
        with self._lock:
            self._pending += [_Pending(run_id, spec, now) for run_id, spec in jobs]

    @property
    def busy(self) -> bool:
        with self._lock:
            return bool(self._pending or self._running or self._outbox)

    @property
    def unwritten(self) -> int:
        """Reports (results among them) computed but not yet written to the ledger."""
        return len(self._outbox)

    def in_flight(self) -> dict[str, int]:
        with self._lock:
            return {"queued": len(self._pending), "running": len(self._running), "unwritten": len(self._outbox)}

    def run_until_idle(self, listener: Listener, give_up_writes_after: float | None = None) -> None:
        """Work until nothing is queued or running (the one-shot `validate`).

        Raises LedgerWriteError once writes have failed for `give_up_writes_after` seconds in a row."""
        while self.busy and not self.stopping.is_set():
            self.step(listener)
            since = self._outbox.failing_since
            if give_up_writes_after is not None and since is not None \
                    and time.monotonic() - since >= give_up_writes_after:
                raise LedgerWriteError(f"{self._outbox.error} (gave up after {give_up_writes_after:g}s of failed "
                                       f"writes; {len(self._outbox)} report(s) not recorded)")

    def serve(self, listener: Listener, stop: threading.Event) -> None:
        """Work until `stop` is set (the daemon); a failed step is logged and the loop goes on."""
        while not stop.is_set():
            try:
                if self.busy:
                    self.step(listener)
                else:
                    stop.wait(_TICK_SECONDS)
            except Exception:  # e.g. Ray's state API unreachable for a moment: the thread must not die
                log.exception("dispatcher step failed")
                stop.wait(1.0)

    def drain(self, listener: Listener, deadline_seconds: float) -> None:
        """Stop starting jobs; let running ones finish until the deadline, then cancel them.

        Everything not finished is handed back to the listener (queued again for the next start).
        """
        self.stopping.set()
        with self._lock:
            pending, self._pending = self._pending, []
        for p in pending:
            self._tell(listener, "handed_back", p.run_id, p.spec, "not started before shutdown")
        until = time.monotonic() + deadline_seconds
        while self._running and time.monotonic() < until:
            self._collect(listener, min(_TICK_SECONDS, max(0.0, until - time.monotonic())))
        for ref, flight in list(self._running.items()):
            self._ray.cancel(ref, force=True)
            del self._running[ref]
            self._tell(listener, "handed_back", flight.pending.run_id, flight.pending.spec, "cancelled by shutdown")
        self._outbox.flush_until(listener, until, _TICK_SECONDS)
        if self._outbox:
            log.error("ledger writes lost at shutdown; their runs stay unfinished and are re-run at the next start",
                      extra={"fields": {"unwritten": len(self._outbox), "runs": self._outbox.run_ids()}})

    def stop(self, reason: str) -> None:
        """Ask a one-shot run to stop (from a signal handler: only sets state)."""
        self.stop_reason = reason
        self.stopping.set()

    def cancel_all(self, listener: Listener, reason: str, write_seconds: float = 15.0) -> None:
        """End every queued and running job as cancelled (a one-shot run that was stopped), and
        keep trying to write that for up to `write_seconds`."""
        self.stopping.set()
        with self._lock:
            pending, self._pending = self._pending, []
        for ref, flight in list(self._running.items()):
            self._ray.cancel(ref, force=True)
            del self._running[ref]
            pending.append(flight.pending)
        for p in pending:
            self._tell(listener, "ended", p.run_id, p.spec, "cancelled", reason)
        self._outbox.flush_until(listener, time.monotonic() + write_seconds, _TICK_SECONDS)

    def step(self, listener: Listener) -> None:
        self._flush(listener)
        self._start_ready(listener)
        self._collect(listener, _TICK_SECONDS)
        self._expire(listener)

    def _tell(self, listener: Listener, method: str, *args: Any) -> None:
        self._outbox.tell(listener, method, *args)

    def _flush(self, listener: Listener) -> bool:
        return self._outbox.flush(listener)

    # -- internals ----------------------------------------------------------------------------
    def _start_ready(self, listener: Listener) -> None:
        cfg = self.loaded.config
        if self.stopping.is_set() or self._outbox:  # nothing new starts while reports wait to be written
            return
        now = time.time()
        with self._lock:
            if not self._pending:
                return
            pending = list(self._pending)
        available = available_nodes(self._ray)
        per_target: dict[str, int] = {}
        for flight in self._running.values():
            per_target[flight.pending.spec.target] = per_target.get(flight.pending.spec.target, 0) + 1
        offered: dict[str, bool] = {}  # per target: whether a live node offers it
        for p in pending:
            target = cfg.targets.get(p.spec.target)
            if target is None:  # the target left the config while the job waited
                self._drop(p)
                self._tell(listener, "ended", p.run_id, p.spec, "unschedulable",
                           f"target {p.spec.target!r} is no longer configured")
                continue
            if p.not_before > now or per_target.get(p.spec.target, 0) >= target.max_concurrent_jobs:
                continue
            if self._warm.holding(self._ray, p.spec.target):
                continue
            if p.spec.target not in offered:
                offered[p.spec.target] = placeable(target.where, available)
            if not offered[p.spec.target]:
                p.waiting_since = p.waiting_since or now
                continue
            p.waiting_since = None
            self._drop(p)
            self._tell(listener, "started", p.run_id, p.spec)
            ref = self._job_task.options(**placement_options(target.where),
                                         **self.generations.options(p.spec.target)).remote(p.spec)
            self._running[ref] = _Running(p, time.time())
            per_target[p.spec.target] = per_target.get(p.spec.target, 0) + 1

    def _drop(self, p: _Pending) -> None:
        with self._lock:
            self._pending.remove(p)

    def _collect(self, listener: Listener, timeout: float) -> None:
        if not self._running:
            if timeout:
                self._warm.wait(self._ray, min(timeout, _TICK_SECONDS))
            return
        done, _ = self._ray.wait(list(self._running), num_returns=1, timeout=timeout)
        for ref in done:
            flight = self._running.pop(ref)
            self._settle(listener, ref, flight)

    def _settle(self, listener: Listener, ref: Any, flight: _Running) -> None:
        ray, p = self._ray, flight.pending
        try:
            result = ray.get(ref)
        except ray.exceptions.TaskCancelledError:
            self._tell(listener, "handed_back", p.run_id, p.spec, "cancelled")
            return
        except ray.exceptions.RayTaskError as exc:  # an exception the harness did not catch
            result = error_result(p.spec, _first_line(exc), flight.submitted)
        except ray.exceptions.RayError as exc:  # worker crash, node death, lost object: retry
            self._retry(listener, flight, f"{type(exc).__name__}: {_first_line(exc)}")
            return
        if result.error_kind == "stale_runtime":
            log.warning("stale runtime in a worker; the target's next jobs get new workers",
                        extra={"fields": {"target": p.spec.target, "run_id": p.run_id, "error": result.error}})
            self.generations.renew(p.spec.target)
        self._tell(listener, "finished", p.run_id, p.spec, result)

    def _retry(self, listener: Listener, flight: _Running, reason: str) -> None:
        cfg, p = self.loaded.config.ray, flight.pending
        p.attempt += 1
        if p.attempt >= cfg.max_attempts:
            self._tell(listener, "finished", p.run_id, p.spec, error_result(
                p.spec, f"{reason} (gave up after {p.attempt} attempts)", flight.submitted))
            return
        p.not_before = time.time() + cfg.retry_backoff_seconds * 2 ** (p.attempt - 1)
        self._tell(listener, "retrying", p.run_id, p.spec, reason)
        with self._lock:
            self._pending.append(p)

    def _expire(self, listener: Listener) -> None:
        """Deadlines: running past the job timeout, or waiting for a node past the unschedulable limit."""
        cfg = self.loaded.config.ray
        now = time.time()
        for ref, flight in list(self._running.items()):
            if now - flight.submitted >= cfg.job_timeout_seconds:
                self._ray.cancel(ref, force=True)
                del self._running[ref]
                spec = flight.pending.spec
                self._tell(listener, "finished", flight.pending.run_id, spec, error_result(
                    spec, f"timed out after {cfg.job_timeout_seconds:g}s (no result from target {spec.target!r})",
                    flight.submitted))
        with self._lock:
            expired = [p for p in self._pending
                       if p.waiting_since is not None and now - p.waiting_since >= cfg.unschedulable_after_seconds]
            for p in expired:
                self._pending.remove(p)
        for target in sorted({p.spec.target for p in expired}):
            self._tell(listener, "target_state", target, "unschedulable", "no Ray node offers this target")
        for p in expired:
            self._tell(listener, "ended", p.run_id, p.spec, "unschedulable",
                       f"no node could take it for {cfg.unschedulable_after_seconds:g}s (target {p.spec.target!r})")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
