"""`revalidator daemon`: watch every target's stack and re-validate what a change affects.

Start-up validates the config, opens the ledger, connects Ray, resumes what a previous
process left queued or running, catches up a missed nightly sweep, and starts the poll,
the nightly schedule and the HTTP server. The main thread turns events into jobs; a
dispatcher thread runs them on Ray. SIGTERM or SIGINT stops it: no new work, in-flight jobs
get `daemon.drain_seconds` to finish, the rest is cancelled and left queued for the next
start, and the process exits 0.

The ledger may refuse writes for a while (locked by another process, a full disk): the
dispatcher keeps results until they are written, planned jobs wait in memory until they are
queued, an event whose sweep cannot be recorded is handled again later, and `/readyz` answers
503 until a write goes through again.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import queue
import signal
import threading
import time
from pathlib import Path

import sqlalchemy as sa

from runners.contracts import JobSpec
from scheduler.access import TokenError, ensure_token
from scheduler.config import ConfigError, LoadedConfig, load_config
from scheduler.dispatch import InfrastructureError, RayDispatcher
from prometheus_client import CONTENT_TYPE_LATEST

from scheduler.events import ConfigChanged, Event, Manual, Scheduled, StackChanged
from scheduler.exporter import Exporter, Snapshot
from scheduler.gates import CurrentKeys, Gate, compute_gates, current_keys, gates_document
from scheduler import compare
from scheduler.http import HttpServer, Response, Route, json_response
from scheduler.ledger import Ledger, LedgerError
from scheduler.planning import Planner
from scheduler.schedule import UTC, build_scheduler, last_due, missed_sweep
from scheduler.validate import LedgerListener

log = logging.getLogger("revalidator.daemon")
STARTUP_PROBE_SECONDS = 30.0


class Daemon:
    def __init__(self, loaded: LoadedConfig, listen: str | None = None) -> None:
        self.loaded = loaded
        self.listen = listen or loaded.config.daemon.listen
        self.stop_event = threading.Event()
        self.events: queue.Queue[Event] = queue.Queue()
        self.ready = False
        self.started_at = time.time()
        self._config_stamp = self._stamp()
        self._poll_lock = threading.Lock()
        self.last_poll_at: float | None = None
        self.keys: CurrentKeys = {}
        self._keys_from: dict[str, str] = {}  # target -> the stack hash the keys were computed from
        self.missed_schedules = 0
        self.ledger_errors = 0  # failed ledger reads while handling events (writes are counted by the ledger)
        self._unqueued: list[JobSpec] = []  # planned, not yet in the ledger: it refused the write
        self._deferred: list[Event] = []  # events whose handling a ledger write stopped
        self._retry_at = 0.0
        self._retry_failures = 0

    # -- start-up -----------------------------------------------------------------------------
    def start(self) -> None:
        cfg = self.loaded.config
        self.ledger = Ledger(cfg.ledger, self.loaded.base_dir)
        self.listener = LedgerListener(self.ledger)
        self.exporter = Exporter(self.ledger, self.snapshot)
        settings = cfg.daemon
        try:
            token = ensure_token(settings, self.loaded.base_dir)
        except TokenError as exc:
            raise ConfigError([str(exc)]) from exc
        try:
            self.http = HttpServer(self.listen, self.routes(), settings.tls, token=token,
                                   protected=frozenset({("POST", "/sweep")}), allowed_hosts=settings.allowed_hosts,
                                   workers=settings.http_workers, timeout=settings.http_timeout_seconds)
        except OSError as exc:
            raise InfrastructureError(f"cannot listen on {self.listen}: {exc.strerror or exc}") from exc
        self.http.start()
        log.info("http listening", extra={"fields": {"address": self.http.address}})
        self.dispatcher = RayDispatcher(self.loaded)
        self.dispatcher.start()
        self.planner = Planner(self.loaded)
        resumed = self.ledger.unfinished()
        self.dispatcher.submit(resumed)
        log.info("daemon started", extra={"fields": {"config": str(self.loaded.path), "resumed_jobs": len(resumed),
                                                      "ray_startup_seconds": round(self.dispatcher.startup_seconds, 2),
                                                      "targets": sorted(cfg.targets)}})
        self._worker = threading.Thread(target=self.dispatcher.serve, args=(self.listener, self.stop_event),
                                        name="dispatcher", daemon=True)
        self._worker.start()
        # A first look at every target before anything is planned. Its probes start cold Ray
        # workers (a process and its imports on every node), so they get more than a poll's time:
        # a catch-up planned before the stacks are known would be planned again once they are.
        self.poll(timeout=max(STARTUP_PROBE_SECONDS, min(60.0, cfg.schedule.poll_interval_seconds)))
        due = missed_sweep(cfg.schedule, self.ledger.last_scheduled_sweep(), dt.datetime.now(UTC))
        if due is not None:
            self.events.put(Scheduled(due=due.timestamp(), kind="catch-up"))
        self.scheduler = build_scheduler(cfg.schedule, self.poll_quietly, self.nightly, self._missed)
        self.scheduler.start()
        # Render the per-slice metrics once now, so that the first scrape is as quick as the later ones.
        threading.Thread(target=self.exporter.render, name="metrics-warmup", daemon=True).start()
        self.ready = True

    # -- watchers ------------------------------------------------------------------------------
    def poll(self, timeout: float | None = None) -> None:
        """Probe every target on its own nodes; a changed stack becomes a StackChanged event."""
        if not self._poll_lock.acquire(blocking=False):
            return
        try:
            stale = self._check_config() or not self.keys  # whether the current job keys need recomputing
            if self.planner.refresh():
                stale = True
                log.info("artifacts or data changed", extra={"fields": {"config": str(self.loaded.path)}})
                self.events.put(ConfigChanged(reason="an artifact, data or calibration file changed"))
            cfg = self.loaded.config
            timeout = timeout or min(60.0, cfg.schedule.poll_interval_seconds)
            for target, stack in self.dispatcher.probe(sorted(cfg.targets), timeout).items():
                if isinstance(stack, str):
                    self.ledger.set_target_state(target, "unreachable", stack)
                    log.warning("target unreachable", extra={"fields": {"target": target, "detail": stack}})
                    continue
                diff = self.ledger.record_fingerprint(target, stack)
                if self._keys_from.get(target) != stack["hash"]:  # a change, or a first look at a target
                    stale = True
                if not diff and self.ready and target not in self._keys_from:
                    # First seen after start-up (unreachable until now): what was planned for it used
                    # no stack, so its gates would stay unknown until the nightly sweep. Plan it now;
                    # job keys already validated on this stack are skipped as usual.
                    diff = {k: (None, v) for k, v in stack["components"].items()}
                    log.info("first look at a target", extra={"fields": {"target": target}})
                if diff:
                    log.info("stack changed", extra={"fields": {"target": target, "diff": diff}})
                    self.events.put(StackChanged(target, diff))
            if stale:  # planning every job on every poll would cost seconds on a large matrix
                self.refresh_keys()
            self.last_poll_at = time.time()
        finally:
            self._poll_lock.release()

    def poll_quietly(self) -> None:
        try:
            self.poll()
        except LedgerError as exc:  # counted by the ledger, shown by /readyz; the next poll runs on schedule
            log.warning("poll failed", extra={"fields": {"error": str(exc)}})
        except Exception:  # a failed poll is logged; the next one runs on schedule
            log.exception("poll failed")

    def refresh_keys(self) -> None:
        """The job key of every piece of work on the current stacks: what the gates compare against."""
        fingerprints = self.ledger.latest_fingerprints()
        self.keys = current_keys(self.planner.jobs("current", fingerprints))
        self._keys_from = {target: fp["hash"] for target, fp in fingerprints.items()}

    def _missed(self) -> None:
        self.missed_schedules += 1
        log.warning("scheduled run missed", extra={"fields": {"missed_total": self.missed_schedules}})

    def snapshot(self) -> Snapshot:
        return Snapshot(loaded=self.loaded, keys=self.keys, last_poll_at=self.last_poll_at,
                        missed_schedules=self.missed_schedules,
                        ledger_errors=self.ledger_errors + self.ledger.health.errors,
                        ledger_writable=self.ledger.health.writable)

    def nightly(self, now: dt.datetime) -> None:
        due = last_due(self.loaded.config.schedule, now) or now
        self.events.put(Scheduled(due=due.timestamp()))

    def _stamp(self) -> tuple[int, int] | None:
        try:
            stat = os.stat(self.loaded.path)
            return stat.st_mtime_ns, stat.st_size
        except OSError:
            return None

    def _check_config(self) -> bool:
        """Reload a changed config (True if it was); a broken one is reported and the running one kept."""
        stamp = self._stamp()
        if stamp == self._config_stamp:
            return False
        self._config_stamp = stamp
        try:
            loaded = load_config(self.loaded.path)
        except ConfigError as exc:
            log.error("config change rejected; keeping the running config", extra={"fields": {"errors": exc.errors}})
            return False
        if loaded.hash != self.loaded.hash:
            self.loaded = loaded
            self.dispatcher.loaded = loaded
            self.planner = Planner(loaded, self.planner.hasher)
            log.info("config reloaded", extra={"fields": {"hash": loaded.hash}})
            self.events.put(ConfigChanged())
            return True
        return False

    # -- main loop ----------------------------------------------------------------------------
    def handle(self, event: Event) -> int:
        """Plan an event's jobs, queue them in the ledger, hand them to the dispatcher."""
        fingerprints = self.ledger.latest_fingerprints()
        force = isinstance(event, Scheduled) or (isinstance(event, Manual) and event.force)
        plan = self.planner.plan(event, fingerprints, lambda keys: self._known(keys, include_finished=not force))
        sweep = self.ledger.start_sweep(event.kind, event.due) if isinstance(event, Scheduled) else None
        self._unqueued += plan.jobs  # from here on, each job is queued exactly once, now or on a later try
        try:
            queued = self._queue_waiting()
        except LedgerError as exc:  # the rest are queued by _retry_waiting
            queued = 0
            self._back_off(exc)
        if sweep is not None:
            try:
                self.ledger.finish_sweep(sweep)
            except LedgerError as exc:  # only its end time is missing; when it was due is recorded
                log.warning("sweep end not recorded", extra={"fields": {"error": str(exc)}})
        log.info("planned", extra={"fields": {"event": type(event).__name__, "trigger": event.trigger,
                                               "jobs": len(plan.jobs), "already_done": plan.skipped_known,
                                               **({"target": event.target} if hasattr(event, "target") else {})}})
        return queued

    def _known(self, keys: list[str], include_finished: bool) -> set[str]:
        """Job keys queued, running (or, unless forced, done) in the ledger, or planned and waiting to be queued."""
        waiting = {spec.job_key for spec in self._unqueued}
        return self.ledger.known_job_keys(keys, include_finished) | (waiting & set(keys))

    def _queue_waiting(self) -> int:
        """Queue planned jobs in the ledger and hand each to the dispatcher; a refused write leaves the rest."""
        queued = 0
        while self._unqueued:
            spec = self._unqueued[0]
            run_id = self.ledger.enqueue(spec)  # LedgerWriteError: this one and the rest stay for the next try
            self._unqueued.pop(0)
            self.dispatcher.submit([(run_id, spec)])
            queued += 1
        return queued

    def _handle_safely(self, event: Event) -> None:
        try:
            self.handle(event)
        except LedgerError as exc:  # refused before its jobs were planned: the event is handled again later
            self._deferred.append(event)
            self._back_off(exc)
        except sa.exc.SQLAlchemyError:
            self.ledger_errors += 1
            log.exception("event failed: ledger read", extra={"fields": {"event": repr(event)}})
        except Exception:  # one bad event must not stop the daemon
            log.exception("event failed", extra={"fields": {"event": repr(event)}})

    def _back_off(self, exc: Exception) -> None:
        self._retry_failures += 1
        delay = min(30.0, 0.5 * 2 ** (self._retry_failures - 1))
        self._retry_at = time.monotonic() + delay
        log.warning("ledger refused a write; planned work kept in memory", extra={"fields": {
            "error": str(exc), "unqueued_jobs": len(self._unqueued), "deferred_events": len(self._deferred),
            "retry_in_seconds": delay}})

    def _retry_waiting(self) -> None:
        """Queue what a refused write left behind, then handle the events it stopped."""
        if not (self._unqueued or self._deferred) or time.monotonic() < self._retry_at:
            return
        try:
            self._queue_waiting()
        except LedgerError as exc:
            self._back_off(exc)
            return
        deferred, self._deferred = self._deferred, []
        self._retry_failures = 0
        for event in deferred:
            self._handle_safely(event)

    def _trap_signals(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop_event.set())

    def run(self) -> int:
        """Run until SIGTERM/SIGINT; returns the exit code."""
        self._trap_signals()
        self.start()
        self._trap_signals()  # again: connecting Ray installs its own SIGTERM handler
        while not self.stop_event.is_set():
            self._retry_waiting()
            try:
                event = self.events.get(timeout=0.5)
            except queue.Empty:
                continue
            self._handle_safely(event)
        if self._unqueued:
            log.warning("planned jobs not queued at shutdown; they are planned again at the next start",
                        extra={"fields": {"jobs": len(self._unqueued)}})
        self.shutdown()
        return 0

    def shutdown(self) -> None:
        started = time.monotonic()
        log.info("shutting down", extra={"fields": {"drain_seconds": self.loaded.config.daemon.drain_seconds}})
        self.ready = False
        self.scheduler.shutdown(wait=False)
        self.stop_event.set()
        # A poll in flight is waiting on Ray for probes: let it end (probes have their own deadline)
        # before Ray is shut down under it, which would end the whole process from that thread.
        cfg = self.loaded.config
        if self._poll_lock.acquire(timeout=min(60.0, cfg.schedule.poll_interval_seconds) + 5):
            self._poll_lock.release()
        else:
            log.warning("a poll was still running at shutdown", extra={"fields": {}})
        self._worker.join(timeout=5)
        self.dispatcher.drain(self.listener, self.loaded.config.daemon.drain_seconds)
        self.http.stop()
        self.dispatcher.shutdown()
        self.ledger.close()
        log.info("stopped", extra={"fields": {"seconds": round(time.monotonic() - started, 2)}})

    # -- HTTP -----------------------------------------------------------------------------------
    def routes(self) -> dict[tuple[str, str], Route]:
        return {("GET", "/healthz"): self._healthz, ("GET", "/readyz"): self._readyz,
                ("POST", "/sweep"): self._sweep, ("GET", "/status"): self._status,
                ("GET", "/metrics"): self._metrics, ("GET", "/gates"): self._gates,
                ("GET", "/compare"): compare.route(self.ledger,
                                                   lambda: self.loaded.config.metrics.max_cross_target_disagreement)}

    def _metrics(self, query: dict[str, str]) -> Response:
        return 200, CONTENT_TYPE_LATEST, self.exporter.render()

    def _gates(self, query: dict[str, str]) -> Response:
        return json_response(200, gates_document(self._current_gates()))

    def _current_gates(self) -> list[Gate]:
        return compute_gates(self.ledger, self.loaded, self.keys)

    def _healthz(self, query: dict[str, str]) -> Response:
        return json_response(200, {"status": "ok", "uptime_seconds": round(time.time() - self.started_at, 1)})

    def _readyz(self, query: dict[str, str]) -> Response:
        if not self.ready:
            return json_response(503, {"status": "starting" if not self.stop_event.is_set() else "stopping"})
        health = self.ledger.health
        if not health.writable:
            return json_response(503, {"status": "ledger not writable", "ledger": health.where,
                                       "error": health.last_error, "failing_since": health.failing_since,
                                       "unwritten_reports": self.dispatcher.unwritten,
                                       "unqueued_jobs": len(self._unqueued)})
        return json_response(200, {"status": "ready", "last_poll_at": self.last_poll_at})

    def _sweep(self, query: dict[str, str]) -> Response:
        target = query.get("target") or None
        if target is not None and target not in self.loaded.config.targets:
            return json_response(400, {"error": f"no such target {target!r}"})
        self.events.put(Manual(target=target, force=query.get("force") in ("1", "true", "yes")))
        return json_response(202, {"queued": True, "target": target})

    def _status(self, query: dict[str, str]) -> Response:
        gates = [gate.to_dict() for gate in self._current_gates()]  # the same as /gates
        return json_response(200, {"gates": gates, "targets": self.ledger.target_states(),
                                   "jobs": self.dispatcher.in_flight(), "last_poll_at": self.last_poll_at})


def run_daemon(config_path: str | Path, listen: str | None = None) -> int:
    from scheduler import logs

    loaded = load_config(config_path)
    logs.configure(loaded.config.daemon.log_format)
    return Daemon(loaded, listen).run()
