"""A kept Ray driver that runs one-shot `revalidator validate` commands for the executable.

A command's own process spends about two seconds before its first job: importing the CLI, the
config code and Ray, joining Ray, and waiting for a new worker (each command is its own Ray job).
A kept local Ray's supervisor (scheduler/local_ray.py) therefore keeps this process beside it:
`python -m scheduler.kept_driver INSTANCE` has all of that imported, has joined the instance's Ray,
keeps its workers between commands (as the daemon, a long-lived driver, does) and listens on a unix
socket in its folder (scheduler/local_keys.py; the folder is the user's alone). The executable's
entry (scheduler/entry.py, scheduler/kept_client.py) hands it `validate` with its argv and standard
streams; the driver runs `scheduler.cli.main` on them, with the client's stdin, stdout and stderr on
its own 0, 1 and 2, and returns the exit code. Every job still goes through JobSpec/JobResult and
`tasks.execute`, and the command holds the instance's in-use lock while it runs.

It declines (and the command runs in its own process, unchanged) whatever it cannot run exactly as
that process would: another environment, a config whose one-shot Ray is not this instance (an
address, `keep_local_seconds: 0`, another CPU count), a second command while one runs, an instance
being stopped, a request it cannot read; and, once its code or installed packages changed
(scheduler/kept_code.py), every command: it then ends, its workers with it, and the supervisor
starts a new driver.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import logging
import os
import queue
import signal
import socket
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, BinaryIO

from scheduler import kept_code, kept_wire
from scheduler.driver_keeper import DRIVER_SUPERSEDED
from scheduler.kept_client import PROTOCOL
from scheduler.local_keys import driver_document, driver_socket
from scheduler.local_ray import Attachment, SharedLocalRay, for_one_shot, live_state, write_private
from scheduler.ray_attach import join_settings

STATE_NAME = "driver.json"
_WARM_SECONDS = 120.0
_LOGGERS = ("revalidator", "ray", "ray._private")  # those a command points at its log file


class Served:
    """One command run for a client: the dispatcher it gets, and the stop requests that reach it
    from the client (its signals, or its going away) instead of from this process's signals."""

    def __init__(self, shared: SharedLocalRay, attachment: Attachment, loaded: Any) -> None:
        self.shared, self.attachment = shared, attachment
        self.loaded = loaded  # the config as the driver read it to decide it could run the command
        self._dispatcher: Any = None
        self._reason: str | None = None
        self._lock = threading.Lock()

    def config(self, args: Any) -> Any:
        from scheduler.config import load_config

        return self.loaded if self.loaded is not None else load_config(args.config)

    def dispatcher(self, loaded: Any) -> Any:
        from scheduler.dispatch import RayDispatcher

        dispatcher = RayDispatcher(loaded, shared=self.shared)  # what for_one_shot picks, as the driver checked
        dispatcher.adopt_shared(self.attachment)
        with self._lock:
            self._dispatcher, reason = dispatcher, self._reason
        if reason:
            dispatcher.stop(reason)
        return dispatcher

    def stop(self, reason: str) -> None:
        with self._lock:
            self._reason = self._reason or reason
            dispatcher = self._dispatcher
        if dispatcher is not None:
            dispatcher.stop(reason)


