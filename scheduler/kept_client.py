"""The `revalidator validate` side of the kept driver (scheduler/kept_driver.py): hand the command,
with this process's standard streams, to the driver of this environment, and exit with its code.

Standard library only, so that a served command costs a Python start and a round trip. Whatever
goes wrong before the driver has accepted the command (no driver, a stale socket, a driver that
declines it) returns None and the command runs here, unchanged. SIGINT and SIGTERM are passed on
to the driver, which stops the command as the signal would have.

Protocol (one JSON object a line): the request {"protocol", "argv", "environment"} travels with file
descriptors 0, 1 and 2; the driver answers {"accepted": true} or {"declined": why}; after an acceptance the client says
{"go": true} (a client that gave up waiting has closed the socket instead, and the command does
not run twice), may send {"signal": name}, and reads {"exit": code}.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from typing import Any

from scheduler.local_keys import driver_directory, driver_document, driver_socket

PROTOCOL = 1
EXIT_INTERNAL = 3  # scheduler/outcome.py: not imported here (it imports the runners' contracts)
# Longest wait for the driver to take or decline a command; a driver that does not answer by then
# never runs it (it waits for the "go" that follows its acceptance).
ANSWER_SECONDS = 30.0
# Shell variables (not part of the environment's key) that shape what the command prints.
TERMINAL = ("TERM", "COLUMNS", "LINES", "COLORTERM")


def served(argv: list[str]) -> int | None:
    """The command's exit code once the kept driver has run it, or None when it did not take it."""
    document = driver_document()
    path = driver_socket(document)
    if path is None:
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except OSError:  # no driver, or a stale socket
        sock.close()
        return None
    caught: list[int] = []
    committed = False  # once the driver runs the command: signals go to it, and nothing runs here

    def forward(number: int, _frame: Any) -> None:
        caught.append(number)
        if committed:
            try:
                sock.sendall(_line({"signal": signal.Signals(number).name}))
            except OSError:  # the driver is gone: the answer below says so
                pass

    previous = {number: signal.signal(number, forward) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        sock.settimeout(ANSWER_SECONDS)
        terminal = {k: os.environ[k] for k in TERMINAL if k in os.environ}
        request = {"protocol": PROTOCOL, "argv": argv, "environment": document, "terminal": terminal}
        socket.send_fds(sock, [_line(request)], [0, 1, 2])
        answers = sock.makefile("rb")
        first = _read(answers)
        if caught or not (first and first.get("accepted")):
            return _interrupted() if caught else None  # closing the socket tells the driver not to run it
        sock.settimeout(None)
        sock.sendall(_line({"go": True}))
        committed = True
        for number in caught:  # since the answer (a stop twice over is one stop)
            sock.sendall(_line({"signal": signal.Signals(number).name}))
        final = _read(answers)
        if final is None or not isinstance(final.get("exit"), int):
            print(f"error: the kept Ray driver ended before the command did "
                  f"(see driver.log in {driver_directory(document).parent})", file=sys.stderr)
            return EXIT_INTERNAL
        return final["exit"]
    except OSError:  # a timeout among them
        if committed:
            print("error: lost the kept Ray driver during the command", file=sys.stderr)
            return EXIT_INTERNAL
        return _interrupted() if caught else None
    finally:
        sock.close()
        for number, handler in previous.items():
            signal.signal(number, handler)


def leave(code: int) -> None:
    """Exit as `scheduler.cli.run` does: output flushed, no interpreter teardown."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def _interrupted() -> int:
    """A signal that came before the driver took the command: as a command interrupted that early."""
    print("error: interrupted", file=sys.stderr)
    return EXIT_INTERNAL


def _line(document: dict[str, Any]) -> bytes:
    return json.dumps(document).encode() + b"\n"


def _read(answers: Any) -> dict[str, Any] | None:
    """The driver's next message; None at the end of the connection or on anything unreadable."""
    try:
        document = json.loads(answers.readline() or b"null")
    except ValueError:
        return None
    return document if isinstance(document, dict) else None
