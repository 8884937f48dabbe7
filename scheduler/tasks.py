"""The Ray task bodies the dispatcher submits, and the options that pin them to a target's nodes.

Kept apart from the dispatcher so that a worker unpickling a task imports this small module,
not the dispatcher's; the harness and its heavy libraries load on the worker only, when a task runs.
"""

from __future__ import annotations

from typing import Any

from runners.contracts import JobResult, JobSpec
from scheduler.config.schema import Placement

# Fraction of a target's custom resource one job asks for: pins the task without limiting it.
PIN_AMOUNT = 0.001


def execute(spec: JobSpec) -> JobResult:
    """The Ray task body; the harness and its heavy libraries load on the worker only."""
    from runners.harness import run_job

    return run_job(spec)


def warm(tasks: tuple[str, ...]) -> int:
    """The warm-up task body (scheduler/warmup.py): import the harness and the families of these
    tasks, so that the worker the jobs reuse has them loaded; returns the worker's pid."""
    import importlib
    import os

    import runners.harness  # noqa: F401
    from runners.families import FAMILIES

    for task in tasks:
        if task in FAMILIES:
            importlib.import_module(FAMILIES[task].partition(":")[0])
    return os.getpid()


def probe(custom: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The probe task body: the stack of the node it lands on."""
    from runners.probes import probe_stack

    return probe_stack(custom=custom)


def placement_options(where: str | Placement) -> dict[str, Any]:
    """Ray task options that pin a job to its target's nodes."""
    if where == "local" or not isinstance(where, Placement):
        return {}
    if where.resource is not None:
        return {"resources": {where.resource: PIN_AMOUNT}}
    return {"label_selector": dict(where.labels or {})}


def available_nodes(ray: Any) -> tuple[dict[str, float], list[dict[str, str]]]:
    """The cluster's resources and its live nodes' labels, for `placeable`."""
    labels = [n.get("Labels", {}) or {} for n in ray.nodes() if n.get("Alive")]
    return ray.cluster_resources(), labels


def placeable(where: str | Placement, available: tuple[dict[str, float], list[dict[str, str]]]) -> bool:
    """Whether some live node offers this placement."""
    resources, labels = available
    if where == "local" or not isinstance(where, Placement):
        return True
    if where.resource is not None:
        return resources.get(where.resource, 0) > 0
    return any(all(node.get(k) == v for k, v in (where.labels or {}).items()) for node in labels)
