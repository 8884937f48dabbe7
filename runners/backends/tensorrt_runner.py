"""TensorRT backend: an engine built from an ONNX model, cached per GPU model and TensorRT version.

Engines are specific to the GPU (model and compute capability) and to the TensorRT version
that built them, so the cache key holds both, with the sha256 of the ONNX file and of its
external data files and the build settings (runners/backends/engine_cache.py). Every decision
about dtypes, shapes, batches and outputs is a plain function (tensorrt_logic.py); this file
only talks to TensorRT and CUDA. Buffers are torch CUDA tensors (torch is on every target).
All work on `cuda:N` runs with N current and on a stream of its own, not device 0's default.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from runners.backends import engine_cache, tensorrt_logic as logic
from runners.backends.base import ArtifactError, BackendUnavailable, Runner
from runners.backends.cuda_device import device_record, require_cuda
from runners.backends.onnx_files import external_data_files, graph_output_names
from runners.hashing import sha256_file

DEFAULT_CACHE = Path(os.environ.get("REVALIDATOR_ENGINE_CACHE", Path.home() / ".cache" / "revalidator" / "engines"))
engine_key = engine_cache.engine_key  # kept importable from here


class TensorRTRunner(Runner):
    """Options: fp16 (bool), tf32 (bool, default off: fp32 means IEEE fp32), max_batch_size (the
    optimisation profile's largest batch), opt_batch_size, workspace_mb, cache_dir (default
    ~/.cache/revalidator/engines or REVALIDATOR_ENGINE_CACHE), device (cuda:N)."""

    name = "tensorrt"

    def _load(self) -> None:
        try:
            import tensorrt as trt
        except ImportError as exc:
            raise BackendUnavailable(f"{self.path}: the tensorrt runner needs the tensorrt package, which this "
                                     f"target does not have ({exc})") from exc
        import torch

        logic.check_tensorrt_version(trt.__version__)
        self._trt, self._torch = trt, torch
        index = require_cuda(torch, str(self.options.get("device") or "cuda:0"), f"{self.path}: the tensorrt runner")
        self._device = torch.device("cuda", index)
        self._record = device_record(torch, index)
        self._precision = logic.precision(self.options)
        self._graph_outputs = graph_output_names(self.path)
        external = {str(p.relative_to(self.path.parent.resolve())): sha256_file(p)
                    for p in external_data_files(self.path)}
        key = engine_key(sha256_file(self.path), trt.__version__, self._record["gpu"],
                         self._record["compute_capability"], self.options, external)
        cache = Path(self.options.get("cache_dir") or DEFAULT_CACHE)
        self.engine_path = cache / f"{self.path.stem}-{key}.engine"
        self._logger = trt.Logger(trt.Logger.WARNING)
        with torch.cuda.device(self._device):  # builder, runtime and context bind to the current device
            self._runtime = trt.Runtime(self._logger)  # kept: it must outlive the engines it deserialized
            loaded = engine_cache.load_or_build(self.engine_path, self._build, self._runtime.deserialize_cuda_engine)
            self._engine = loaded.engine
            self._context = self._engine.create_execution_context()
            self._stream = torch.cuda.Stream(device=self._device)
        self.engine_cached, self._meta, self._evicted = loaded.from_cache, loaded.meta, loaded.evicted
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        self._inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = [n for n in names if n not in self._inputs]
        self._output = logic.select_output(self.path, self._graph_outputs, self._outputs)
        self._dtypes = {n: self._engine.get_tensor_dtype(n).name for n in names}
        shapes = {n: tuple(self._engine.get_tensor_shape(n)) for n in self._inputs}
        self._limit = logic.batch_limit(self.path, shapes, int(self.options.get("max_batch_size") or 4096))
        self._casts: dict[str, logic.InputCast] = {}

    def _build(self) -> tuple[bytes, dict[str, Any]]:
        trt = self._trt
        builder = trt.Builder(self._logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, self._logger)
        # From the file, not its bytes: the parser finds external weights beside the model only then.
        if not parser.parse_from_file(str(self.path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise ArtifactError(f"{self.path}: TensorRT cannot parse the ONNX model ({errors})")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(self.options.get("workspace_mb") or 1024) << 20)
        if self._precision.fp16:
            config.set_flag(trt.BuilderFlag.FP16)
        if not self._precision.tf32:  # on by default in TensorRT
            config.clear_flag(trt.BuilderFlag.TF32)
        largest = int(self.options.get("max_batch_size") or 4096)
        profile = builder.create_optimization_profile()
        dynamic = False
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            shapes = logic.profile_shapes(self.path, tensor.name, tuple(tensor.shape), largest,
                                          self.options.get("opt_batch_size"))
            if shapes is not None:
                profile.set_shape(tensor.name, *shapes)
                dynamic = True
        if dynamic:
            config.add_optimization_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise ArtifactError(f"{self.path}: TensorRT could not build an engine for this GPU")
        meta = {"onnx": str(self.path), "tensorrt": trt.__version__, "gpu": self._record["gpu"],
                "compute_capability": self._record["compute_capability"], "numeric_mode": self._precision.mode,
                "network_outputs": [network.get_output(i).name for i in range(network.num_outputs)]}
        return bytes(serialized), meta

    def _input_names(self) -> list[str]:
        return list(self._inputs)

    def _cast(self, name: str, array: np.ndarray) -> logic.InputCast:
        cast = self._casts.get(name)
        if cast is None or cast.data_dtype != array.dtype.name:
            cast = self._casts[name] = logic.input_cast(self.path, name, array.dtype, self._dtypes[name])
        return cast

    def _infer(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        torch = self._torch
        rows = next((len(a) for a in batch.values() if np.ndim(a)), 1)
        pad = logic.padding(self.path, rows, self._limit)
        with torch.cuda.device(self._device), torch.cuda.stream(self._stream):
            keep = []
            for name in self._inputs:
                array = np.ascontiguousarray(batch[name])
                cast = self._cast(name, array)
                logic.check_range(self.path, cast, array)
                if pad and array.ndim:  # a fixed-batch engine's last batch: pad, then drop the extra rows
                    array = np.concatenate([array, np.repeat(array[-1:], pad, axis=0)])
                tensor = torch.from_numpy(array).to(self._device).to(getattr(torch, cast.torch_dtype))
                keep.append(tensor)
                if not self._context.set_input_shape(name, tuple(tensor.shape)):
                    raise ArtifactError(f"{self.path}: TensorRT refuses shape {tuple(tensor.shape)} for input "
                                        f"{name!r} (engine shape {tuple(self._engine.get_tensor_shape(name))})")
                self._context.set_tensor_address(name, tensor.data_ptr())
            outputs = {}
            for name in self._outputs:
                buffer_dtype, _ = logic.output_dtypes(self.path, name, self._dtypes[name])
                shape = tuple(self._context.get_tensor_shape(name))
                out = torch.empty(shape, dtype=getattr(torch, buffer_dtype), device=self._device)
                outputs[name] = out
                self._context.set_tensor_address(name, out.data_ptr())
            if not self._context.execute_async_v3(self._stream.cuda_stream):
                raise RuntimeError(f"{self.path}: TensorRT execution failed")
            result = outputs[self._output]
            if result.dtype not in (torch.float32, torch.float16) and result.is_floating_point():
                result = result.float()  # bf16/fp8: no numpy dtype
            host = result.cpu()
        self._stream.synchronize()
        array = host.numpy()
        return array[:rows] if pad else array

    def describe(self) -> dict[str, Any]:
        return {**self._record, "numeric_mode": self._precision.mode, "engine": str(self.engine_path),
                "engine_sha256": self._meta.get("engine_sha256"), "engine_from_cache": self.engine_cached,
                "engine_evicted": list(self._evicted), "tensorrt": self._trt.__version__,
                "output": self._output, "output_dtype": self._dtypes[self._output],
                "input_dtypes": {n: self._dtypes[n] for n in self._inputs},
                "inputs_cast": {c.name: f"{c.data_dtype}->{c.torch_dtype}" for c in self._casts.values() if c.casts}}

    def _release(self) -> None:
        del self._context, self._engine, self._runtime
