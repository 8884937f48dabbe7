"""The NVML probe against fake NVML modules built from fixture files (no GPU here): MIG, errors
after nvmlInit on one field or one GPU, zero devices, NoPermission, and PCI bus ids that tie
NVML's gpuN to CUDA's cuda:N."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from runners.backends.cuda_device import device_record
from runners.probes import ProbeContext, probe_stack
from runners.probes.nvidia import read_nvml

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "probe"


def nvml_error(name: str) -> Exception:
    """pynvml raises one NVMLError subclass per return code, named NVMLError_<Code>."""
    return type(name, (Exception,), {})()


class FakeNVML:
    """pynvml's call shape, answering from a fixture; `errors` per device and `system_errors`
    name the calls that fail after nvmlInit, as a GPU falling off the bus or a missing feature does."""

    def __init__(self, fixture: str) -> None:
        self.facts = json.loads((FIXTURES / "nvml" / fixture).read_text())
        self.shutdown_calls = 0

    def _system(self, call: str, value):  # noqa: ANN001, ANN202
        if call in self.facts.get("system_errors", {}):
            raise nvml_error(self.facts["system_errors"][call])
        return value

    def _device(self, call: str, handle: dict, key: str):  # noqa: ANN202
        if call in handle.get("errors", {}):
            raise nvml_error(handle["errors"][call])
        if key not in handle:
            raise nvml_error("NVMLError_NotSupported")
        return handle[key]

    def nvmlInit(self) -> None:
        if "init_error" in self.facts:
            raise nvml_error(self.facts["init_error"])

    def nvmlShutdown(self) -> None:
        self.shutdown_calls += 1

    def nvmlSystemGetDriverVersion(self) -> str:
        return self._system("nvmlSystemGetDriverVersion", self.facts["driver"])

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return self._system("nvmlSystemGetCudaDriverVersion", self.facts["cuda_driver"])

    def nvmlDeviceGetCount(self) -> int:
        return self._system("nvmlDeviceGetCount", len(self.facts["devices"]))

    def nvmlDeviceGetHandleByIndex(self, index: int) -> dict:
        handle = self.facts["devices"][index]
        if "handle_error" in handle:
            raise nvml_error(handle["handle_error"])
        return handle

    def nvmlDeviceGetName(self, handle: dict) -> bytes:
        return self._device("nvmlDeviceGetName", handle, "name").encode()  # older bindings return bytes

    def nvmlDeviceGetUUID(self, handle: dict) -> str:
        return self._device("nvmlDeviceGetUUID", handle, "uuid")

    def nvmlDeviceGetPciInfo(self, handle: dict) -> SimpleNamespace:
        return SimpleNamespace(busId=self._device("nvmlDeviceGetPciInfo", handle, "pci").encode())

    def nvmlDeviceGetVbiosVersion(self, handle: dict) -> str:
        return self._device("nvmlDeviceGetVbiosVersion", handle, "vbios")

    def nvmlDeviceGetCudaComputeCapability(self, handle: dict) -> tuple[int, int]:
        return tuple(self._device("nvmlDeviceGetCudaComputeCapability", handle, "compute_capability"))

    def nvmlDeviceGetEccMode(self, handle: dict) -> list[int]:
        return self._device("nvmlDeviceGetEccMode", handle, "ecc")

    def nvmlDeviceGetMigMode(self, handle: dict) -> list[int]:
        return self._device("nvmlDeviceGetMigMode", handle, "mig")

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: dict) -> int:
        return self._device("nvmlDeviceGetMaxMigDeviceCount", handle, "mig_slots")

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: dict, slot: int) -> dict:
        uuid = handle.get("mig_devices", {}).get(str(slot))
        if uuid is None:
            raise nvml_error("NVMLError_NotFound")
        return {"uuid": uuid}


def test_mig_enabled_gpu_lists_its_instances_and_pci_bus_ids_are_recorded() -> None:
    nvml = FakeNVML("mig-enabled.json")
    facts = read_nvml(nvml)
    assert facts["gpu0_mig"] == "1"
    assert facts["gpu0_mig_devices"] == ("MIG-a1b2c3d4-0000-5e6f-8a9b-0c1d2e3f4a5b,"
                                         "MIG-a1b2c3d4-0002-5e6f-8a9b-0c1d2e3f4a5b")
    assert facts["gpu1_mig"] == "0 (pending 1)" and "gpu1_mig_devices" not in facts  # enabled at next reset
    assert (facts["gpu0_pci"], facts["gpu1_pci"]) == ("00000000:17:00.0", "00000000:2A:00.0")
    assert facts["cuda_driver"] == "12.8" and nvml.shutdown_calls == 1


def test_an_error_after_init_costs_only_the_field_or_gpu_it_hits() -> None:
    nvml = FakeNVML("gpu-lost.json")
    facts = read_nvml(nvml)
    assert facts["nvidia_state"] == "ok" and facts["nvidia_driver"] == "550.107.02"
    assert facts["gpu0"] == "NVIDIA L4 cc8.9" and facts["gpu0_uuid"] == "GPU-0c1d2e3f-0000-4a5b-8c9d-112233445566"
    assert facts["gpu0_vbios"] == "n/a"  # NotSupported: the GPU has none
    assert facts["gpu0_ecc"] == "error: Unknown"
    assert facts["gpu1"] == "error: GpuIsLost" and not any(k.startswith("gpu1_") for k in facts)
    assert facts["gpu2_uuid"] == "error: GpuIsLost" and facts["gpu2_pci"] == "00000000:E1:00.0"
    assert nvml.shutdown_calls == 1


def test_system_level_errors_are_recorded_and_the_rest_kept() -> None:
    facts = read_nvml(FakeNVML("system-errors.json"))
    assert facts == {"nvidia_state": "device count: Unknown", "nvidia_driver": "550.107.02",
                     "cuda_driver": "error: FunctionNotFound"}


def test_zero_devices_is_a_state_not_a_silent_ok() -> None:
    facts = read_nvml(FakeNVML("zero-devices.json"))
    assert facts["nvidia_state"] == "no devices" and not any(k.startswith("gpu") for k in facts)


def context(nvml: str) -> ProbeContext:
    node = FIXTURES / "haswell"
    return ProbeContext(proc_root=node / "proc", etc_root=node / "etc", nvml=FakeNVML(nvml), environ={})


def test_no_permission_is_not_read_as_no_gpu() -> None:
    denied, absent = probe_stack(context("no-permission.json")), probe_stack(context("no-library.json"))
    assert denied["probes"]["nvidia"]["status"] == "ok"
    assert denied["components"]["nvidia_state"] == "NoPermission"
    assert absent["probes"]["nvidia"]["status"] == "not_applicable" and "nvidia_state" not in absent["components"]
    assert denied["hash"] != absent["hash"]


@pytest.mark.parametrize("fixture", ["gpu-lost.json", "system-errors.json"])
def test_an_error_after_init_leaves_the_probe_ok_with_its_other_values(fixture: str) -> None:
    stack = probe_stack(context(fixture))
    assert stack["probes"]["nvidia"]["status"] == "ok" and "nvidia_driver" in stack["components"]


class FakeTorch:
    """torch's CUDA calls for device_record: CUDA orders GPUs fastest first, so cuda:0 here is the
    GPU that NVML (PCI bus order) calls gpu1."""

    def __init__(self) -> None:
        devices = [SimpleNamespace(name="NVIDIA H100 80GB HBM3", major=9, minor=0, pci_domain_id=0,
                                   pci_bus_id=0x2A, pci_device_id=0, uuid="5f3a1c2e-0001-4b1e-9c1d-aa11bb22cc34"),
                   SimpleNamespace(name="NVIDIA H100 80GB HBM3", major=9, minor=0, pci_domain_id=0,
                                   pci_bus_id=0x17, pci_device_id=0, uuid="5f3a1c2e-0000-4b1e-9c1d-aa11bb22cc33")]
        self.cuda = SimpleNamespace(get_device_properties=lambda i: devices[i])


def test_a_runs_device_record_joins_the_probed_gpu_by_pci_bus_id_not_by_index() -> None:
    facts = read_nvml(FakeNVML("mig-enabled.json"))
    record = device_record(FakeTorch(), 0)
    assert record["device"] == "cuda:0" and record["pci_bus_id"] == "00000000:2A:00.0"
    probed = [k.removesuffix("_pci") for k, v in facts.items() if k.endswith("_pci") and v == record["pci_bus_id"]]
    assert probed == ["gpu1"]
    assert record["gpu_uuid"] == facts["gpu1_uuid"]
