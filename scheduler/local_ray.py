"""A local Ray kept between one-shot commands, so that `revalidator validate` on the embedded default
attaches to a running Ray in a fraction of a second instead of starting and stopping one each time.

The first one-shot command starts a small supervisor process (this module, `serve`), which runs
`ray start --head --block` on 127.0.0.1 with a token of its own and stops it once no command has
used it for `ray.keep_local_seconds`. Jobs still run in Ray workers started for each command's own
Ray job, through the same JobSpec/JobResult contract and runtime environments as the daemon's.

An instance serves only commands that would start an identical embedded Ray: same interpreter, Ray
version, CPU count, working directory and environment (shell noise such as PWD aside),
because its workers inherit the environment of the command that started it. Anything else gets an
instance of its own, in a directory named by that key:

  state.json   address, token and pids, written once the head answers (mode 0600)
  start.lock   held by a command while it looks for, or starts, the instance
  in-use.lock  held shared by every attached command; the supervisor stops Ray only when it can take
               it exclusively, so a command never loses its Ray in the middle of a run
  last-used    its modification time is when the last command let go
  ray.log, supervisor.log, driver.log

Once the command that started it has let go, the supervisor also keeps a driver that runs the next
`validate` commands itself (scheduler/kept_driver.py), in a folder of its own beside the instances
(scheduler/local_keys.py); it ends that driver before it stops Ray.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import IO, Any, Iterator, Mapping

from scheduler.local_keys import DIRECTORY_ENV, DRIVER_ENV, MODE_ENV, base_directory, comparable_env, key_of

__all__ = ["DIRECTORY_ENV", "DRIVER_ENV", "MODE_ENV", "Attachment", "LocalRayError", "SharedLocalRay", "base_directory",
           "for_one_shot", "instance_key", "instances", "live_state", "stop"]

START_TIMEOUT_SECONDS = 120.0
_POLL_SECONDS = 0.05
_SUPERVISE_SECONDS = 1.0


class LocalRayError(RuntimeError):
    """A shared local Ray could not be started or reached (the command then starts its own)."""


@dataclass(frozen=True)
class Attachment:
    """A command's hold on a running instance; `release` lets the supervisor count idle time again."""

    address: str
    token: str
    started: bool  # True when this command started the instance
    directory: Path
    _in_use: IO[str]

    def release(self) -> None:
        if self._in_use.closed:  # released already
            return
        (self.directory / "last-used").touch()
        fcntl.flock(self._in_use, fcntl.LOCK_UN)
        self._in_use.close()


@dataclass(frozen=True)
class SharedLocalRay:
    """Where a one-shot command finds (or starts) the local Ray it shares with the next ones."""

    directory: Path
    keep_seconds: float
    num_cpus: int | None

    def attach(self) -> Attachment:
        """Attach to the live instance, starting it first if there is none."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        with _locked(self.directory / "start.lock", fcntl.LOCK_EX):
            for _ in range(2):  # a second pass when the supervisor stopped Ray while this command waited
                state = live_state(self.directory)
                started = state is None
                if started:
                    state = self._start()
                in_use = open(self.directory / "in-use.lock", "a+")
                fcntl.flock(in_use, fcntl.LOCK_SH)  # waits while a supervisor is stopping its Ray
                if live_state(self.directory) == state:
                    return Attachment(state["address"], state["token"], started, self.directory, in_use)
                in_use.close()
        raise LocalRayError(f"the local Ray in {self.directory} stopped while attaching to it")

    def attach_running(self, address: str) -> Attachment | None:
        """Hold the live instance at `address` without waiting or starting one (for the kept driver's
        commands): None while its supervisor stops it, or once another instance replaced it."""
        in_use = open(self.directory / "in-use.lock", "a+")
        try:
            fcntl.flock(in_use, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            in_use.close()
            return None
        state = live_state(self.directory)
        if state is None or state["address"] != address:
            in_use.close()
            return None
        return Attachment(address, state["token"], False, self.directory, in_use)

    def _start(self) -> dict[str, Any]:
        log = open(self.directory / "supervisor.log", "ab")
        command = [sys.executable, "-m", "scheduler.local_ray", "serve", str(self.directory),
                   "--keep-seconds", str(self.keep_seconds)]
        if self.num_cpus is not None:
            command += ["--num-cpus", str(self.num_cpus)]
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        with log:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                       env=env, start_new_session=True)  # outlives this command, and its Ctrl-C
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            state = live_state(self.directory)
            if state is not None and state["supervisor_pid"] == process.pid:
                return state
            if process.poll() is not None:
                raise LocalRayError(f"the local Ray supervisor exited with {process.returncode}: "
                                    f"{_tail(self.directory / 'supervisor.log')}")
            time.sleep(_POLL_SECONDS)
        os.kill(process.pid, signal.SIGTERM)
        raise LocalRayError(f"the local Ray did not answer within {START_TIMEOUT_SECONDS:.0f} s; "
                            f"see {self.directory / 'ray.log'}")


def for_one_shot(address: str | None, keep_seconds: float, num_cpus: int | None,
                 env: Mapping[str, str] | None = None) -> SharedLocalRay | None:
    """The shared instance a one-shot command should use, or None where it starts its own Ray
    (an address is configured, keeping is off, or $REVALIDATOR_LOCAL_RAY is "fresh"). `env`: the
    command's environment (default: this process's)."""
    env = os.environ if env is None else env
    if address or env.get("RAY_ADDRESS") or keep_seconds <= 0 or env.get(MODE_ENV) == "fresh":
        return None
    return SharedLocalRay(base_directory(env) / instance_key(num_cpus, env), keep_seconds, num_cpus)


def instance_key(num_cpus: int | None, env: Mapping[str, str] | None = None) -> str:
    """What makes two commands' embedded Rays interchangeable, hashed."""
    # Not sys.path: each command's Ray job hands its own to its workers.
    return key_of({"python": sys.executable, "ray": metadata.version("ray"), "num_cpus": num_cpus,
                   "cwd": os.getcwd(), "env": comparable_env(os.environ if env is None else env)})


