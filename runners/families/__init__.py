"""The task families, one package each, registered by task name.

A family holds what its task needs on a target: reading its data, computing its per-row (or
per-prompt) metrics, and the judges of its checks (declared in runners/catalogue.py). Its entry is
one function, `run(spec, provenance) -> (checks, row_outputs)`: it judges every check on the
aggregate and on every slice value, may add what it measured to the provenance (the drift curves,
the batch-size spread), and returns the row-level outputs blob (runners/rowoutputs.py; b"" for
none). The harness (runners/harness.py) asks this table for the suite's task, nothing else.

Entries are "module:function" strings so that a job imports only its own family (a classification
job never imports the generation code, nor what that imports).
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from runners.contracts import CheckResult, JobSpec
from runners.datacheck import DataError

Family = Callable[[JobSpec, dict[str, Any]], "tuple[list[CheckResult], bytes]"]

# task name (catalogue.TASKS) -> "module:function"
FAMILIES: dict[str, str] = {
    "classification": "runners.families.classification.evaluate:run",
    "generation": "runners.families.generation.evaluate:run",
    "external": "runners.families.external.lm_eval:run",
}


def family(task: str) -> Family:
    """The entry of the family registered for `task`; an unknown task is bad input (DataError)."""
    try:
        module_name, _, function = FAMILIES[task].partition(":")
    except KeyError:
        raise DataError(f"no task family {task!r} (known: {', '.join(FAMILIES)})") from None
    return getattr(importlib.import_module(module_name), function)


__all__ = ["FAMILIES", "Family", "family"]
