"""A sweep's two steps, shared by the daemon and the one-shot `revalidator sweep`.

First every target is probed on its own nodes and what was found is recorded (its fingerprint,
with what changed since the last one, or why it is unreachable); then an event's jobs are planned
against the ledger, leaving out the job keys already queued, running or (unless forced) done.
The daemon runs the first step on every poll and the second on every event; the CLI runs each
once and validates the plan in its own process.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable

from scheduler.dispatch import RayDispatcher
from scheduler.events import Event, Manual, Scheduled
from scheduler.ledger import Ledger
from scheduler.planning import Plan, Planner

log = logging.getLogger("revalidator.sweep")

# target -> (its stack as probed now, the components that changed since its last fingerprint)
Probed = dict[str, tuple[dict[str, Any], dict[str, tuple]]]


def probe_targets(dispatcher: RayDispatcher, ledger: Ledger, targets: Iterable[str], timeout: float) -> Probed:
    """Probe `targets` and record each answer; the reachable ones come back with their change."""
    probed: Probed = {}
    for target, stack in dispatcher.probe(sorted(targets), timeout).items():
        if isinstance(stack, str):
            ledger.set_target_state(target, "unreachable", stack)
            log.warning("target unreachable", extra={"fields": {"target": target, "detail": stack}})
            continue
        probed[target] = (stack, ledger.record_fingerprint(target, stack))
    return probed


def forced(event: Event) -> bool:
    """Whether the event re-runs work already done on the current state (a scheduled or a forced sweep)."""
    return isinstance(event, Scheduled) or (isinstance(event, Manual) and event.force)


def plan_event(planner: Planner, ledger: Ledger, event: Event, waiting: Iterable[str] = ()) -> Plan:
    """The jobs `event` calls for on the ledger's latest stacks, less the known ones: queued or running in
    the ledger, planned and `waiting` to be queued, or (unless forced) done."""
    include_finished = not forced(event)
    waiting = set(waiting)

    def known(keys: list[str]) -> set[str]:
        return ledger.known_job_keys(keys, include_finished) | (waiting & set(keys))

    return planner.plan(event, ledger.latest_fingerprints(), known)
