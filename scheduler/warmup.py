"""Warm workers for a one-shot command: each target's job worker starts while the command still plans.

Ray workers belong to the Ray job (the command) that started them, so a one-shot `validate` on a
kept local Ray finds none left by the previous command: its first job waits for a new worker
process and the harness's imports, about a second. So, as soon as Ray is up, the dispatcher sends
every target one small task (scheduler/tasks.warm) with the very options its jobs will carry; it
imports the harness and the task families of that target's jobs and returns, while the command
opens its ledger and queues its runs. The target's first job is held back until the warm-up has
returned (or for at most `patience` seconds), so that Ray gives it the idle, warmed worker rather
than starting a second one.

Isolation is unchanged: the warmed worker is one of this command's own workers, in the target's
current worker generation (scheduler/generations.py), as any worker its jobs ran in would be; the
job still checks the runtimes its process loaded (runners/loaded.py).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

log = logging.getLogger("revalidator.dispatch")

# Longest a target's first job waits for its warm-up: a worker that starts slower than this (a
# loaded machine, a remote node pulling its environment) is not worth more of the job's time.
PATIENCE_SECONDS = 10.0


class WarmUps:
    """The warm-up tasks in flight per target, until they return or their patience runs out."""

    def __init__(self, patience: float = PATIENCE_SECONDS) -> None:
        self.patience = patience
        self._flights: dict[str, tuple[list[Any], float]] = {}  # target -> (object refs, give up at)
        self.warmed: dict[str, list[int]] = {}  # target -> pids of the workers its warm-ups ran in

    def start(self, plan: dict[str, tuple[tuple[str, ...], int]], submit: Callable[[str, tuple[str, ...]], Any]) -> None:
        """Per target of `plan` ({target: (task names, workers)}), that many warm-ups at once (so
        that Ray starts that many workers): `submit(target, tasks)` returns one's object ref."""
        until = time.monotonic() + self.patience
        for target, (tasks, workers) in plan.items():
            if target not in self._flights:
                self._flights[target] = ([submit(target, tasks) for _ in range(workers)], until)

    def holding(self, ray: Any, target: str) -> bool:
        """Whether `target`'s jobs should still wait for its warm-ups (checked without blocking)."""
        flight = self._flights.get(target)
        if flight is None:
            return False
        refs, until = flight
        done, running = ray.wait(refs, num_returns=len(refs), timeout=0)
        if running and time.monotonic() < until:
            return True
        del self._flights[target]
        for ref in running:
            ray.cancel(ref, force=True)
        if running:
            log.info("warm-up still running; the jobs go ahead", extra={"fields": {"target": target}})
        for ref in done:
            try:
                pid = ray.get(ref)
            except ray.exceptions.RayError as exc:  # a job will meet the same trouble and report it
                log.info("warm-up failed", extra={"fields": {"target": target, "error": type(exc).__name__}})
                continue
            self.warmed.setdefault(target, []).append(pid)
            log.info("worker warmed", extra={"fields": {"target": target, "pid": pid}})
        return False

    def wait(self, ray: Any, timeout: float) -> None:
        """Block until a warm-up returns or `timeout` passes (nothing else is running meanwhile)."""
        refs = [ref for flight in self._flights.values() for ref in flight[0]]
        if refs:
            ray.wait(refs, num_returns=1, timeout=timeout)
        else:
            time.sleep(timeout)

    def cancel(self, ray: Any) -> None:
        """Drop the warm-ups still in flight (the command is done or stopping)."""
        for refs, _ in self._flights.values():
            for ref in refs:
                ray.cancel(ref, force=True)
        self._flights.clear()
