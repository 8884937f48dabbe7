"""The daemon's HTTP endpoints: health, readiness, /metrics, /gates, /status, /compare and POST /sweep.

Each request reads the daemon's state once (`Daemon.running`, its ledger and dispatcher) and
answers from it; only POST /sweep changes anything, by queueing a Manual event.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST

from scheduler import compare
from scheduler.events import Manual
from scheduler.gates import Gate, compute_gates, gates_document
from scheduler.http import Response, Route, json_response

if TYPE_CHECKING:
    from scheduler.daemon import Daemon


class Endpoints:
    """The routes of one daemon, as the HTTP server takes them."""

    def __init__(self, daemon: Daemon) -> None:
        self.d = daemon

    def routes(self) -> dict[tuple[str, str], Route]:
        return {("GET", "/healthz"): self._healthz, ("GET", "/readyz"): self._readyz,
                ("POST", "/sweep"): self._sweep, ("GET", "/status"): self._status,
                ("GET", "/metrics"): self._metrics, ("GET", "/gates"): self._gates,
                ("GET", "/compare"): compare.route(
                    self.d.ledger, lambda: self.d.loaded.config.metrics.max_cross_target_disagreement)}

    def _metrics(self, query: dict[str, str]) -> Response:
        return 200, CONTENT_TYPE_LATEST, self.d.exporter.render()

    def _gates(self, query: dict[str, str]) -> Response:
        return json_response(200, gates_document(self._current_gates()))

    def _current_gates(self) -> list[Gate]:
        running = self.d.running
        return compute_gates(self.d.ledger, running.loaded, running.keys)

    def _healthz(self, query: dict[str, str]) -> Response:
        if self.d.start_error is not None:  # the process is about to exit: say why
            return json_response(503, {"status": "start failed", "error": self.d.start_error})
        return json_response(200, {"status": "ok", "uptime_seconds": round(time.time() - self.d.started_at, 1)})

    def _readyz(self, query: dict[str, str]) -> Response:
        if self.d.start_error is not None:
            return json_response(503, {"status": "start failed", "error": self.d.start_error})
        if not self.d.ready:
            return json_response(503, {"status": "starting" if not self.d.stop_event.is_set() else "stopping"})
        health = self.d.ledger.health
        if not health.writable:
            return json_response(503, {"status": "ledger not writable", "ledger": health.where,
                                       "error": health.last_error, "failing_since": health.failing_since,
                                       "unwritten_reports": self.d.dispatcher.unwritten,
                                       "unqueued_jobs": self.d.unqueued_jobs})
        return json_response(200, {"status": "ready", "last_poll_at": self.d.last_poll_at})

    def _sweep(self, query: dict[str, str]) -> Response:
        target = query.get("target") or None
        if target is not None and target not in self.d.loaded.config.targets:
            return json_response(400, {"error": f"no such target {target!r}"})
        self.d.events.put(Manual(target=target, force=query.get("force") in ("1", "true", "yes")))
        return json_response(202, {"queued": True, "target": target})

    def _status(self, query: dict[str, str]) -> Response:
        gates = [gate.to_dict() for gate in self._current_gates()]  # the same as /gates
        return json_response(200, {"gates": gates, "targets": self.d.ledger.target_states(),
                                   "jobs": self.d.dispatcher.in_flight(), "last_poll_at": self.d.last_poll_at})