def live_state(directory: Path) -> dict[str, Any] | None:
    """The instance's state when its supervisor runs and its head answers; a stale file is removed."""
    path = directory / "state.json"
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if alive(state.get("supervisor_pid")) and _answers(state.get("address", "")):
        return state
    with contextlib.suppress(OSError):
        path.unlink()
    return None


def instances(base: Path | None = None) -> list[tuple[Path, dict[str, Any]]]:
    """Every live instance under the base directory."""
    base = base or base_directory()
    found = ((d, live_state(d)) for d in sorted(base.iterdir()) if d.is_dir()) if base.is_dir() else ()
    return [(d, state) for d, state in found if state is not None]


def stop(directory: Path, timeout: float = 60.0) -> bool:
    """Ask an instance's supervisor to stop its Ray now; True once it has exited."""
    state = live_state(directory)
    if state is None:
        return True
    os.kill(state["supervisor_pid"], signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(state["supervisor_pid"]):
            return True
        time.sleep(_POLL_SECONDS)
    return False


# -- the supervisor -----------------------------------------------------------------------------
def serve(directory: Path, keep_seconds: float, num_cpus: int | None) -> int:
    """Run `ray start --head --block`, publish its address, stop it when idle or on SIGTERM."""
    stopping: list[str] = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append("SIGTERM"))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # only a stop request or idleness ends it
    token, port = secrets.token_hex(32), _free_port()
    # Its workers report no task events either (scheduler/ray_attach.py): nothing reads them.
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "RAY_task_events_report_interval_ms": "0"}
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)  # the head binds to 127.0.0.1 by the flag below
    command = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", "--disable-usage-stats",
               "--node-ip-address=127.0.0.1", f"--port={port}", "--include-dashboard=false"]
    if num_cpus is not None:
        command.append(f"--num-cpus={num_cpus}")
    with open(directory / "ray.log", "ab") as log:
        head = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                preexec_fn=end_with_parent)
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while not _answers(address):
        if head.poll() is not None or stopping or time.monotonic() > deadline:
            end_process(head)
            print(f"ray start did not come up (exit {head.poll()}): {_tail(directory / 'ray.log')}", flush=True)
            return 1
        time.sleep(_POLL_SECONDS)
    (directory / "last-used").touch()
    write_private(directory / "state.json", {"address": address, "token": token, "supervisor_pid": os.getpid(),
                                              "ray_pid": head.pid, "keep_seconds": keep_seconds,
                                              "started_at": time.time()})
    print(f"local Ray at {address}, kept {keep_seconds:g} s after its last use", flush=True)
    from scheduler.driver_keeper import KeptDriver  # not at import: it imports this module

    driver = KeptDriver(directory)
    with open(directory / "in-use.lock", "a+") as in_use:
        while True:
            if not stopping:
                driver.keep(in_use)
            time.sleep(_SUPERVISE_SECONDS)
            if head.poll() is not None:
                _forget(directory)
                driver.end()
                print(f"ray exited with {head.returncode}", flush=True)
                return 1
            reason = stopping[0] if stopping else None
            if reason is None and _idle_for(directory) >= keep_seconds:
                reason = "idle"
            if reason is None:
                continue
            flags = fcntl.LOCK_EX if reason == "SIGTERM" else fcntl.LOCK_EX | fcntl.LOCK_NB
            try:
                fcntl.flock(in_use, flags)  # a stop request waits for attached commands to finish
            except BlockingIOError:
                continue  # a command is attached
            _forget(directory)
            driver.end()  # its Ray job ends before Ray does
            end_process(head)
            print(f"stopped ({reason})", flush=True)
            return 0


def end_with_parent() -> None:
    """In the `ray start` child: a supervisor that dies (even by SIGKILL) takes its Ray with it."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def end_process(head: subprocess.Popen, timeout: float = 60) -> None:
    """Terminate a child, and kill it if it has not exited within `timeout` seconds."""
    if head.poll() is None:
        head.terminate()  # `ray start --block` stops the Ray processes it started
        try:
            head.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()


def _forget(directory: Path) -> None:
    with contextlib.suppress(OSError):
        (directory / "state.json").unlink()


def _idle_for(directory: Path) -> float:
    used = last_used(directory)
    return 0.0 if used is None else time.time() - used


def last_used(directory: Path) -> float | None:
    try:
        return (directory / "last-used").stat().st_mtime
    except OSError:
        return None


def write_private(path: Path, doc: dict[str, Any]) -> None:
    partial = path.with_suffix(".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(doc, out)
    os.replace(partial, path)


@contextlib.contextmanager
def _locked(path: Path, how: int) -> Iterator[None]:
    with open(path, "a+") as handle:
        fcntl.flock(handle, how)
        yield


def alive(pid: Any) -> bool:
    """Whether `pid` runs; a zombie (exited, not yet reaped by whoever adopted it) does not."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return True  # no /proc: the signal's answer stands


def _answers(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1.0):
            return True
    except (OSError, ValueError):
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scheduler.local_ray")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("serve", help="supervise one shared local Ray (started by one-shot commands)")
    run.add_argument("directory", type=Path)
    run.add_argument("--keep-seconds", type=float, required=True)
    run.add_argument("--num-cpus", type=int)
    args = parser.parse_args(argv)
    return serve(args.directory, args.keep_seconds, args.num_cpus)


if __name__ == "__main__":
    sys.exit(main())
