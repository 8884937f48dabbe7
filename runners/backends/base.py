"""The runner lifecycle: activate (load), infer in batches, deactivate (release).

Backends fill three small hooks. A runner is cheap to construct and picklable until it
is activated; the heavy session or module is built in `activate`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np


class ArtifactError(ValueError):
    """A model artifact cannot be loaded or does not fit its data; the message says which and why."""


class BackendUnavailable(RuntimeError):
    """The target lacks what a backend needs (no CUDA device, TensorRT not installed, an execution
    provider that does not load): an infrastructure fault of the target, not bad input."""


class Runner(ABC):
    name = "base"

    def __init__(self, path: str | Path, options: dict[str, Any]) -> None:
        self.path = Path(path)
        self.options = dict(options)
        self.active = False

    # -- hooks ------------------------------------------------------------------------------
    @abstractmethod
    def _load(self) -> None:
        """Build the session/module; raise ArtifactError on a bad artifact."""

    @abstractmethod
    def _input_names(self) -> list[str]:
        """Names of the model's inputs, in call order."""

    @abstractmethod
    def _infer(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """Run one batch and return the first output as a numpy array."""

    def _release(self) -> None:
        """Drop the session/module (default: nothing to do)."""

    def describe(self) -> dict[str, Any]:
        """How this runner computes, for the provenance: device, numeric mode, providers... (while
        active). A backend that does not say is recorded as not saying, never as fp32 on the CPU."""
        return {"numeric_mode": "not reported by this runner"}

    # -- lifecycle --------------------------------------------------------------------------
    def activate(self) -> "Runner":
        if not self.path.is_file():
            raise ArtifactError(f"{self.path}: model artifact not found")
        self._load()
        self.active = True
        return self

    def deactivate(self) -> None:
        if self.active:
            self._release()
            self.active = False

    def __enter__(self) -> "Runner":
        return self.activate()

    def __exit__(self, *exc: object) -> None:
        self.deactivate()

    @property
    def input_names(self) -> list[str]:
        return self._input_names()

    def infer(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """Run one batch (every input by name); the first output."""
        return self._infer(batch)

    def infer_all(self, inputs: dict[str, np.ndarray], batch_size: int, class_major: bool = False) -> np.ndarray:
        """Run every row through the model in batches; returns the stacked first output.

        With `class_major`, the output comes as (values per row, rows): the layout the
        comparison metrics reduce fastest, written as the batches arrive at no extra cost.
        """
        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise ArtifactError(
                f"{self.path}: model inputs {missing} are not in the evaluation data (it has {sorted(inputs)})"
            )
        names = self.input_names
        # A 0-d input (a scalar such as a temperature) goes whole with every batch.
        batched = [n for n in names if np.ndim(inputs[n]) > 0]
        if not batched:
            raise ArtifactError(f"{self.path}: every model input is a scalar: no rows to run")
        rows = len(inputs[batched[0]])
        out: np.ndarray | None = None
        for start in range(0, rows, batch_size):
            batch = {n: inputs[n][start : start + batch_size] if n in batched else inputs[n] for n in names}
            expected = len(batch[batched[0]])
            result = self._infer(batch)
            # A backend or model that returns another row count would leave rows of `out` unwritten
            # (np.empty): garbage that the comparison would read as outputs.
            if result.ndim == 0 or len(result) != expected:
                got = "a scalar" if result.ndim == 0 else f"{len(result)} rows"
                raise ArtifactError(f"{self.path}: the {self.name} runner returned {got} for a batch of {expected} "
                                    f"rows (rows {start}..{start + expected - 1}); the model's first output must "
                                    f"have one row per input row")
            if class_major:
                result = result.reshape(len(result), -1).T
            if out is None:  # allocate once, when the output shape is known
                shape = (result.shape[0], rows) if class_major else (rows, *result.shape[1:])
                out = np.empty(shape, dtype=result.dtype)
            if class_major:
                out[:, start : start + expected] = result
            else:
                out[start : start + expected] = result
        if out is None:
            raise ArtifactError(f"{self.path}: no rows to run (the evaluation data is empty)")
        return out
