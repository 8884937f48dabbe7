"""Commands on a target (probe commands, external harnesses), each in a process group of its own.

`subprocess.run(timeout=...)` kills only the process it started: a command that is a shell
or a launcher leaves its children running with parent 1, and a probe that hangs on every
poll leaks a few processes each time. Here the command leads a new session (so its process
group is its own and a terminal's signals do not reach it), and a timeout kills the whole
group before the error is raised.
"""

from __future__ import annotations

import os
import signal
import subprocess
from typing import Any


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL every process in the command's group, then reap the command itself."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):  # the group is already gone
        pass
    process.wait()


def run_in_group(argv: list[str], timeout: float, **kwargs: Any) -> subprocess.CompletedProcess:
    """`subprocess.run(argv, capture_output=True, text=True, timeout=timeout)`, in a process group of
    its own that a timeout ends as a whole; raises subprocess.TimeoutExpired like `run` does."""
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True, **kwargs) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(process)
            process.communicate()  # the pipes close once no member of the group holds them
            raise
        except BaseException:  # interrupted: leave nothing behind
            kill_group(process)
            raise
    return subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)
