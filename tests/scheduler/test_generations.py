"""Worker generations: one per stack of a target, a new one on every change and on a renewal."""

from __future__ import annotations

from scheduler.generations import STACK_ENV, WorkerGenerations


def test_each_stack_of_a_target_gets_its_own_worker_generation() -> None:
    workers = WorkerGenerations()
    assert workers.options("cpu") == {}  # before any probe: no runtime_env at all
    generations = []
    for stack in ("a", "a", "b", "a", None):  # the same stack again, a change, back to the first, a renewal
        if stack is None:
            workers.renew("cpu")
        else:
            workers.note("cpu", stack)
        generations.append(workers.options("cpu")["runtime_env"]["env_vars"][STACK_ENV])
    assert generations[0] == generations[1] and len(set(generations)) == 4
    assert all(g.startswith("a.") for g in generations[:2] + generations[3:])
    workers.note("gpu", "a")  # another target on the same stack has generations of its own
    assert workers.options("gpu") != workers.options("cpu")
