"""Stack probe parsers on fixture trees; NVML through an injected source built from fixture files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from runners.probe import parse_cpuinfo, parse_os_release, probe_nvidia, probe_stack

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "probe"


class FixtureNVML:
    """An NVML source with pynvml's call shape, answering from a fixture file (no GPU here)."""

    def __init__(self, fixture: str) -> None:
        self.facts = json.loads((FIXTURES / "nvml" / fixture).read_text())
        self.shutdown_calls = 0

    def nvmlInit(self) -> None:
        if "init_error" in self.facts:
            raise type(self.facts["init_error"], (Exception,), {})()

    def nvmlShutdown(self) -> None:
        self.shutdown_calls += 1

    def nvmlSystemGetDriverVersion(self) -> str:
        return self.facts["driver"]

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return self.facts["cuda_driver"]

    def nvmlDeviceGetCount(self) -> int:
        return len(self.facts["devices"])

    def nvmlDeviceGetHandleByIndex(self, index: int) -> dict:
        return self.facts["devices"][index]

    def nvmlDeviceGetName(self, handle: dict) -> bytes:
        return handle["name"].encode()  # older bindings return bytes

    def nvmlDeviceGetUUID(self, handle: dict) -> str:
        return handle["uuid"]

    def nvmlDeviceGetVbiosVersion(self, handle: dict) -> str:
        return handle["vbios"]

    def nvmlDeviceGetCudaComputeCapability(self, handle: dict) -> tuple[int, int]:
        return tuple(handle["compute_capability"])


def test_cpu_with_avx512_vnni_and_amx() -> None:
    cpu = parse_cpuinfo((FIXTURES / "sapphire-rapids/proc/cpuinfo").read_text())
    assert cpu["cpu_model"] == "Intel(R) Xeon(R) Platinum 8480+"
    assert cpu["cpu_microcode"] == "0x2b000590"
    flags = cpu["cpu_flags"].split(",")
    for flag in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_tile"):
        assert flag in flags
    assert "sse2" not in flags  # only flags that select quantized kernels are recorded


def test_cpu_without_avx512() -> None:
    cpu = parse_cpuinfo((FIXTURES / "haswell/proc/cpuinfo").read_text())
    assert cpu["cpu_flags"] == "avx,avx2,fma,f16c"
    assert cpu["cpu_microcode"] == "0x49"


def test_os_release_forms() -> None:
    assert parse_os_release((FIXTURES / "sapphire-rapids/etc/os-release").read_text()) == "Ubuntu 22.04.4 LTS"
    assert parse_os_release((FIXTURES / "haswell/etc/os-release").read_text()) == "Rocky Linux 9.3"
    assert parse_os_release("") == "unknown"


@pytest.mark.parametrize("node,kernel", [("sapphire-rapids", "6.8.0-1015-aws"), ("haswell", "5.15.0-105-generic")])
def test_probe_reads_injected_roots(node: str, kernel: str) -> None:
    stack = probe_stack(proc_root=FIXTURES / node / "proc", etc_root=FIXTURES / node / "etc",
                        nvml=FixtureNVML("no-library.json"))
    assert stack["components"]["kernel"] == kernel
    assert stack["components"]["nvidia"] == "no-gpu (LibraryNotFound)"
    assert stack["gpus"] == []


def test_kernels_give_different_fingerprints() -> None:
    a, b = (probe_stack(proc_root=FIXTURES / n / "proc", etc_root=FIXTURES / n / "etc",
                        nvml=FixtureNVML("no-library.json")) for n in ("sapphire-rapids", "haswell"))
    assert a["hash"] != b["hash"]


def test_gpu_node() -> None:
    source = FixtureNVML("h100-node.json")
    facts = probe_nvidia(source)
    assert facts["nvidia"] == "ok"
    assert facts["nvidia_driver"] == "550.107.02"
    assert facts["cuda_driver"] == "12.4"
    assert [g["compute_capability"] for g in facts["gpus"]] == ["9.0", "9.0"]
    assert facts["gpus"][0]["name"] == "NVIDIA H100 80GB HBM3"
    assert source.shutdown_calls == 1
    stack = probe_stack(nvml=FixtureNVML("h100-node.json"))
    assert stack["components"]["gpu1"] == "NVIDIA H100 80GB HBM3 cc9.0 vbios 96.00.99.00.01"


@pytest.mark.parametrize("fixture,expected", [("no-library.json", "no-gpu (LibraryNotFound)"),
                                              ("driver-not-loaded.json", "no-gpu (DriverNotLoaded)"),
                                              ("version-mismatch.json", "error (LibRmVersionMismatch)")])
def test_nvml_failures_are_outcomes(fixture: str, expected: str) -> None:
    assert probe_nvidia(FixtureNVML(fixture)) == {"nvidia": expected, "gpus": []}


def test_probe_does_not_import_heavy_runtimes() -> None:
    import subprocess

    code = ("import sys; from runners.probe import probe_stack; s = probe_stack(); "
            "print(sorted(m for m in ('torch', 'onnxruntime', 'tensorrt') if m in sys.modules)); "
            "print(s['components']['onnxruntime'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "[]"
    assert out[1] not in ("", "absent")  # read from package metadata, not by importing it
