"""Real faults for the tests: a SQLite lock held by another process, a full filesystem, a process
without the privilege to read what its mode bits forbid."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

_HOLDER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("ROLLBACK")
conn.close()
"""


class LockHolder:
    """Another process that holds `BEGIN EXCLUSIVE` on a SQLite file until released."""

    def __init__(self, path: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(path)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert line.strip() == "locked", f"the lock holder did not get the lock: {line!r}"

    def release(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write("\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=10)


@contextmanager
def locked(path: Path) -> Iterator[LockHolder]:
    holder = LockHolder(path)
    try:
        yield holder
    finally:
        holder.release()


@contextmanager
def full_filesystem(mountpoint: Path, size: str = "2m") -> Iterator[Path]:
    """A real, small tmpfs at `mountpoint`; skips (saying why) where this process cannot mount one."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a full filesystem needs a tmpfs mount: not root here, or no mount(8)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mountpoint)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode})")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def fill(folder: Path) -> None:
    """Write until the filesystem under `folder` has no space left."""
    with open(folder / "filler", "wb") as out:
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError:
            pass


def unprivileged(argv: list[str]) -> list[str]:
    """`argv` run so that file modes apply to it: as root, without CAP_DAC_OVERRIDE/READ_SEARCH."""
    if os.geteuid() != 0:
        return argv
    capsh = shutil.which("capsh")
    if capsh is None:
        pytest.skip("running as root and capsh is missing: cannot drop the privilege that ignores file modes")
    quoted = " ".join(f"'{a}'" for a in argv)
    return [capsh, "--drop=cap_dac_override,cap_dac_read_search", "--", "-c", f"exec {quoted}"]


def stop_validate(proc: subprocess.Popen, number: int, ledger: Path) -> str:
    """Send `number` to a running `validate` and check it stopped as the exit-code contract says:
    exit 3, a last line naming the signal and the ledger, no traceback. Returns its stderr."""
    import signal

    try:
        proc.send_signal(number)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 3, stderr
    last = stderr.strip().splitlines()[-1]
    name = signal.Signals(number).name
    assert last.startswith(f"error: validate stopped by {name}: ") and str(ledger) in last, stderr
    assert "Traceback" not in stderr
    return stderr
