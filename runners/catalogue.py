"""The catalogue of checks: each check declared once, here, with everything the rest derives.

The config schema (which names exist, for which task, whether a limit is a proportion), the judges
(each family registers its judge function against the declaration), the decision rule (which
confidence bound applies), the report (how a check reads in words, which figure its tolerance
bounds) and the exporter (the check label) all read this table. Adding a check is one
declaration, one judge function registered with `judge_for`, and their tests.

This module imports nothing heavy: the control plane reads it to validate configs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

TASKS = ("classification", "generation", "external")

# Which judge family computes a check: per-row comparison sums, element-wise tensor statistics, or
# the behaviour of generated text. External harness metrics are judged by runners/families/external/lm_eval.py.
FAMILIES = ("rows", "tensor", "generation")
# The confidence bound a deciding policy uses (runners/decision.py): a paired difference of rates,
# a single rate, a bootstrap over rows (a mean) or over prompts (a ratio); None: point value only.
BOUNDS = ("paired", "rate", "rows", "prompts", None)
# Which figure the tolerance applies to, from a CheckResult: the candidate's value, the drop
# baseline - candidate, |candidate - baseline|, or the relative drop (in the statistic).
MEASURES = ("candidate", "drop", "abs_delta", "relative_drop")


@dataclass(frozen=True)
class Check:
    name: str
    family: str
    tasks: tuple[str, ...]
    words: str  # what is measured, as a report reads it
    proportion: bool  # the limit is a share in [0, 1]; else a non-negative magnitude
    measured: str = "candidate"
    needs_labels: bool = False
    rate: str | None = None  # for drop checks: the rate that drops, in words
    bound: str | None = None
    subset: str | None = None  # generation: only prompts that carry a "format" (format) or a "reference" (exact)
    row_quantity: str | None = None  # rows family, bound "rows": the per-row quantity averaged

    @property
    def upper(self) -> bool:
        """True when the measured figure must stay at or below the limit (a `max_` check)."""
        return self.name.startswith("max_")


_CHECKS: dict[str, Check] = {}
_JUDGES: dict[str, Callable[..., Any]] = {}


def declare(check: Check) -> Check:
    """Add a check to the catalogue (a test may declare a toy one); a name is declared once."""
    if check.name in _CHECKS:
        raise ValueError(f"check {check.name!r} is already declared")
    if check.family not in FAMILIES or check.bound not in BOUNDS or check.measured not in MEASURES:
        raise ValueError(f"check {check.name!r}: unknown family, bound or measure")
    if not (check.name.startswith("max_") or check.name.startswith("min_")):
        raise ValueError(f"check {check.name!r}: a name says its direction (max_ or min_)")
    _CHECKS[check.name] = check
    return check


def forget(name: str) -> None:
    """Remove a declaration and its judge (for toy checks declared by tests)."""
    _CHECKS.pop(name, None)
    _JUDGES.pop(name, None)


def judge_for(check: Check) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register the judge function of a declared check."""
    def register(function: Callable[..., Any]) -> Callable[..., Any]:
        _JUDGES[check.name] = function
        return function
    return register


def judge(name: str) -> Callable[..., Any]:
    return _JUDGES[name]


def get(name: str) -> Check:
    """The declaration of `name`, a bare catalogue name (batch size and metric are fields of a result)."""
    return _CHECKS[name]


def names(task: str | None = None, family: str | None = None) -> tuple[str, ...]:
    return tuple(c.name for c in _CHECKS.values()
                 if (task is None or task in c.tasks) and (family is None or c.family == family))


def where(**fields: Any) -> tuple[Check, ...]:
    """The declarations whose fields equal the given values, e.g. where(bound="paired")."""
    return tuple(c for c in _CHECKS.values() if all(getattr(c, k) == v for k, v in fields.items()))


CLASSIFICATION, GENERATION, EXTERNAL = TASKS

# -- the per-row family (runners/families/classification/checks.py) ------------------------------------------
MAX_DROP = declare(Check("max_drop", "rows", (CLASSIFICATION, EXTERNAL), "accuracy drop", True, "drop",
                         needs_labels=True, rate="accuracy", bound="paired"))
MAX_RELATIVE_DROP = declare(Check("max_relative_drop", "rows", (CLASSIFICATION,), "relative accuracy drop", True,
                                  "relative_drop", needs_labels=True, rate="accuracy", bound="paired"))
MIN_ACCURACY = declare(Check("min_accuracy", "rows", (CLASSIFICATION,), "accuracy", True, needs_labels=True,
                             bound="rate"))
MIN_AGREEMENT = declare(Check("min_agreement", "rows", (CLASSIFICATION,), "top-1 agreement", True, bound="rate"))
MAX_MEAN_KL = declare(Check("max_mean_kl", "rows", (CLASSIFICATION,), "mean KL", False, bound="rows",
                            row_quantity="kl"))
MAX_ABS_DIFF = declare(Check("max_abs_diff", "rows", (CLASSIFICATION,), "max |diff|", False))
MAX_MEAN_ABS_DIFF = declare(Check("max_mean_abs_diff", "rows", (CLASSIFICATION,), "mean |diff|", False,
                                  bound="rows", row_quantity="mean_abs"))
MIN_COSINE = declare(Check("min_cosine", "rows", (CLASSIFICATION,), "cosine similarity", True, bound="rows",
                           row_quantity="cosine"))

# -- the tensor family (runners/families/classification/tensor_checks.py) ------------------------------------
MIN_WITHIN_TOLERANCE = declare(Check("min_within_tolerance", "tensor", (CLASSIFICATION,),
                                     "share of elements within atol/rtol", True))
MAX_MEDIAN_ABS_DIFF = declare(Check("max_median_abs_diff", "tensor", (CLASSIFICATION,), "median |diff|", False))
MAX_P99_ABS_DIFF = declare(Check("max_p99_abs_diff", "tensor", (CLASSIFICATION,), "p99 |diff|", False))

# -- the generation family (runners/families/generation/behaviour.py) ----------------------------------------
MAX_REFUSAL_RATE_DELTA = declare(Check("max_refusal_rate_delta", "generation", (GENERATION,), "refusal rate change",
                                       True, "abs_delta", rate="refusal rate", bound="paired"))
MAX_FORMAT_DROP = declare(Check("max_format_drop", "generation", (GENERATION,), "format compliance drop", True,
                                "drop", rate="format compliance", bound="paired", subset="format"))
MAX_EXACT_MATCH_DROP = declare(Check("max_exact_match_drop", "generation", (GENERATION,), "exact match drop", True,
                                     "drop", rate="exact match", bound="paired", subset="exact"))
MIN_TOKEN_AGREEMENT = declare(Check("min_token_agreement", "generation", (GENERATION,), "token agreement", True,
                                    bound="prompts"))
MAX_MEAN_STEP_KL = declare(Check("max_mean_step_kl", "generation", (GENERATION,), "mean per-step KL", False,
                                 bound="prompts"))
MIN_STEP_TOP1_AGREEMENT = declare(Check("min_step_top1_agreement", "generation", (GENERATION,),
                                        "per-step top-1 agreement", True, bound="prompts"))
