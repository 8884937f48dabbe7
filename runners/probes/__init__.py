"""Stack probes: one module per component, run together into a fingerprint.

`probe_stack()` reads the local machine (no torch/onnxruntime/tensorrt import; tens of ms)
and returns the components, each probe's outcome and duration, and a stable hash.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict
from typing import Any

from runners.probes import (container, cpu, kernel, nvidia, onnxruntime_stack, os_release,  # noqa: F401
                            python_version, tensorrt_stack, torch_stack, transformers_stack)
from runners.probes.base import PROBES, ProbeContext, ProbeResult, run_probe
from runners.probes.custom import custom_probe
from runners.probes.cpu import parse_cpuinfo
from runners.probes.os_release import parse_os_release


def fingerprint_hash(components: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(components, sort_keys=True).encode()).hexdigest()[:16]


def probe_stack(ctx: ProbeContext | None = None, custom: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Run every registered probe plus the custom ones; never raises."""
    ctx = ctx or ProbeContext()
    started = time.perf_counter()
    results: list[ProbeResult] = [run_probe(name, lambda f=func: f(ctx)) for name, func in PROBES.items()]
    results += [run_probe(name, custom_probe(name, spec)) for name, spec in (custom or {}).items()]
    components: dict[str, str] = {}
    for result in results:
        components.update(result.values)
    return {"components": components, "hash": fingerprint_hash(components),
            "probes": {r.name: {k: v for k, v in asdict(r).items() if k not in ("name", "values")} for r in results},
            "probe_seconds": time.perf_counter() - started}


__all__ = ["PROBES", "ProbeContext", "fingerprint_hash", "parse_cpuinfo", "parse_os_release", "probe_stack"]
