"""onnxruntime execution providers: their options from the runner's, and proof of what loaded.

`get_available_providers()` lists the providers built into the wheel, not the ones that load:
when the CUDA or TensorRT provider's libraries fail to load, onnxruntime retries the session
(and, with fallback on, `run()` after a provider failure) with fallback providers, so a job
asked to run on the GPU would silently run on the CPU and be recorded as GPU. The runner turns
fallback off and refuses any session whose `get_providers()` lacks a requested provider.
Plain functions: tested without onnxruntime-gpu.
"""

from __future__ import annotations

from typing import Any

from runners.backends.base import BackendUnavailable

CUDA, TENSORRT, CPU = "CUDAExecutionProvider", "TensorrtExecutionProvider", "CPUExecutionProvider"


def provider_options(providers: list[str], options: dict[str, Any]) -> list[tuple[str, dict[str, str]]]:
    """(provider, its options) for InferenceSession(providers=...), as the strings onnxruntime takes.

    CUDA: device_id, and use_tf32 off unless asked (onnxruntime turns it on by default). TensorRT:
    device_id, fp16, a workspace size, and an engine cache (without one every session, so every
    batch-size run, rebuilds its engines)."""
    device_id = str(int(options.get("device_id") or 0))
    out: list[tuple[str, dict[str, str]]] = []
    for provider in providers:
        if provider == CUDA:
            out.append((CUDA, {"device_id": device_id, "use_tf32": "1" if options.get("tf32") else "0"}))
        elif provider == TENSORRT:
            settings = {"device_id": device_id, "trt_fp16_enable": "1" if options.get("fp16") else "0",
                        "trt_max_workspace_size": str(int(options.get("workspace_mb") or 1024) << 20)}
            cache = options.get("engine_cache_dir")
            if cache:
                settings.update({"trt_engine_cache_enable": "1", "trt_engine_cache_path": str(cache),
                                 "trt_timing_cache_enable": "1", "trt_timing_cache_path": str(cache)})
            out.append((TENSORRT, settings))
        else:
            out.append((provider, {}))
    return out


def check_providers(path: Any, requested: list[str], loaded: list[str]) -> None:
    """Every requested provider must be in the session's own list; else the target could not
    load it (a missing CUDA/cuDNN/TensorRT library, no GPU): infrastructure, not the model."""
    missing = [p for p in requested if p not in loaded]
    if missing:
        raise BackendUnavailable(f"{path}: onnxruntime could not load execution provider(s) {missing} on this "
                                 f"target (the session has {loaded}); refusing to run on a fallback")


def numeric_mode(loaded: list[str], options: dict[str, Any]) -> str:
    """The arithmetic the session's first provider does on fp32 graphs."""
    first = loaded[0] if loaded else CPU
    if first == TENSORRT:
        # The TensorRT provider exposes no TF32 switch: TensorRT's default (TF32 on) applies.
        return ("fp16+" if options.get("fp16") else "") + "tf32"
    if first == CUDA:
        return "tf32" if options.get("tf32") else "fp32"
    return "fp32"
