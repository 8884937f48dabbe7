"""A dispatcher's hold on the shared local Ray of one-shot commands (scheduler/local_ray.py).

Ray reads its token settings once, when it is imported, so they are set here before that; where
the shared instance cannot be attached or joined, they are put back and the command starts an
embedded Ray of its own, saying why. The command's Ray driver also reports no task events (the
state API's task records, which nothing here reads): without them its disconnect takes about
0.1 s instead of 0.35.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from scheduler.local_ray import Attachment, LocalRayError, SharedLocalRay

log = logging.getLogger("revalidator.dispatch")


class InfrastructureError(RuntimeError):
    """Ray cannot be started or reached (re-exported by scheduler/dispatch.py, where callers take it)."""
_AUTH_VARIABLES = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
NO_TASK_EVENTS = {"RAY_task_events_report_interval_ms": "0"}
_SET_VARIABLES = (*_AUTH_VARIABLES, *NO_TASK_EVENTS)


class SharedRay:
    def __init__(self, shared: SharedLocalRay | None) -> None:
        self.shared = shared  # None: this command starts (or reaches) a Ray of its own
        self.attachment: Attachment | None = None
        # or "shared, started" / "shared, reused" once attached, "shared, kept driver" (kept after release)
        self.origin = "embedded"
        self._saved_auth: dict[str, str | None] = {}

    def attach(self) -> None:
        """Attach to the shared instance, starting it if needed (before Ray is imported)."""
        if self.shared is None or self.attachment is not None:
            return
        try:
            self.attachment = self.shared.attach()
        except (LocalRayError, OSError) as exc:
            log.warning("starting an embedded Ray instead of the shared one", extra={"fields": {"reason": str(exc)}})
            return
        self._saved_auth = join_settings(self.attachment.token)
        self.origin = "shared, started" if self.attachment.started else "shared, reused"

    def adopt(self, attachment: Attachment) -> None:
        """Use a hold this process took itself: the kept driver's, which joined Ray with these
        settings when it started (scheduler/kept_driver.py)."""
        self.attachment, self.origin = attachment, "shared, kept driver"

    def init(self, ray: Any, kwargs: dict[str, Any]) -> bool:
        """Join the attached instance; False (and detached, settings restored) where that fails."""
        if self.attachment is None:
            return False
        try:
            ray.init(address=self.attachment.address, **kwargs)
            return True
        except Exception as exc:  # a head that died since it answered: this command starts its own
            log.warning("starting an embedded Ray instead of the shared one", extra={"fields": {"reason": str(exc)}})
            for name, value in self._saved_auth.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            self.release()
            self.origin = "embedded"
            return False

    def release(self) -> None:
        if self.attachment is not None:
            self.attachment.release()
            self.attachment = None


def join_settings(token: str) -> dict[str, str | None]:
    """Set what a driver of the shared instance needs before Ray is imported; returns what they were."""
    saved = {name: os.environ.get(name) for name in _SET_VARIABLES}
    os.environ["RAY_AUTH_MODE"], os.environ["RAY_AUTH_TOKEN"] = "token", token
    os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
    os.environ.update(NO_TASK_EVENTS)
    return saved


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
