"""What every task family checks of its evaluation data: the error bad data raises, and the
limit on distinct slice values.

Shared by the families (runners/families/): each reads its own format, and all of them report
unusable data the same way, as a DataError naming the file and the problem (the job's bad input).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# Distinct values a slice column may hold: each value is judged, stored and reported, so a column
# with a value per row (an id) would store a result row per example. Suites may set their own.
DEFAULT_MAX_SLICE_VALUES = 1000


class DataError(ValueError):
    """The evaluation data cannot be used; the message names the file and the problem."""


def check_slice_values(path: str | Path, slices: dict[str, np.ndarray], limit: int) -> None:
    for name, column in slices.items():
        distinct = len(np.unique(column))
        if distinct > limit:
            raise DataError(f"{path}: slice column {name!r} holds {distinct} distinct values, over the suite's "
                            f"limit of {limit} (max_slice_values): is it an id rather than a category?")
