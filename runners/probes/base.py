"""What every stack probe shares: the result type, the registry, and the run wrapper.

One probe per stack component, one module each, registered by name. A probe returns the
values it read; "not applicable here" (no GPU, package absent) is a normal outcome, and a
probe that fails reports its own error without stopping the others.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

OK, NOT_APPLICABLE, ERROR = "ok", "not_applicable", "error"


@dataclass(frozen=True)
class ProbeContext:
    """Where probes read from; tests point these at fixture trees."""

    proc_root: Path = Path("/proc")
    etc_root: Path = Path("/etc")
    nvml: Any = None  # an NVML module with pynvml's call shape; None: import pynvml
    environ: dict[str, str] | None = None  # None: os.environ


@dataclass
class ProbeResult:
    name: str
    status: str
    values: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    detail: str = ""


class NotApplicable(Exception):
    """Raised by a probe when its component does not exist here (not an error)."""


ProbeFunction = Callable[[ProbeContext], dict[str, str]]
PROBES: dict[str, ProbeFunction] = {}


def probe(name: str) -> Callable[[ProbeFunction], ProbeFunction]:
    """Register a probe function under `name`."""
    def register(func: ProbeFunction) -> ProbeFunction:
        PROBES[name] = func
        return func
    return register


def run_probe(name: str, func: Callable[[], dict[str, str]]) -> ProbeResult:
    started = time.perf_counter()
    try:
        values = func()
        status, detail = OK, ""
    except NotApplicable as exc:
        values, status, detail = {}, NOT_APPLICABLE, str(exc)
    except Exception as exc:  # a probe's failure is its own outcome, never the caller's crash
        values, status, detail = {}, ERROR, f"{type(exc).__name__}: {exc}"
    return ProbeResult(name, status, {k: str(v) for k, v in values.items()}, time.perf_counter() - started, detail)


def read_text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise NotApplicable(f"{path}: {exc.strerror}") from exc
