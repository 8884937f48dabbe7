"""Probes declared in the config: a file's content or a command's output (argv, no shell)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any, Callable

from runners.probes.base import NotApplicable
from runners.process import run_in_group

MAX_VALUE_CHARS = 256


def custom_probe(name: str, spec: dict[str, Any]) -> Callable[[], dict[str, str]]:
    """`spec` is {"file": path} or {"command": [argv...], "timeout_seconds": s}."""
    def read_file() -> dict[str, str]:
        path = Path(spec["file"])
        if not path.exists():
            raise NotApplicable(f"{path} does not exist")
        return {name: path.read_text().strip()[:MAX_VALUE_CHARS]}

    def run_command() -> dict[str, str]:
        argv = list(spec["command"])
        done = run_in_group(argv, timeout=float(spec.get("timeout_seconds", 10)))  # a timeout ends its children too
        if done.returncode != 0:
            raise subprocess.CalledProcessError(done.returncode, argv, done.stdout, done.stderr)
        return {name: done.stdout.strip()[:MAX_VALUE_CHARS]}

    return read_file if "file" in spec else run_command