class Driver:
    def __init__(self, instance: Path, address: str, listener: socket.socket, document: dict[str, Any],
                 env: dict[str, str], search_path: list[str], code: dict[str, float | None], log: Any) -> None:
        self.instance, self.address, self.listener = instance, address, listener
        self.search_path = search_path
        self.shared = SharedLocalRay(instance, 0.0, None)  # only held (attach_running), never started
        self.env = env  # as the supervisor gave it: before Ray's settings (join_settings)
        self.document, self.code, self.log = document, code, log
        self.plugins: dict[str, float | None] = {}
        self.stale = False
        self.exiting = False
        self.current: Served | None = None
        self._idle = threading.Lock()
        self._queue: queue.Queue[socket.socket] = queue.Queue()

    def say(self, message: str) -> None:
        """The driver's own log line (never on fds 1 and 2: they are a client's during a command)."""
        self.log.write(f"{time.strftime('%H:%M:%S')} {message}\n")

    def on_sigterm(self, *_: Any) -> None:
        self.exiting = True
        if self.current is not None:
            self.current.stop("SIGTERM")

    def serve(self) -> int:
        """Take commands one at a time until the code changes or a stop is asked; 0 either way."""
        threading.Thread(target=self._accept, name="kept-driver-accept", daemon=True).start()
        while not (self.exiting or self.stale):
            try:
                conn = self._queue.get(timeout=0.25)
            except queue.Empty:
                continue
            try:
                self._handle(conn)
            finally:
                self._idle.release()
        self.say("its code changed: ending" if self.stale else "asked to stop: ending")
        return 0

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:  # closed: the driver is ending
                return
            if not self.exiting and self._idle.acquire(blocking=False):
                self._queue.put(conn)
                continue
            with contextlib.closing(conn):  # a second command at once: it runs in its own process
                with contextlib.suppress(OSError, ValueError):
                    _, fds = kept_wire.receive(conn)
                    kept_wire.close_all(fds)
                    kept_wire.send(conn, {"declined": "busy with another command"})
                    self.say(f"declined pid {kept_wire.peer(conn)[0]}: busy")

    def _handle(self, conn: socket.socket) -> None:
        fds: list[int] = []
        attachment: Attachment | None = None
        with contextlib.closing(conn):
            try:
                request, fds = kept_wire.receive(conn)
                reason, loaded = self._refusal(conn, request, fds)
                if reason is None:
                    attachment = self.shared.attach_running(self.address)
                    reason = None if attachment is not None else "the local Ray is being stopped"
                if reason is not None:
                    kept_wire.send(conn, {"declined": reason})
                    self.say(f"declined pid {kept_wire.peer(conn)[0]}: {reason}")
                    return
                assert attachment is not None
                answers = conn.makefile("rb")
                kept_wire.send(conn, {"accepted": True})
                if kept_wire.message(answers) != {"go": True}:  # the client gave up waiting and runs it itself
                    return
                started = time.monotonic()
                code = self._run(conn, answers, request, fds, Served(self.shared, attachment, loaded))
                self.say(f"served pid {kept_wire.peer(conn)[0]}: {' '.join(request['argv'])}: exit {code} "
                         f"({time.monotonic() - started:.2f} s)")
            except Exception as exc:  # the client, if it has not been accepted, runs the command itself
                self.say(f"dropped a request: {type(exc).__name__}: {exc}")
                if not isinstance(exc, (OSError, ValueError)):
                    self.log.write(traceback.format_exc())
            finally:
                kept_wire.close_all(fds)
                if attachment is not None:
                    attachment.release()  # a no-op once the command's dispatcher released it

    def _refusal(self, conn: socket.socket, request: dict[str, Any], fds: list[int]) -> tuple[str | None, Any]:
        """Why this driver cannot run the request as the command's own process would (None: it can),
        and the config it read to decide."""
        if kept_wire.peer(conn)[1] != os.getuid():
            return "another user", None
        if request.get("protocol") != PROTOCOL or len(fds) != 3:
            return "another protocol", None
        argv = request.get("argv")
        if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
            return "an unreadable request", None
        if not isinstance(request.get("terminal", {}), dict):
            return "an unreadable request", None
        if request.get("environment") != self.document:
            return "another environment", None
        if kept_code.fingerprint(self.search_path) != self.code:
            self.stale = True
            return "its code or installed packages changed since it started", None
        from scheduler.cli import build_parser
        from scheduler.config import load_config

        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                args = build_parser().parse_args(argv)
        except SystemExit:
            return None, None  # the command prints argparse's message (or the help) itself
        if args.command != "validate":
            return f"it runs only validate, not {args.command}", None
        try:
            loaded = load_config(args.config)
        except Exception:  # the command reports it, as its own process would, before it reaches Ray
            return None, None
        ray_cfg = loaded.config.ray
        shared = for_one_shot(ray_cfg.address, ray_cfg.keep_local_seconds, ray_cfg.num_cpus, self.env)
        if shared is None:
            return "the config does not use a kept local Ray", None
        if shared.directory.resolve() != self.instance.resolve():
            return "the config's CPU count is another instance's", None
        plugins = kept_code.plugin_times(kept_code.plugin_modules(loaded.config))
        if any(self.plugins.get(name, seen) != seen for name, seen in plugins.items()):
            self.stale = True
            return "a plugin runner's code changed since its workers imported it", None
        self.plugins.update(plugins)
        return None, loaded

    def _run(self, conn: socket.socket, answers: BinaryIO, request: dict[str, Any], fds: list[int],
             served: Served) -> int:
        from scheduler import cli

        done = threading.Event()
        watcher = threading.Thread(target=_watch, args=(answers, served, done), name="kept-driver-client",
                                   daemon=True)
        watcher.start()
        self.current = served
        handlers = {name: list(logging.getLogger(name).handlers) for name in _LOGGERS}
        try:
            with kept_wire.terminal(fds, request.get("terminal") or {}):
                try:
                    code = cli.main(request["argv"], served_by=served)
                except SystemExit as exc:  # argparse: its message is printed already
                    code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
                    if isinstance(exc.code, str):
                        print(exc.code, file=sys.stderr)
                except BaseException as exc:  # main catches everything else: a bug here
                    traceback.print_exc()
                    print(f"error: internal error in the kept driver: {type(exc).__name__}: {exc}", file=sys.stderr)
                    code = 3
        finally:
            self.current = None
            served.attachment.release()  # before the answer: the supervisor counts idle time from here
            kept_wire.restore_logging(handlers)
        done.set()
        with contextlib.suppress(OSError):
            kept_wire.send(conn, {"exit": code})
            conn.shutdown(socket.SHUT_RDWR)  # wakes the watcher
        watcher.join(timeout=5)
        return code


