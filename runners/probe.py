"""Stack probe of the machine a job runs on: what a quantized kernel's numerics depend on.

Reads /proc and /etc (roots injectable for fixtures), package versions through
importlib.metadata (no import of torch, onnxruntime or tensorrt), and NVIDIA facts through
nvidia-ml-py where a driver exists. "No GPU" is a normal outcome, not an error.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from importlib import metadata
from pathlib import Path
from typing import Any

# CPU flags that select quantized kernels (int8 dot products, bf16/amx tiles).
QUANT_CPU_FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq",
                   "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16",
                   "asimd", "asimddp", "sve", "i8mm", "bf16")

# distribution names -> component; the first installed distribution wins.
PACKAGES = {
    "torch": ("torch",),
    "onnxruntime": ("onnxruntime-gpu", "onnxruntime"),
    "tensorrt": ("tensorrt", "tensorrt-cu12", "tensorrt-cu13"),
    "nvidia-ml-py": ("nvidia-ml-py",),
}

# onnxruntime ships one shared library per optional execution provider.
_ORT_PROVIDER_LIBS = {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider",
                      "openvino": "OpenVINOExecutionProvider", "rocm": "ROCMExecutionProvider",
                      "dnnl": "DnnlExecutionProvider"}


def parse_cpuinfo(text: str) -> dict[str, str]:
    """Model name, quantization-relevant flags and microcode from /proc/cpuinfo (first CPU)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break  # first processor block is enough
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip().lower(), value.strip())
    flags = set((fields.get("flags") or fields.get("features") or "").split())
    return {
        "cpu_model": fields.get("model name") or fields.get("cpu model") or fields.get("hardware") or "unknown",
        "cpu_flags": ",".join(f for f in QUANT_CPU_FLAGS if f in flags),
        "cpu_microcode": fields.get("microcode", "n/a"),
    }


def parse_os_release(text: str) -> str:
    """PRETTY_NAME (or NAME VERSION_ID) from an os-release file."""
    values = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip().strip('"')
    return values.get("PRETTY_NAME") or " ".join(filter(None, [values.get("NAME"), values.get("VERSION_ID")])) \
        or "unknown"


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def package_version(component: str) -> str:
    for dist in PACKAGES[component]:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return "absent"


def onnxruntime_providers() -> str:
    """Execution providers the installed onnxruntime ships, read from its file list."""
    for dist in PACKAGES["onnxruntime"]:
        try:
            files = metadata.files(dist) or []
        except metadata.PackageNotFoundError:
            continue
        providers = ["CPUExecutionProvider"]
        names = {Path(str(f)).name for f in files}
        providers += [p for lib, p in _ORT_PROVIDER_LIBS.items()
                      if f"libonnxruntime_providers_{lib}.so" in names or f"onnxruntime_providers_{lib}.dll" in names]
        return ",".join(providers)
    return "absent"


def _nvml_error_name(exc: Exception) -> str:
    return type(exc).__name__.removeprefix("NVMLError_") or "NVMLError"


def probe_nvidia(nvml: Any = None) -> dict[str, Any]:
    """Driver, CUDA driver and per-GPU facts through an NVML module (pynvml by default)."""
    if nvml is None:
        try:
            import pynvml as nvml  # nvidia-ml-py
        except ImportError:
            return {"nvidia": "no-gpu (nvidia-ml-py not installed)", "gpus": []}
    try:
        nvml.nvmlInit()
    except Exception as exc:  # NVMLError subclasses: LibraryNotFound, DriverNotLoaded, LibRmVersionMismatch
        name = _nvml_error_name(exc)
        if name in ("LibraryNotFound", "DriverNotLoaded"):
            return {"nvidia": f"no-gpu ({name})", "gpus": []}
        return {"nvidia": f"error ({name})", "gpus": []}
    try:
        cuda = nvml.nvmlSystemGetCudaDriverVersion()
        facts: dict[str, Any] = {
            "nvidia_driver": _text(nvml.nvmlSystemGetDriverVersion()),
            "cuda_driver": f"{cuda // 1000}.{cuda % 1000 // 10}",
            "gpus": [],
        }
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
            facts["gpus"].append({
                "index": index, "name": _text(nvml.nvmlDeviceGetName(handle)),
                "uuid": _text(nvml.nvmlDeviceGetUUID(handle)),
                "vbios": _text(nvml.nvmlDeviceGetVbiosVersion(handle)),
                "compute_capability": f"{major}.{minor}",
            })
        facts["nvidia"] = "ok"
        return facts
    finally:
        nvml.nvmlShutdown()


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def fingerprint_hash(components: dict[str, str]) -> str:
    blob = json.dumps(components, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def probe_stack(proc_root: str | Path = "/proc", etc_root: str | Path = "/etc", nvml: Any = None) -> dict[str, Any]:
    """The local stack as {"components": {...}, "gpus": [...], "hash": ..., "probe_seconds": ...}."""
    started = time.perf_counter()
    proc, etc = Path(proc_root), Path(etc_root)
    components: dict[str, str] = {
        "kernel": (_read(proc / "sys/kernel/osrelease") or platform.release()).strip(),
        "os": parse_os_release(_read(etc / "os-release") or ""),
        "arch": platform.machine(),
        "python": platform.python_version(),
        **parse_cpuinfo(_read(proc / "cpuinfo") or ""),
        "torch": package_version("torch"),
        "onnxruntime": package_version("onnxruntime"),
        "onnxruntime_providers": onnxruntime_providers(),
        "tensorrt": package_version("tensorrt"),
    }
    nvidia = probe_nvidia(nvml)
    gpus = nvidia.pop("gpus")
    components.update({k: str(v) for k, v in nvidia.items()})
    for gpu in gpus:
        components[f"gpu{gpu['index']}"] = f"{gpu['name']} cc{gpu['compute_capability']} vbios {gpu['vbios']}"
    return {"components": components, "gpus": gpus, "hash": fingerprint_hash(components),
            "probe_seconds": time.perf_counter() - started}
