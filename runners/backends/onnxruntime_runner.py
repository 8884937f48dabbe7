"""onnxruntime backend: CPU here; CUDA and TensorRT execution providers by config."""

from __future__ import annotations

import numpy as np

from runners.backends.base import ArtifactError, Runner

DEFAULT_PROVIDERS = ["CPUExecutionProvider"]


class OnnxRuntimeRunner(Runner):
    """Options: providers (list), intra_op_threads, inter_op_threads, allow_spinning (bool)."""

    name = "onnxruntime"

    def _load(self) -> None:
        import onnxruntime as ort

        requested = list(self.options.get("providers") or DEFAULT_PROVIDERS)
        available = ort.get_available_providers()
        unavailable = [p for p in requested if p not in available]
        if unavailable:
            raise ArtifactError(
                f"{self.path}: execution provider(s) {unavailable} not available here (available: {available})"
            )
        so = ort.SessionOptions()
        if "intra_op_threads" in self.options:
            so.intra_op_num_threads = int(self.options["intra_op_threads"])
        if "inter_op_threads" in self.options:
            so.inter_op_num_threads = int(self.options["inter_op_threads"])
        if not self.options.get("allow_spinning", True):
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(str(self.path), sess_options=so, providers=requested)
        except Exception as exc:  # onnxruntime raises its own untyped errors for bad models
            raise ArtifactError(f"{self.path}: onnxruntime cannot load the model ({exc})") from exc
        self._inputs = self._session.get_inputs()
        self._output = self._session.get_outputs()[0].name

    def _input_names(self) -> list[str]:
        return [i.name for i in self._inputs]

    def _infer(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        return self._session.run([self._output], batch)[0]

    @property
    def providers(self) -> list[str]:
        return self._session.get_providers()

    def _release(self) -> None:
        del self._session
