"""Where the local Rays kept between one-shot commands live, and what makes two commands' environments
interchangeable. Standard library only: the `revalidator` executable reads this before anything else
(scheduler/entry.py), to find the kept driver of its environment (scheduler/kept_driver.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Mapping

MODE_ENV = "REVALIDATOR_LOCAL_RAY"  # "fresh": start and stop an embedded Ray per command, as the daemon does
DIRECTORY_ENV = "REVALIDATOR_LOCAL_RAY_DIR"
DRIVER_ENV = "REVALIDATOR_KEPT_DRIVER"  # "off": a kept local Ray keeps no driver (scheduler/kept_driver.py)
# Variables that differ between two shells of one user without changing what a worker computes.
SHELL_NOISE = frozenset({
    "PWD", "OLDPWD", "SHLVL", "_", "TERM", "COLUMNS", "LINES", "PS1", "PS2", "PROMPT_COMMAND", "COLORTERM",
    "LS_COLORS", "MAIL", "DISPLAY", "XAUTHORITY", "SSH_CLIENT", "SSH_CONNECTION", "SSH_TTY", "SSH_AUTH_SOCK",
    "TMUX", "TMUX_PANE", "STY", "WINDOW", "HISTFILE", "HISTSIZE", "HISTCONTROL", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN",
})
# Set by scheduler/dispatch.py on import (a local Ray stays on loopback): a command's supervisor, and
# so its driver, inherit it; the executable's entry has not imported the dispatcher yet.
DISPATCH_DEFAULTS = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
# Linux's limit for a unix socket's path (sun_path: 108 bytes with the terminating zero).
MAX_SOCKET_PATH = 107


def base_directory(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get(DIRECTORY_ENV):
        return Path(env[DIRECTORY_ENV])
    runtime = env.get("XDG_RUNTIME_DIR")
    return Path(runtime) / "revalidator-ray" if runtime else Path.home() / ".cache" / "revalidator" / "local-ray"


def comparable_env(env: Mapping[str, str]) -> dict[str, str]:
    """The environment variables that can change what a worker computes."""
    return {k: v for k, v in env.items() if k not in SHELL_NOISE and not k.startswith("TERM_")}


def key_of(doc: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def driver_document(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """What a command and the kept driver that serves it share: interpreter, working directory and
    environment. Not the CPU count (the config says it: the driver checks it per command), nor the Ray
    version (an upgrade changes site-packages, which the driver checks too), so that the executable
    finds the driver without reading its config or Ray's metadata."""
    merged = {**DISPATCH_DEFAULTS, **(os.environ if env is None else env)}
    return {"python": sys.executable, "cwd": os.getcwd(), "env": comparable_env(merged)}


def driver_directory(doc: dict[str, Any] | None = None) -> Path:
    """The kept driver's folder (its socket, lock and state) for this environment."""
    return base_directory() / f"driver-{key_of(doc or driver_document())}"


def driver_socket(doc: dict[str, Any] | None = None) -> Path | None:
    """The kept driver's socket for this environment; None where its path is too long for one."""
    path = driver_directory(doc) / "socket"
    return path if len(str(path).encode()) <= MAX_SOCKET_PATH else None
