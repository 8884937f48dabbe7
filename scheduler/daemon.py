"""`revalidator daemon`: watch every target's stack and re-validate what a change affects.

Start-up validates the config, opens the ledger, connects Ray, resumes what a previous
process left queued or running, catches up a missed nightly sweep, and starts the poll,
the nightly schedule and the HTTP server. The main thread turns events into jobs; a
dispatcher thread runs them on Ray. SIGTERM or SIGINT stops it: no new work, in-flight jobs
get `daemon.drain_seconds` to finish, the rest is cancelled and left queued for the next
start, and the process exits 0. A second signal during that wait exits at once with code 3
(the work was interrupted): runs in flight stay `running` in the ledger, and the next start
resumes them.

The config and what is derived from it (the planner, the current job keys) are one frozen
value, `Daemon.running`, replaced whole on a reload or a refresh of the keys: a scrape, a poll
or an event handler reads it once and never sees a config with another config's keys.

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
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping

import sqlalchemy as sa

from runners.contracts import JobSpec
from scheduler.access import TokenError, ensure_token
from scheduler.config import ConfigError, LoadedConfig, load_config
from scheduler.dispatch import InfrastructureError, RayDispatcher
from scheduler.events import ConfigChanged, Event, Scheduled, StackChanged
from scheduler.exporter import Exporter, Snapshot
from scheduler.gates import CurrentKeys, current_keys
from scheduler.http import HttpServer, Route
from scheduler.ledger import Ledger, LedgerError
from scheduler.planning import Planner
from scheduler.schedule import UTC, build_scheduler, last_due, missed_sweep
from scheduler.sweep import plan_event, probe_targets
from scheduler.validate import EXIT_INTERNAL, LedgerListener

log = logging.getLogger("revalidator.daemon")
# A second SIGTERM/SIGINT: the process ends without waiting for its work, an interruption (docs/faults.md).
EXIT_FORCED = EXIT_INTERNAL


@dataclass(frozen=True)
class Running:
    """The config the daemon runs on and what follows from it; replaced whole, never edited."""

    loaded: LoadedConfig
    planner: Planner
    keys: CurrentKeys = field(default_factory=dict)  # what the gates compare against; never mutated
    keys_from: Mapping[str, str] = field(default_factory=dict)  # target -> the stack hash the keys came from


class Daemon:
    """The long-running process. Its collaborators are built here; `start()` opens what needs the
    network (the HTTP server, Ray) and `shutdown()` closes whatever was opened, also after a failed start."""

    def __init__(self, loaded: LoadedConfig, listen: str | None = None) -> None:
        cfg = loaded.config
        self.running = Running(loaded, Planner(loaded))
        self.listen = listen or cfg.daemon.listen
        self.stop_event = threading.Event()
        self.events: queue.Queue[Event] = queue.Queue()
        self.ready = False
        self.start_error: str | None = None  # why start() failed, for /healthz and /readyz
        self.started_at = time.time()
        self._signals = 0
        self._config_stamp = self._stamp()
        self._poll_lock = threading.Lock()
        self.last_poll_at: float | None = None
        self.ledger = Ledger(cfg.ledger, loaded.base_dir)  # LedgerError: nothing else is open yet
        self.listener = LedgerListener(self.ledger)
        self.exporter = Exporter(self.ledger, self.snapshot)
        self.dispatcher = RayDispatcher(loaded)
        self.scheduler = build_scheduler(cfg.schedule, self.poll_quietly, self.nightly, self._missed)
        self.http: HttpServer | None = None
        self._worker: threading.Thread | None = None
        self.missed_schedules = 0
        self.ledger_errors = 0  # failed ledger reads while handling events (writes are counted by the ledger)
        self._unqueued: list[JobSpec] = []  # planned, not yet in the ledger: it refused the write
        self._deferred: list[Event] = []  # events whose handling a ledger write stopped
        self._retry_at = 0.0
        self._retry_failures = 0

    @property
    def loaded(self) -> LoadedConfig:
        return self.running.loaded

    @property
    def unqueued_jobs(self) -> int:
        """Planned jobs the ledger has not taken yet (it refused the write)."""
        return len(self._unqueued)

    # -- start-up -----------------------------------------------------------------------------
    def start(self) -> None:
        """Serve HTTP, connect Ray, resume, poll once, schedule. A failure is kept in `start_error`
        (/healthz and /readyz answer it while the server is up) and raised; shutdown() then cleans up."""
        try:
            self._start()
        except Exception as exc:
            self.start_error = "; ".join(exc.errors) if isinstance(exc, ConfigError) else str(exc) or repr(exc)
            log.error("start failed", extra={"fields": {"error": self.start_error}})
            raise

    def _start(self) -> None:
        cfg = self.loaded.config
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
        self.dispatcher.start()
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
        self.poll(timeout=max(cfg.schedule.startup_probe_seconds, min(60.0, cfg.schedule.poll_interval_seconds)))
        due = missed_sweep(cfg.schedule, self.ledger.last_scheduled_sweep(), dt.datetime.now(UTC))
        if due is not None:
            self.events.put(Scheduled(due=due.timestamp(), kind="catch-up"))
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
            self._check_config()
            running = self.running  # this poll's config, whatever a concurrent reader sees next
            stale = not running.keys  # whether the current job keys need recomputing
            if running.planner.refresh():
                stale = True
                log.info("artifacts or data changed", extra={"fields": {"config": str(running.loaded.path)}})
                self.events.put(ConfigChanged(reason="an artifact, data or calibration file changed"))
            cfg = running.loaded.config
            timeout = timeout or min(60.0, cfg.schedule.poll_interval_seconds)
            for target, (stack, diff) in probe_targets(self.dispatcher, self.ledger, cfg.targets, timeout).items():
                if running.keys_from.get(target) != stack["hash"]:  # a change, or a first look at a target
                    stale = True
                if not diff and self.ready and target not in running.keys_from:
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
        """Recompute the current job keys (under the poll lock, the only writer of `running`)."""
        self.running = self._with_keys(self.running)

    def _with_keys(self, running: Running) -> Running:
        """`running` with the job key of every piece of work on the ledger's latest stacks."""
        fingerprints = self.ledger.latest_fingerprints()
        return replace(running, keys=current_keys(running.planner.jobs("current", fingerprints)),
                       keys_from={target: fp["hash"] for target, fp in fingerprints.items()})

    def _missed(self) -> None:
        self.missed_schedules += 1
        log.warning("scheduled run missed", extra={"fields": {"missed_total": self.missed_schedules}})

    def snapshot(self) -> Snapshot:
        running = self.running
        return Snapshot(loaded=running.loaded, keys=running.keys, last_poll_at=self.last_poll_at,
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
        try:
            loaded = load_config(self.loaded.path)
        except ConfigError as exc:
            self._config_stamp = stamp
            log.error("config change rejected; keeping the running config", extra={"fields": {"errors": exc.errors}})
            return False
        if loaded.hash == self.loaded.hash:
            self._config_stamp = stamp
            return False
        # Built whole before anyone sees it: the new config with its own planner and job keys (a ledger
        # read that fails here leaves the stamp, so the next poll tries again). The dispatcher takes the
        # config first, so that no job planned on the new config meets the old one there.
        running = self._with_keys(Running(loaded, Planner(loaded, self.running.planner.hasher)))
        self._config_stamp = stamp
        self.dispatcher.loaded = loaded
        self.running = running
        log.info("config reloaded", extra={"fields": {"hash": loaded.hash}})
        self.events.put(ConfigChanged())
        return True

    # -- main loop ----------------------------------------------------------------------------
    def handle(self, event: Event) -> int:
        """Plan an event's jobs, queue them in the ledger, hand them to the dispatcher."""
        plan = plan_event(self.running.planner, self.ledger, event, [spec.job_key for spec in self._unqueued])
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
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame: object) -> None:
        """The first signal stops gracefully; a second one, as uvicorn does, exits at once."""
        self._signals += 1
        name = signal.Signals(signum).name
        if self._signals == 1:
            log.info("stop requested; a second signal exits at once", extra={"fields": {"signal": name}})
            self.stop_event.set()
            return
        log.error("second signal: exiting now without waiting for the work in flight; its runs stay unfinished "
                  "in the ledger and are resumed at the next start",
                  extra={"fields": {"signal": name, "exit_code": EXIT_FORCED, "in_flight": self.dispatcher.in_flight()}})
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_FORCED)  # no cleanup may block: that is what the second signal asks for

    def run(self) -> int:
        """Run until SIGTERM/SIGINT; returns the exit code."""
        self._trap_signals()
        try:
            self.start()
        except BaseException:
            try:
                self.shutdown()
            except Exception:  # the start's own error is the one to report
                log.exception("shutdown after a failed start failed")
            raise
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
        """Stop what start() started, in reverse; safe after a start that failed part way."""
        started = time.monotonic()
        cfg = self.loaded.config
        log.info("shutting down", extra={"fields": {"drain_seconds": cfg.daemon.drain_seconds}})
        self.ready = False
        self.stop_event.set()
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        # A poll in flight is waiting on Ray for probes: let it end (probes have their own deadline)
        # before Ray is shut down under it, which would end the whole process from that thread.
        if self._poll_lock.acquire(timeout=min(60.0, cfg.schedule.poll_interval_seconds) + 5):
            self._poll_lock.release()
        else:
            log.warning("a poll was still running at shutdown", extra={"fields": {}})
        if self._worker is not None:
            self._worker.join(timeout=5)
        self.dispatcher.drain(self.listener, cfg.daemon.drain_seconds)
        if self.http is not None:
            self.http.stop()
        self.dispatcher.shutdown()
        self.ledger.close()
        log.info("stopped", extra={"fields": {"seconds": round(time.monotonic() - started, 2)}})

    # -- HTTP -----------------------------------------------------------------------------------
    def routes(self) -> dict[tuple[str, str], Route]:
        from scheduler.endpoints import Endpoints

        return Endpoints(self).routes()


def run_daemon(config_path: str | Path, listen: str | None = None) -> int:
    from scheduler import logs

    loaded = load_config(config_path)
    logs.configure(loaded.config.daemon.log_format)
    return Daemon(loaded, listen).run()
