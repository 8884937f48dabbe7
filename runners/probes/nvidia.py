"""NVIDIA driver, CUDA driver and per-GPU facts through NVML (nvidia-ml-py).

No NVIDIA library or no driver loaded: not applicable here. A driver upgraded without a
reboot (library and kernel module disagree) is reported as a state, since it is itself a
stack change that GPU jobs must see.
"""

from __future__ import annotations

from typing import Any

from runners.probes.base import NotApplicable, ProbeContext, probe

_NO_GPU = ("LibraryNotFound", "DriverNotLoaded", "NoPermission")


def _error_name(exc: Exception) -> str:
    return type(exc).__name__.removeprefix("NVMLError_") or "NVMLError"


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _mode(read: Any, handle: Any) -> str:
    """Current/pending of a [current, pending] NVML mode, or n/a where the GPU has none."""
    try:
        current, pending = read(handle)
    except Exception:  # NVMLError_NotSupported on GPUs without the feature
        return "n/a"
    return f"{current}" if current == pending else f"{current} (pending {pending})"


def _load_nvml(ctx: ProbeContext) -> Any:
    if ctx.nvml is not None:
        return ctx.nvml
    try:
        import pynvml
    except ImportError as exc:
        raise NotApplicable("nvidia-ml-py is not installed") from exc
    return pynvml


def read_nvml(nvml: Any) -> dict[str, str]:
    try:
        nvml.nvmlInit()
    except Exception as exc:  # NVMLError subclasses
        name = _error_name(exc)
        if name in _NO_GPU:
            raise NotApplicable(f"no GPU ({name})") from exc
        return {"nvidia_state": name}
    try:
        cuda = nvml.nvmlSystemGetCudaDriverVersion()
        values = {"nvidia_state": "ok", "nvidia_driver": _text(nvml.nvmlSystemGetDriverVersion()),
                  "cuda_driver": f"{cuda // 1000}.{cuda % 1000 // 10}"}
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
            prefix = f"gpu{index}"
            values[prefix] = f"{_text(nvml.nvmlDeviceGetName(handle))} cc{major}.{minor}"
            values[f"{prefix}_uuid"] = _text(nvml.nvmlDeviceGetUUID(handle))
            values[f"{prefix}_vbios"] = _text(nvml.nvmlDeviceGetVbiosVersion(handle))
            values[f"{prefix}_ecc"] = _mode(nvml.nvmlDeviceGetEccMode, handle)
            values[f"{prefix}_mig"] = _mode(nvml.nvmlDeviceGetMigMode, handle)
        return values
    finally:
        nvml.nvmlShutdown()


@probe("nvidia")
def nvidia(ctx: ProbeContext) -> dict[str, str]:
    return read_nvml(_load_nvml(ctx))