def _watch(answers: BinaryIO, served: Served, done: threading.Event) -> None:
    """The client's messages during its command: its signals, then the end of its connection."""
    while True:
        try:
            message = kept_wire.message(answers)
        except (OSError, ValueError):
            message = None
        if done.is_set():
            return
        if message is None:
            served.stop("client gone")
            return
        if isinstance(message.get("signal"), str):
            served.stop(message["signal"])


def main(argv: list[str] | None = None) -> int:
    """Start, join the instance's Ray, warm a worker, listen; see the module's docstring."""
    instance = Path((argv or sys.argv[1:])[0])
    search_path = list(sys.path)
    code = kept_code.fingerprint(search_path)  # before the imports below: a change after it ends the driver
    env = dict(os.environ)
    document = driver_document(env)
    path = driver_socket(document)
    log = open(instance / "driver.log", "a", buffering=1)
    if path is None:
        log.write("no kept driver: its socket's path would be too long\n")
        return DRIVER_SUPERSEDED
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)  # the socket's folder is the user's alone, whatever the umask
    lock = open(path.with_name("driver.lock"), "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log.write(f"another instance's driver serves this environment ({path.parent})\n")
        return DRIVER_SUPERSEDED
    state = live_state(instance)
    if state is None:
        log.write(f"no live local Ray in {instance}\n")
        return 1
    join_settings(state["token"])
    started = time.monotonic()
    import ray

    from scheduler import cli, dispatch, planning, report, tasks, validate  # noqa: F401  (what a command imports)
    from scheduler import ledger  # noqa: F401

    ray.init(address=state["address"], include_dashboard=False, log_to_driver=False, configure_logging=False)
    warmed = _warm(ray, tasks.warm, log)
    path.unlink(missing_ok=True)  # a socket left by a driver that died: this one holds the lock now
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    os.chmod(path, 0o600)
    listener.listen(8)
    driver = Driver(instance, state["address"], listener, document, env, search_path, code, log)
    signal.signal(signal.SIGTERM, driver.on_sigterm)  # after ray.init, which installs its own
    write_private(path.with_name(STATE_NAME), {"pid": os.getpid(), "instance": str(instance),
                                               "address": state["address"], "warmed": warmed,
                                               "ready_at": time.time()})
    driver.say(f"kept driver {os.getpid()} ready in {time.monotonic() - started:.2f} s on {state['address']}, "
               f"worker {warmed} warmed, listening on {path}")
    try:
        return driver.serve()
    finally:
        path.with_name(STATE_NAME).unlink(missing_ok=True)
        path.unlink(missing_ok=True)
        listener.close()
        ray.shutdown()


def _warm(ray: Any, warm: Any, log: Any) -> list[int]:
    """Start one worker with the harness imported, so that the first command served finds it."""
    try:
        return [ray.get(ray.remote(max_retries=0)(warm).remote(()), timeout=_WARM_SECONDS)]
    except Exception as exc:  # the commands' own warm-ups start workers as before
        log.write(f"warm-up failed: {type(exc).__name__}: {exc}\n")
        return []


if __name__ == "__main__":
    sys.exit(main())
