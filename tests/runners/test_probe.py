"""Stack probe parsers on fixture trees; NVML through an injected source built from fixture files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from runners.probes import ProbeContext, parse_cpuinfo, parse_os_release, probe_stack
from runners.probes.nvidia import read_nvml

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

    def nvmlDeviceGetPciInfo(self, handle: dict) -> object:
        if "pci" not in handle:
            raise type("NVMLError_NotSupported", (Exception,), {})()
        return type("PciInfo", (), {"busId": handle["pci"].encode()})()

    def nvmlDeviceGetVbiosVersion(self, handle: dict) -> str:
        return handle["vbios"]

    def nvmlDeviceGetCudaComputeCapability(self, handle: dict) -> tuple[int, int]:
        return tuple(handle["compute_capability"])

    def nvmlDeviceGetEccMode(self, handle: dict) -> list[int]:
        if "ecc" not in handle:
            raise type("NVMLError_NotSupported", (Exception,), {})()
        return handle["ecc"]

    def nvmlDeviceGetMigMode(self, handle: dict) -> list[int]:
        if "mig" not in handle:
            raise type("NVMLError_NotSupported", (Exception,), {})()
        return handle["mig"]


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


def context(node: str, nvml: str = "no-library.json") -> ProbeContext:
    return ProbeContext(proc_root=FIXTURES / node / "proc", etc_root=FIXTURES / node / "etc",
                        nvml=FixtureNVML(nvml), environ={})


@pytest.mark.parametrize("node,kernel", [("sapphire-rapids", "6.8.0-1015-aws"), ("haswell", "5.15.0-105-generic")])
def test_probe_reads_injected_roots(node: str, kernel: str) -> None:
    stack = probe_stack(context(node))
    assert stack["components"]["kernel"] == kernel
    assert stack["probes"]["nvidia"]["status"] == "not_applicable"
    assert "LibraryNotFound" in stack["probes"]["nvidia"]["detail"]
    assert stack["probes"]["container_image"]["status"] == "not_applicable"
    assert all(p["seconds"] >= 0 for p in stack["probes"].values())
    assert "nvidia_driver" not in stack["components"]


def test_kernels_give_different_fingerprints() -> None:
    a, b = (probe_stack(context(n)) for n in ("sapphire-rapids", "haswell"))
    assert a["hash"] != b["hash"]
    assert probe_stack(context("haswell"))["hash"] == b["hash"]  # stable


def test_gpu_node() -> None:
    source = FixtureNVML("h100-node.json")
    facts = read_nvml(source)
    assert facts["nvidia_state"] == "ok"
    assert facts["nvidia_driver"] == "550.107.02"
    assert facts["cuda_driver"] == "12.4"
    assert facts["gpu0"] == facts["gpu1"] == "NVIDIA H100 80GB HBM3 cc9.0"
    assert facts["gpu1_uuid"] == "GPU-5f3a1c2e-0001-4b1e-9c1d-aa11bb22cc34"
    assert facts["gpu0_ecc"] == "1" and facts["gpu0_mig"] == "0"
    assert facts["gpu1_mig"] == "n/a"  # NVML says NotSupported
    assert source.shutdown_calls == 1
    stack = probe_stack(context("sapphire-rapids", "h100-node.json"))
    assert stack["probes"]["nvidia"]["status"] == "ok" and stack["components"]["gpu1_vbios"] == "96.00.99.00.01"


@pytest.mark.parametrize("fixture,status,state", [("no-library.json", "not_applicable", None),
                                                  ("driver-not-loaded.json", "not_applicable", None),
                                                  ("version-mismatch.json", "ok", "LibRmVersionMismatch")])
def test_nvml_failures_are_outcomes(fixture: str, status: str, state: str | None) -> None:
    stack = probe_stack(context("haswell", fixture))
    assert stack["probes"]["nvidia"]["status"] == status
    assert stack["components"].get("nvidia_state") == state


def test_driver_upgraded_without_reboot_changes_the_fingerprint() -> None:
    before = probe_stack(context("haswell", "h100-node.json"))
    after = probe_stack(context("haswell", "version-mismatch.json"))
    assert before["hash"] != after["hash"]
    assert (before["components"]["nvidia_state"], after["components"]["nvidia_state"]) == \
        ("ok", "LibRmVersionMismatch")


def test_container_and_custom_probes(tmp_path: Path) -> None:
    firmware = tmp_path / "fw-version"
    firmware.write_text("1.2.3\n")
    ctx = ProbeContext(proc_root=FIXTURES / "haswell/proc", etc_root=FIXTURES / "haswell/etc",
                       nvml=FixtureNVML("no-library.json"), environ={"REVALIDATOR_IMAGE_DIGEST": "sha256:abc"})
    stack = probe_stack(ctx, custom={"firmware": {"file": str(firmware)},
                                     "uname": {"command": ["uname", "-s"]},
                                     "missing": {"file": str(tmp_path / "absent")},
                                     "broken": {"command": ["false"]}})
    c, p = stack["components"], stack["probes"]
    assert c["firmware"] == "1.2.3" and c["uname"] == "Linux" and c["container_image"] == "sha256:abc"
    assert p["missing"]["status"] == "not_applicable" and p["broken"]["status"] == "error"
    assert "CalledProcessError" in p["broken"]["detail"]


def test_probe_does_not_import_heavy_runtimes() -> None:
    import subprocess

    code = ("import sys; from runners.probes import probe_stack; s = probe_stack(); "
            "print(sorted(m for m in ('torch', 'onnxruntime', 'tensorrt') if m in sys.modules)); "
            "print(s['components']['onnxruntime'], s['components']['torch'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "[]"
    assert "absent" not in out[1] and len(out[1].split()) == 2  # read from package metadata, not by importing
