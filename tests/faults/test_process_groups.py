"""A command that outlives its timeout is ended with its whole process group: a real
`sh -c "sleep 600"` child, and the grandchild checked gone by its PID."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from runners.probes.custom import custom_probe
from runners.process import run_in_group
from tests.e2e.observability import wait_for


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_timeout_kills_the_grandchild_too(tmp_path: Path) -> None:
    pidfile = tmp_path / "sleep.pid"
    started = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        run_in_group(["sh", "-c", f"sleep 600 & echo $! > {pidfile}; wait"], timeout=1.5)
    assert time.monotonic() - started < 10
    grandchild = int(pidfile.read_text())
    wait_for(lambda: not alive(grandchild), 5, f"the grandchild sleep (pid {grandchild}) to be gone")


def test_a_hanging_probe_command_leaves_no_process_behind(tmp_path: Path) -> None:
    pidfile = tmp_path / "sleep.pid"
    probe = custom_probe("firmware", {"command": ["sh", "-c", f"sleep 601 & echo $! > {pidfile}; wait"],
                                      "timeout_seconds": 1})
    with pytest.raises(subprocess.TimeoutExpired):
        probe()
    grandchild = int(pidfile.read_text())
    wait_for(lambda: not alive(grandchild), 5, f"the probe's sleep (pid {grandchild}) to be gone")


def test_a_command_that_finishes_in_time_gives_its_output(tmp_path: Path) -> None:
    done = run_in_group(["sh", "-c", "echo out; echo err >&2; exit 3"], timeout=10)
    assert (done.returncode, done.stdout, done.stderr) == (3, "out\n", "err\n")
    # Its own group: not the test's.
    child = subprocess.run(["sh", "-c", "ps -o pgid= -p $$"], capture_output=True, text=True)
    assert int(run_in_group(["sh", "-c", "ps -o pgid= -p $$"], timeout=10).stdout) != os.getpgrp()
    assert int(child.stdout) == os.getpgrp()
