"""NVIDIA driver, CUDA driver and per-GPU facts through NVML (nvidia-ml-py).

No NVIDIA library or no driver loaded: not applicable here. A driver upgraded without a
reboot (library and kernel module disagree) and NVML refusing this user (NoPermission: the
GPU is there, the probe may not look) are reported as states, since a GPU job must see them.
Each field is read on its own: one that fails (NotSupported, or a GPU lost mid-probe) is
recorded as that error and the others are kept. `gpuN` is NVML's order (PCI bus order), which
is not CUDA's `cuda:N` (fastest first by default): the PCI bus id ties the two together.
"""

from __future__ import annotations

from typing import Any, Callable

from runners.probes.base import NotApplicable, ProbeContext, probe

_NO_GPU = ("LibraryNotFound", "DriverNotLoaded")
_ABSENT = ("NotSupported", "NotFound")  # the GPU has no such feature: a value, not an error


def _error_name(exc: Exception) -> str:
    return type(exc).__name__.removeprefix("NVMLError_") or "NVMLError"


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _mode(current_pending: Any) -> str:
    """Current/pending of a [current, pending] NVML mode."""
    current, pending = current_pending
    return f"{current}" if current == pending else f"{current} (pending {pending})"


def _field(read: Callable[[], Any], shape: Callable[[Any], str] = lambda v: _text(v)) -> str:
    """One NVML value as text; "n/a" where the GPU lacks the feature, "error: <name>" otherwise."""
    try:
        return shape(read())
    except Exception as exc:  # NVMLError subclasses, one per NVML return code
        name = _error_name(exc)
        return "n/a" if name in _ABSENT else f"error: {name}"


def _load_nvml(ctx: ProbeContext) -> Any:
    if ctx.nvml is not None:
        return ctx.nvml
    try:
        import pynvml
    except ImportError as exc:
        raise NotApplicable("nvidia-ml-py is not installed") from exc
    return pynvml


def _mig_devices(nvml: Any, handle: Any) -> str:
    """The UUIDs of the MIG instances on a MIG-enabled GPU (what CUDA_VISIBLE_DEVICES names)."""
    uuids = []
    for slot in range(nvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
        try:
            mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
        except Exception as exc:
            if _error_name(exc) == "NotFound":  # an empty slot
                continue
            raise
        uuids.append(_text(nvml.nvmlDeviceGetUUID(mig)))
    return ",".join(uuids) or "none"


def _device(nvml: Any, index: int) -> dict[str, str]:
    prefix = f"gpu{index}"
    try:
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
    except Exception as exc:  # GpuIsLost, Unknown...: the GPU is there, its facts are not
        return {prefix: f"error: {_error_name(exc)}"}
    name = _field(lambda: nvml.nvmlDeviceGetName(handle))
    capability = _field(lambda: nvml.nvmlDeviceGetCudaComputeCapability(handle), lambda cc: f"cc{cc[0]}.{cc[1]}")
    values = {prefix: f"{name} {capability}",
              f"{prefix}_uuid": _field(lambda: nvml.nvmlDeviceGetUUID(handle)),
              f"{prefix}_pci": _field(lambda: nvml.nvmlDeviceGetPciInfo(handle), lambda info: _text(info.busId)),
              f"{prefix}_vbios": _field(lambda: nvml.nvmlDeviceGetVbiosVersion(handle)),
              f"{prefix}_ecc": _field(lambda: nvml.nvmlDeviceGetEccMode(handle), _mode),
              f"{prefix}_mig": _field(lambda: nvml.nvmlDeviceGetMigMode(handle), _mode)}
    if values[f"{prefix}_mig"].split(" ")[0] == "1":
        values[f"{prefix}_mig_devices"] = _field(lambda: _mig_devices(nvml, handle))
    return values


def read_nvml(nvml: Any) -> dict[str, str]:
    try:
        nvml.nvmlInit()
    except Exception as exc:  # NVMLError subclasses
        name = _error_name(exc)
        if name in _NO_GPU:
            raise NotApplicable(f"no GPU ({name})") from exc
        return {"nvidia_state": name}
    try:
        values = {"nvidia_state": "ok", "nvidia_driver": _field(nvml.nvmlSystemGetDriverVersion),
                  "cuda_driver": _field(nvml.nvmlSystemGetCudaDriverVersion,
                                        lambda v: f"{v // 1000}.{v % 1000 // 10}")}
        # nvidia_state says what went wrong with the device list itself (the impact map treats
        # nvidia_* and gpuN* as GPU components: no new key names here).
        try:
            count = nvml.nvmlDeviceGetCount()
        except Exception as exc:
            values["nvidia_state"] = f"device count: {_error_name(exc)}"
            return values
        if count == 0:
            values["nvidia_state"] = "no devices"
        for index in range(count):
            values.update(_device(nvml, index))
        return values
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:  # nothing to release if the library already lost the GPU
            pass


@probe("nvidia")
def nvidia(ctx: ProbeContext) -> dict[str, str]:
    return read_nvml(_load_nvml(ctx))
