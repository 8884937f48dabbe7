"""onnxruntime backend: CPU here; CUDA and TensorRT execution providers by config."""

from __future__ import annotations

from typing import Any

import numpy as np

from runners.backends.base import ArtifactError, BackendUnavailable, Runner
from runners.backends.ort_providers import check_providers, numeric_mode, provider_options

DEFAULT_PROVIDERS = ["CPUExecutionProvider"]


class OnnxRuntimeRunner(Runner):
    """Options: providers (list), intra_op_threads, inter_op_threads, allow_spinning (bool); for the
    GPU providers device_id, tf32 (CUDA, default off), fp16, workspace_mb, engine_cache_dir (TensorRT)."""

    name = "onnxruntime"

    def _load(self) -> None:
        import onnxruntime as ort

        requested = list(self.options.get("providers") or DEFAULT_PROVIDERS)
        available = ort.get_available_providers()
        unavailable = [p for p in requested if p not in available]
        if unavailable:
            raise BackendUnavailable(f"{self.path}: execution provider(s) {unavailable} not available here "
                                     f"(this onnxruntime build has: {available})")
        so = ort.SessionOptions()
        if self.options.get("intra_op_threads") is not None:
            so.intra_op_num_threads = int(self.options["intra_op_threads"])
        if self.options.get("inter_op_threads") is not None:
            so.inter_op_num_threads = int(self.options["inter_op_threads"])
        if not self.options.get("allow_spinning", True):
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.log_severity_level = 3
        try:
            # enable_fallback=0: no silent retry on the CPU when a GPU provider fails to load.
            self._session = ort.InferenceSession(str(self.path), sess_options=so,
                                                 providers=provider_options(requested, self.options),
                                                 enable_fallback=0)
        except Exception as exc:  # onnxruntime raises its own untyped errors for bad models
            if requested != DEFAULT_PROVIDERS and self._loads_on_cpu(ort):
                # The model is fine: the GPU provider failed (with fallback off, it says so here).
                raise BackendUnavailable(f"{self.path}: onnxruntime could not create execution provider(s) "
                                         f"{requested} on this target ({exc})") from exc
            raise ArtifactError(f"{self.path}: onnxruntime cannot load the model ({exc})") from exc
        self._session.disable_fallback()  # and none in run() after a provider failure
        self._loaded = self._session.get_providers()
        check_providers(self.path, requested, self._loaded)
        self._inputs = self._session.get_inputs()
        self._output = self._session.get_outputs()[0].name
        self._output_type = self._session.get_outputs()[0].type  # e.g. tensor(float16)

    def _loads_on_cpu(self, ort: Any) -> bool:
        try:
            ort.InferenceSession(str(self.path), providers=DEFAULT_PROVIDERS)
        except Exception:
            return False
        return True

    def _input_names(self) -> list[str]:
        return [i.name for i in self._inputs]

    def _infer(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        return self._session.run([self._output], batch)[0]

    @property
    def providers(self) -> list[str]:
        return self._session.get_providers()

    def describe(self) -> dict[str, Any]:
        gpu = self._loaded[0] != "CPUExecutionProvider"
        return {"device": f"cuda:{int(self.options.get('device_id') or 0)}" if gpu else "cpu",
                "numeric_mode": numeric_mode(self._loaded, self.options), "providers": list(self._loaded),
                "provider_options": {k: v for k, v in self._session.get_provider_options().items()
                                     if k in self._loaded and k != "CPUExecutionProvider"},
                "output": self._output, "output_dtype": self._output_type}

    def _release(self) -> None:
        del self._session
