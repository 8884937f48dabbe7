"""TensorRT backend: an engine built from an ONNX model, cached per GPU model and TensorRT version.

Engines are specific to the GPU (model and compute capability) and to the TensorRT version
that built them, so the cache key holds both, with the ONNX file's sha256 and the build
options: a driver or TensorRT upgrade builds a fresh engine instead of loading a stale one.
Buffers are torch CUDA tensors (torch is already on every target).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from runners.backends.base import ArtifactError, Runner
from runners.hashing import sha256_path

DEFAULT_CACHE = Path(os.environ.get("REVALIDATOR_ENGINE_CACHE", Path.home() / ".cache" / "revalidator" / "engines"))


def engine_key(onnx_sha256: str, tensorrt_version: str, gpu_name: str, compute_capability: str,
               options: dict[str, Any]) -> str:
    """What makes an engine reusable: the model, TensorRT, the GPU model, and the build options."""
    build = {k: options.get(k) for k in ("fp16", "max_batch_size", "workspace_mb")}
    text = json.dumps([onnx_sha256, tensorrt_version, gpu_name, compute_capability, build], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class TensorRTRunner(Runner):
    """Options: fp16 (bool), max_batch_size (the optimisation profile's largest batch), workspace_mb,
    cache_dir (default ~/.cache/revalidator/engines or REVALIDATOR_ENGINE_CACHE), device (cuda:N)."""

    name = "tensorrt"

    def _load(self) -> None:
        try:
            import tensorrt as trt
            import torch
        except ImportError as exc:
            raise ArtifactError(f"{self.path}: the tensorrt runner needs the tensorrt package ({exc})") from exc
        if not torch.cuda.is_available():
            raise ArtifactError(f"{self.path}: the tensorrt runner needs a CUDA device, and torch sees none")
        self._trt, self._torch = trt, torch
        self._device = torch.device(self.options.get("device", "cuda:0"))
        properties = torch.cuda.get_device_properties(self._device)
        key = engine_key(sha256_path(self.path) or "", trt.__version__, properties.name,
                         f"{properties.major}.{properties.minor}", self.options)
        cache = Path(self.options.get("cache_dir") or DEFAULT_CACHE)
        self.engine_path = cache / f"{self.path.stem}-{key}.engine"
        logger = trt.Logger(trt.Logger.WARNING)
        if self.engine_path.is_file():
            serialized = self.engine_path.read_bytes()
            self.engine_cached = True
        else:
            serialized = self._build(trt, logger)
            cache.mkdir(parents=True, exist_ok=True)
            tmp = self.engine_path.with_suffix(".tmp")
            tmp.write_bytes(serialized)
            tmp.replace(self.engine_path)  # atomic: a concurrent job never reads half an engine
            self.engine_cached = False
        self._engine = trt.Runtime(logger).deserialize_cuda_engine(serialized)
        if self._engine is None:
            raise ArtifactError(f"{self.engine_path}: TensorRT cannot deserialize the engine")
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        self._inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = [n for n in names if n not in self._inputs]

    def _build(self, trt, logger) -> bytes:
        builder = trt.Builder(logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse(self.path.read_bytes()):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise ArtifactError(f"{self.path}: TensorRT cannot parse the ONNX model ({errors})")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(self.options.get("workspace_mb", 1024)) << 20)
        if self.options.get("fp16"):
            config.set_flag(trt.BuilderFlag.FP16)
        profile = builder.create_optimization_profile()
        largest = int(self.options.get("max_batch_size", 4096))
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            rest = tuple(tensor.shape)[1:]
            if any(d < 0 for d in rest):
                raise ArtifactError(f"{self.path}: input {tensor.name} has dynamic dimensions beyond the batch")
            profile.set_shape(tensor.name, (1, *rest), (min(1024, largest), *rest), (largest, *rest))
        config.add_optimization_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise ArtifactError(f"{self.path}: TensorRT could not build an engine for this GPU")
        return bytes(serialized)

    def _input_names(self) -> list[str]:
        return list(self._inputs)

    def _infer(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        torch, trt = self._torch, self._trt
        keep = []
        for name in self._inputs:
            tensor = torch.from_numpy(np.ascontiguousarray(batch[name])).to(self._device)
            keep.append(tensor)
            self._context.set_input_shape(name, tuple(tensor.shape))
            self._context.set_tensor_address(name, tensor.data_ptr())
        outputs = {}
        for name in self._outputs:
            dtype = torch.from_numpy(np.empty(0, dtype=trt.nptype(self._engine.get_tensor_dtype(name)))).dtype
            out = torch.empty(tuple(self._context.get_tensor_shape(name)), dtype=dtype, device=self._device)
            outputs[name] = out
            self._context.set_tensor_address(name, out.data_ptr())
        stream = torch.cuda.current_stream(self._device)
        if not self._context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"{self.path}: TensorRT execution failed")
        stream.synchronize()
        return outputs[self._outputs[0]].cpu().numpy()

    def _release(self) -> None:
        del self._context, self._engine
