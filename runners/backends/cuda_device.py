"""CUDA devices as the GPU backends see them: which one, how to name it, and TF32.

`cuda:N` is CUDA's index, which by default orders GPUs fastest first, while NVML (and the
stack probe's `gpuN`) orders them by PCI bus: the PCI bus id is what ties a run to the probed
GPU, so every GPU run records it. torch is passed in, never imported here.
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from typing import Any, Iterator

from runners.backends.base import ArtifactError, BackendUnavailable

_DEVICE = re.compile(r"^cuda(?::(\d+))?$")


def cuda_index(device: str) -> int:
    """0 for "cuda", N for "cuda:N"; bad input for anything else."""
    match = _DEVICE.match(device)
    if not match:
        raise ArtifactError(f"device {device!r} is not 'cuda' or 'cuda:N'")
    return int(match.group(1) or 0)


def pci_bus_id(domain: int, bus: int, device: int) -> str:
    """NVML's (and nvidia-smi's) spelling of a PCI address: 00000000:17:00.0."""
    return f"{domain:08X}:{bus:02X}:{device:02X}.0"


def require_cuda(torch: Any, device: str, who: str) -> int:
    """The CUDA index to use; BackendUnavailable (infrastructure) where the target has no such GPU."""
    index = cuda_index(device)
    if not torch.cuda.is_available():
        raise BackendUnavailable(f"{who} needs CUDA device {device!r}, and torch sees no CUDA device here "
                                 f"(torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none'})")
    count = torch.cuda.device_count()
    if index >= count:
        raise BackendUnavailable(f"{who} needs CUDA device {device!r}, and torch sees {count} device(s) "
                                 f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})")
    return index


def device_record(torch: Any, index: int) -> dict[str, Any]:
    """What identifies the GPU a run used: name, compute capability, PCI bus id, UUID, and the
    environment that maps `cuda:N` to it."""
    props = torch.cuda.get_device_properties(index)
    record: dict[str, Any] = {"device": f"cuda:{index}", "gpu": props.name,
                              "compute_capability": f"{props.major}.{props.minor}"}
    if hasattr(props, "pci_bus_id"):
        record["pci_bus_id"] = pci_bus_id(getattr(props, "pci_domain_id", 0), props.pci_bus_id, props.pci_device_id)
    if getattr(props, "uuid", None) is not None:
        record["gpu_uuid"] = f"GPU-{props.uuid}"
    record["cuda_visible_devices"] = os.environ.get("CUDA_VISIBLE_DEVICES")
    record["cuda_device_order"] = os.environ.get("CUDA_DEVICE_ORDER", "FASTEST_FIRST")
    return record


def tf32_flags(torch: Any) -> dict[str, bool]:
    return {"matmul": bool(torch.backends.cuda.matmul.allow_tf32), "cudnn": bool(torch.backends.cudnn.allow_tf32)}


def set_tf32(torch: Any, enabled: bool) -> dict[str, bool]:
    """Set torch's TF32 switches (process-wide) for matmuls and cuDNN; returns the previous ones.
    cuDNN's is on by default, so an "fp32" convolution is TF32 unless it is cleared."""
    previous = tf32_flags(torch)
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    return previous


def restore_tf32(torch: Any, previous: dict[str, bool]) -> None:
    torch.backends.cuda.matmul.allow_tf32 = previous["matmul"]
    torch.backends.cudnn.allow_tf32 = previous["cudnn"]


@contextmanager
def tf32(torch: Any, enabled: bool) -> Iterator[None]:
    previous = set_tf32(torch, enabled)
    try:
        yield
    finally:
        restore_tf32(torch, previous)
