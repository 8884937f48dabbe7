"""The dispatcher's outbox: its reports to the listener (ledger writes, in practice), in order.

A write that fails (the ledger locked by another process, a full disk) stays at the head, in
memory, and is retried with a backoff doubling from the first of WRITE_RETRY_SECONDS to the last;
later reports wait behind it, so the ledger sees each job's history in order and a computed
result is never dropped because the ledger could not take it at that moment.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from scheduler.ledger_errors import LedgerError

log = logging.getLogger("revalidator.dispatch")

# Backoff of a failed listener write: doubles from the first delay up to the last.
WRITE_RETRY_SECONDS = (0.5, 30.0)


@dataclass
class Report:
    """One listener call waiting in the outbox: the method's name and its arguments (the run id first)."""

    method: str
    args: tuple[Any, ...]


class Outbox:
    def __init__(self) -> None:
        self._reports: deque[Report] = deque()
        self._failures = 0  # consecutive failed attempts at the head
        self._retry_at = 0.0
        self.failing_since: float | None = None  # monotonic time of the first failure in a row
        self.error: str | None = None  # the last failed write's error

    def __len__(self) -> int:
        return len(self._reports)

    def run_ids(self) -> list[str]:
        """The runs whose reports wait."""
        return sorted({report.args[0] for report in self._reports})

    def tell(self, listener: Any, method: str, *args: Any) -> None:
        """Report to the listener; behind earlier reports that are still waiting to be written."""
        self._reports.append(Report(method, args))
        self.flush(listener)

    def flush(self, listener: Any, now: bool = False) -> bool:
        """Deliver waiting reports in order; True when none is left. A failure waits out its backoff
        (unless `now`)."""
        if now:
            self._retry_at = 0.0
        if self._reports and time.monotonic() < self._retry_at:
            return False
        while self._reports:
            report = self._reports[0]
            try:
                getattr(listener, report.method)(*report.args)
            except LedgerError as exc:
                self._failures += 1
                self.error = str(exc)
                if self.failing_since is None:
                    self.failing_since = time.monotonic()
                first, last = WRITE_RETRY_SECONDS
                delay = min(last, first * 2 ** (self._failures - 1))
                self._retry_at = time.monotonic() + delay
                log.warning("ledger write failed; kept in memory and retried", extra={"fields": {
                    "report": report.method, "about": report.args[0], "unwritten": len(self._reports),
                    "retry_in_seconds": delay, "error": str(exc)}})
                return False
            self._reports.popleft()
            if self._failures:
                log.info("ledger writes resumed", extra={"fields": {"after_failures": self._failures}})
            self._failures, self._retry_at, self.failing_since = 0, 0.0, None
        return True

    def flush_until(self, listener: Any, until: float, pause: float) -> None:
        """Keep trying to deliver everything until the monotonic time `until` (at shutdown)."""
        while self._reports and time.monotonic() < until:
            if not self.flush(listener, now=True):
                time.sleep(pause)
