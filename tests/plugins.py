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


class StaleLibraryRunner(Runner):
    """Finds its process holding a library replaced on disk, as after an in-place update no probe sees."""

    name = "stale-library"

    def _load(self) -> None:
        from runners.loaded import StaleRuntime, loaded_runtimes

        raise StaleRuntime("stale runtime in the worker: library /usr/lib/libcudnn.so.9 deleted", loaded_runtimes())

    def _input_names(self) -> list[str]:
        return []

    def _infer(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        raise AssertionError("unreachable")


class SlowOnnxRunner(Runner):
    """onnxruntime that takes a few seconds to load: long enough to remove a node mid-job."""

    name = "slow-onnxruntime"
    LOAD_SECONDS = 4.0

    def __init__(self, path, options) -> None:
        super().__init__(path, options)
        from runners.backends.onnxruntime_runner import OnnxRuntimeRunner

        self._inner = OnnxRuntimeRunner(path, options)

    def _load(self) -> None:
        import time

        time.sleep(self.LOAD_SECONDS)
        self._inner.activate()

    def _input_names(self) -> list[str]:
        return self._inner.input_names

    def _infer(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        return self._inner._infer(batch)

    def _release(self) -> None:
        self._inner.deactivate()


class NodeMarkingSlowOnnxRunner(SlowOnnxRunner):
    """SlowOnnxRunner that first leaves "<artifact>.loading-on-<Ray node id>": a test then sees the job
    executing on a given node, not only handed to Ray for it (it may still wait for a lease there)."""

    name = "node-marking-slow-onnxruntime"

    def _load(self) -> None:
        from pathlib import Path

        import ray

        Path(f"{self.path}.loading-on-{ray.get_runtime_context().get_node_id()}").touch()
        super()._load()


class IsaOnnxRunner(Runner):
    """onnxruntime on a CPU that lacks the integer dot-product kernels, which this machine cannot be.

    Stands in for the AVX2-only host of a VNNI/AVX2 pair: where the node's $REVALIDATOR_TEST_CPU_ISA_FILE
    (the same file the target's `cpu_isa` probe reads) says "avx2", the graph runs unfused (QDQ as
    DequantizeLinear, fp32 MatMul, QuantizeLinear) instead of the fused integer kernels: real onnxruntime
    outputs of another code path, as another instruction set gives."""

    name = "isa-onnxruntime"

    def _load(self) -> None:
        import onnxruntime as ort

        isa_file = os.environ.get("REVALIDATOR_TEST_CPU_ISA_FILE")
        isa = open(isa_file).read().strip() if isa_file else ""
        so = ort.SessionOptions()
        if isa == "avx2":
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        so.intra_op_num_threads = 1
        so.log_severity_level = 3
        self._session = ort.InferenceSession(str(self.path), sess_options=so, providers=["CPUExecutionProvider"])

    def _input_names(self) -> list[str]:
        return [i.name for i in self._session.get_inputs()]

    def _infer(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        return self._session.run(None, batch)[0]

    def _release(self) -> None:
        del self._session


class HeldOnnxRunner(SlowOnnxRunner):
    """onnxruntime that waits while "<artifact>.hold" exists: a job kept running until the test lets it go."""

    name = "held-onnxruntime"

    def _load(self) -> None:
        import time
        from pathlib import Path

        hold = Path(str(self.path) + ".hold")
        deadline = time.monotonic() + 300  # a forgotten hold file must not hang a worker for ever
        while hold.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        self._inner.activate()
