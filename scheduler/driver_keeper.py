"""The supervisor's side of its kept driver (scheduler/kept_driver.py): when to start it, start it
again, and end it (scheduler/local_ray.py's `serve` runs these)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

from scheduler.local_keys import DRIVER_ENV, driver_socket
from scheduler.local_ray import alive, end_process, end_with_parent, last_used

# The kept driver's exit codes (scheduler/kept_driver.py): 0 it ended on purpose (stale code, or asked
# to), so it is started again; DRIVER_SUPERSEDED another instance's driver serves this environment.
DRIVER_SUPERSEDED = 75
# A driver that crashed is started again after this, doubling up to _DRIVER_BACKOFF_MAX.
_DRIVER_BACKOFF_SECONDS = 5.0
_DRIVER_BACKOFF_MAX = 300.0


class KeptDriver:
    """The instance's kept driver, a child of the supervisor, started once the command that started
    the instance has let go and no other is attached (its start-up would compete with their jobs for
    the CPUs), and again whenever it exits: at once when it ended on purpose (its code changed),
    after a growing pause when it crashed, and once its lock is free when another instance's driver
    serves the same environment (another CPU count). None with $REVALIDATOR_KEPT_DRIVER "off"."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        socket_path = driver_socket() if os.environ.get(DRIVER_ENV) != "off" else None
        self.lock = socket_path.with_name("driver.lock") if socket_path else None  # None: no driver here
        self.process: subprocess.Popen | None = None
        self.not_before = 0.0
        self.backoff = _DRIVER_BACKOFF_SECONDS
        self.unused_since: float | None = last_used(directory)  # None once a command has let go

    def keep(self, in_use: IO[str]) -> None:
        """Start the driver if it is not running and may be started now."""
        if self.process is not None:
            code = self.process.poll()
            if code is None:
                return
            self.process = None
            if code not in (0, DRIVER_SUPERSEDED):
                print(f"kept driver exited with {code}; starting another in {self.backoff:g} s", flush=True)
                self.not_before, self.backoff = time.monotonic() + self.backoff, min(self.backoff * 2,
                                                                                     _DRIVER_BACKOFF_MAX)
        if self.unused_since is not None and last_used(self.directory) == self.unused_since:
            return
        self.unused_since = None
        if self.lock is None or time.monotonic() < self.not_before or not _free(in_use) or not _free(self.lock):
            return
        with open(self.directory / "driver.log", "ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "scheduler.kept_driver", str(self.directory)],
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                            preexec_fn=end_with_parent)

    def end(self) -> None:
        if self.process is not None:
            end_process(self.process, 30)
            self.process = None


def _free(lock: IO[str] | Path) -> bool:
    """Whether nobody holds this lock (taken and let go at once)."""
    try:
        with open(lock, "a+") if isinstance(lock, Path) else contextlib.nullcontext(lock) as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(handle, fcntl.LOCK_UN)
    except BlockingIOError:
        return False
    except OSError:  # no driver folder yet: the driver makes it
        return True
    return True


def kept_driver(directory: Path) -> dict[str, Any] | None:
    """The state of the kept driver of the instance in `directory`, while it listens."""
    for path in directory.parent.glob("driver-*/driver.json"):
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if state.get("instance") == str(directory) and alive(state.get("pid")):
            return state
    return None
