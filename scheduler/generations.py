"""Worker generations: a target's jobs never run in a Ray worker started before its stack last changed.

A long-lived Ray worker keeps every library it imported mapped; after an in-place upgrade (pip deletes
the old files, the process keeps them) it would run the old runtime under a record of the new one.
Ray reuses a worker only for tasks with the same runtime_env, so each job carries its target's stack
generation as an environment variable: a changed fingerprint (a return to an earlier one too) starts
a new generation, and with it new worker processes. Idle workers of an older generation are never
matched again; Ray reaps idle workers above its soft limit (one per CPU). The stack probes run in
the same generation as the jobs (they only read files), so that no worker pool of their own is
reaped and restarted between polls. The job itself still checks what its process loaded
(runners/loaded.py).
"""

from __future__ import annotations

import threading
from typing import Any

# The environment variable that carries a target's stack generation into its job workers.
STACK_ENV = "REVALIDATOR_STACK"


class WorkerGenerations:
    """Per target, the stack hash last probed and the generation of workers its jobs may run in."""

    def __init__(self) -> None:
        self._stacks: dict[str, tuple[str, int]] = {}
        self._count = 0
        self._lock = threading.Lock()  # the poll notes stacks while the dispatcher thread reads them

    def note(self, target: str, stack_hash: str) -> None:
        """A target's probed stack; a new one starts a new generation."""
        with self._lock:
            known = self._stacks.get(target)
            if known is None or known[0] != stack_hash:
                self._count += 1
                self._stacks[target] = (stack_hash, self._count)

    def renew(self, target: str) -> None:
        """A new generation on the same stack: one of the target's workers ran a stale runtime (a job
        during an upgrade, or a library replaced where no probe looks)."""
        with self._lock:
            known = self._stacks.get(target)
            self._count += 1
            self._stacks[target] = (known[0] if known else "unprobed", self._count)

    def options(self, target: str) -> dict[str, Any]:
        """Ray task options that keep a target's jobs off workers of its earlier generations."""
        with self._lock:
            known = self._stacks.get(target)
        if known is None:  # not probed yet: workers serve one driver, and all of this one's are new
            return {}
        return {"runtime_env": {"env_vars": {STACK_ENV: f"{known[0]}.{known[1]}"}}}
