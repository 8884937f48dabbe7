"""Runner plugins used by the tests, loaded by the workers through the "module:Class" runner name."""

from __future__ import annotations

import os

import numpy as np

from runners.backends.base import Runner


class CrashingRunner(Runner):
    """Kills its worker process on load, as a segfaulting kernel or an OOM kill would."""

    name = "crashing"

    def _load(self) -> None:
        os._exit(134)

    def _input_names(self) -> list[str]:
        return []

    def _infer(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        raise AssertionError("unreachable")


class SleepingRunner(Runner):
    """Never finishes in time: a hung kernel or a deadlocked driver."""

    name = "sleeping"

    def _load(self) -> None:
        import time

        time.sleep(600)

    def _input_names(self) -> list[str]:
        return []

    def _infer(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        raise AssertionError("unreachable")
