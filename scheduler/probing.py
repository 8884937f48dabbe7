"""Probes in flight: a target's stack probe outlives the poll that started it.

A probe runs in one of the target's job workers. On a loaded machine a new worker can take longer
to start than a poll waits; cancelling the probe then would kill that worker half-started, and the
next poll would start another one, and so on, without ever getting an answer. So a probe a poll
did not hear from stays in flight: the poll reports its target as not answering, the next poll
waits on the same probe instead of starting a second one, and only a probe unanswered for
`patience` seconds is cancelled (its worker with it) and started afresh next time.
"""

from __future__ import annotations

import time
from typing import Any, Callable

# A probe unanswered this long is cancelled; its target's next poll starts a new one.
PROBE_PATIENCE_SECONDS = 60.0


class InFlightProbes:
    def __init__(self, patience: float = PROBE_PATIENCE_SECONDS) -> None:
        self.patience = patience
        self._refs: dict[str, tuple[Any, float]] = {}  # target -> (object ref, when it was submitted)

    def collect(self, ray: Any, submit: Callable[[str], Any], targets: list[str],
                timeout: float) -> dict[str, dict[str, Any] | str]:
        """Each target's stack ({target: stack}), or why there is none ({target: reason}); a target
        whose probe is still in flight from an earlier poll waits on that probe."""
        now = time.monotonic()
        for name in targets:
            if name not in self._refs:
                self._refs[name] = (submit(name), now)
        by_ref = {self._refs[name][0]: name for name in targets}
        ready, missing = ray.wait(list(by_ref), num_returns=len(by_ref), timeout=timeout) if by_ref else ([], [])
        out: dict[str, dict[str, Any] | str] = {}
        for ref in ready:
            name = by_ref[ref]
            del self._refs[name]
            try:
                out[name] = ray.get(ref)
            except ray.exceptions.RayError as exc:
                out[name] = f"probe failed: {type(exc).__name__}"
        for ref in missing:
            name = by_ref[ref]
            age = time.monotonic() - self._refs[name][1]
            if age >= max(self.patience, timeout):
                ray.cancel(ref, force=True)  # its worker too: a probe this late is hung
                del self._refs[name]
                out[name] = f"probe timed out after {age:.0f}s"
            else:
                out[name] = f"probe not answered after {age:.0f}s (still waiting for it)"
        return out

    def cancel(self, ray: Any) -> None:
        """Cancel every probe in flight (the dispatcher is shutting down)."""
        for ref, _ in self._refs.values():
            try:
                ray.cancel(ref, force=True)
            except Exception:  # the worker may already be gone with Ray
                pass
        self._refs.clear()
