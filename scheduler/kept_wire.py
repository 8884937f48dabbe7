"""The kept driver's side of its socket (scheduler/kept_driver.py, scheduler/kept_client.py): a
request and the file descriptors that come with it, the answers, and the client's standard streams
lent to the command that runs for it."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import struct
import sys
from typing import Any, BinaryIO, Iterator

from scheduler.kept_client import TERMINAL

REQUEST_LIMIT = 1 << 20
READ_SECONDS = 5.0  # a client sends its request at once; one that does not is not waited for


@contextlib.contextmanager
def terminal(fds: list[int], terminal: dict[str, str]) -> Iterator[None]:
    """The client's stdin, stdout and stderr as this process's 0, 1 and 2, and its terminal's
    variables, for the command; this process's own back after it."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = [os.dup(n) for n in (0, 1, 2)]
    saved_env = {k: os.environ.get(k) for k in TERMINAL}
    try:
        for fd, n in zip(fds, (0, 1, 2)):
            os.dup2(fd, n)
        for k in TERMINAL:
            _set_env(k, terminal.get(k) if isinstance(terminal.get(k), str) else None)
        sys.stdout.reconfigure(line_buffering=os.isatty(1))
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        for n, fd in zip((0, 1, 2), saved):
            os.dup2(fd, n)
            os.close(fd)
        for k, v in saved_env.items():
            _set_env(k, v)
        with contextlib.suppress(OSError, ValueError):
            sys.stdout.reconfigure(line_buffering=False)


def _set_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def restore_logging(handlers: dict[str, list[logging.Handler]]) -> None:
    """Put back the loggers a command pointed at its log file, and close that file."""
    for name, before in handlers.items():
        logger = logging.getLogger(name)
        for handler in logger.handlers:
            if handler not in before:
                handler.close()
        logger.handlers[:] = before


def receive(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """A request line and the file descriptors that came with it."""
    conn.settimeout(READ_SECONDS)
    data, fds, _, _ = socket.recv_fds(conn, 1 << 16, 3)
    while not data.endswith(b"\n"):
        more = conn.recv(1 << 16) if data and len(data) <= REQUEST_LIMIT else b""
        if not more:
            close_all(fds)
            raise ValueError("an incomplete request")
        data += more
    conn.settimeout(None)
    request = json.loads(data)
    if not isinstance(request, dict):
        close_all(fds)
        raise ValueError("a request is a JSON object")
    return request, fds


def message(answers: BinaryIO) -> dict[str, Any] | None:
    line = answers.readline()
    document = json.loads(line) if line else None
    return document if isinstance(document, dict) else None


def send(conn: socket.socket, document: dict[str, Any]) -> None:
    conn.sendall(json.dumps(document).encode() + b"\n")


def peer(conn: socket.socket) -> tuple[int, int]:
    """The client's pid and uid."""
    pid, uid, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    return pid, uid


def close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
