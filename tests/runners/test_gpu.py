"""The GPU backends on a real GPU, against the CPU: batch 7 and 100,000, fp16, a two-output model,
TF32 on and off, refused fallback, a .pt2 moved to the GPU, and the run's GPU joined to the probe's.

Every test here is marked `gpu` and skips cleanly without what it needs (a CUDA device, the
CUDA provider of onnxruntime-gpu, TensorRT). Models are built here from fixed weights with torch
and onnx only, so `scripts/gpu-check` runs on a machine without the demo's build dependencies.
Set REVALIDATOR_GPU_RESULTS to a folder to keep the measured differences (measurements.jsonl).
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest

from runners.backends import make_runner
from runners.backends.base import BackendUnavailable

pytestmark = pytest.mark.gpu
CPU, CUDA_EP = "CPUExecutionProvider", "CUDAExecutionProvider"


@pytest.fixture(scope="module")
def torch():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device")
    return torch


def needs_ort_cuda() -> None:
    ort = pytest.importorskip("onnxruntime")
    if CUDA_EP not in ort.get_available_providers():
        pytest.skip("this onnxruntime has no CUDA execution provider (onnxruntime-gpu is not installed)")


def needs_tensorrt() -> None:
    if importlib.util.find_spec("tensorrt") is None:
        pytest.skip("tensorrt is not installed")


def measure(name: str, **values: object) -> None:
    """Keep a measured figure for the GPU check's summary (and print it for -s runs)."""
    print(name, values)
    folder = os.environ.get("REVALIDATOR_GPU_RESULTS")
    if folder:
        with open(Path(folder) / "measurements.jsonl", "a") as handle:
            handle.write(json.dumps({"test": name, **values}) + "\n")


# -- models from fixed weights: the same numbers in TorchScript and ONNX -----------------------------------
def weights(seed: int = 0, sizes: tuple[int, ...] = (64, 128, 10)) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [(rng.normal(0, 1 / np.sqrt(a), (a, b)).astype(np.float32), rng.normal(0, 0.1, b).astype(np.float32))
            for a, b in zip(sizes, sizes[1:])]


def torchscript_mlp(torch, path: Path, layers, half: bool = False, two_outputs: bool = False) -> Path:  # noqa: ANN001
    class MLP(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = torch.nn.ModuleList()
            for w, b in layers:
                linear = torch.nn.Linear(*w.shape)
                linear.weight.data = torch.from_numpy(w.T.copy())
                linear.bias.data = torch.from_numpy(b.copy())
                self.layers.append(linear)
            if half:
                self.half()

        def forward(self, x: torch.Tensor):  # noqa: ANN202
            h = x.half() if half else x
            hidden = h
            for i, layer in enumerate(self.layers):
                h = layer(h)
                if i < len(self.layers) - 1:
                    h = torch.relu(h)
                    hidden = h
            return (h, hidden) if two_outputs else h

    example = torch.zeros(2, layers[0][0].shape[0])
    torch.jit.save(torch.jit.trace(MLP().eval(), example), str(path))  # trace: the flags are fixed at build
    return path


def onnx_mlp(path: Path, layers, fp16: bool = False, two_outputs: bool = False) -> Path:  # noqa: ANN001
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    dtype, elem = (np.float16, TensorProto.FLOAT16) if fp16 else (np.float32, TensorProto.FLOAT)
    nodes, inits, h = [], [], "x"
    for i, (w, b) in enumerate(layers):
        inits += [numpy_helper.from_array(w.astype(dtype), f"W{i}"), numpy_helper.from_array(b.astype(dtype), f"B{i}")]
        nodes += [helper.make_node("MatMul", [h, f"W{i}"], [f"m{i}"]),
                  helper.make_node("Add", [f"m{i}", f"B{i}"], [f"a{i}"])]
        h = f"a{i}"
        if i < len(layers) - 1:
            nodes.append(helper.make_node("Relu", [h], [f"hidden{i}"]))
            h = f"hidden{i}"
    nodes.append(helper.make_node("Identity", [h], ["logits"]))
    outputs = [helper.make_tensor_value_info("logits", elem, ["n", layers[-1][0].shape[1]])]
    if two_outputs:  # graph order logits, hidden; TensorRT may order them otherwise
        outputs.append(helper.make_tensor_value_info(f"hidden{len(layers) - 2}", elem, ["n", layers[-1][0].shape[0]]))
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", elem, ["n", layers[0][0].shape[0]])],
                              outputs, inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def rows(n: int, features: int = 64, seed: int = 1) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).normal(0, 1, (n, features)).astype(np.float32)}


def reference(layers, x: np.ndarray) -> np.ndarray:  # noqa: ANN001
    h = x.astype(np.float64)
    for i, (w, b) in enumerate(layers):
        h = h @ w + b
        if i < len(layers) - 1:
            h = np.maximum(h, 0)
    return h


BATCHES = [(7, 20_000), (100_000, 120_000)]  # (batch size, rows): ragged last batches in both


# -- the same outputs as the CPU, at batch 7 and 100,000 --------------------------------------------------
@pytest.mark.parametrize("batch,n", BATCHES)
def test_torch_cuda_matches_cpu(torch, tmp_path: Path, batch: int, n: int) -> None:  # noqa: ANN001
    layers = weights()
    model, data = torchscript_mlp(torch, tmp_path / "mlp.ts", layers), rows(n)
    with make_runner("torch", model) as cpu_runner:
        cpu = cpu_runner.infer_all(data, batch)
    with make_runner("torch", model, {"device": "cuda:0"}) as gpu_runner:
        gpu = gpu_runner.infer_all(data, batch)
        described = gpu_runner.describe()
    assert described["numeric_mode"] == "fp32" and described["device"] == "cuda:0"
    assert described["pci_bus_id"].count(":") == 2
    diff = float(np.abs(gpu - cpu).max())
    measure("torch_cuda_vs_cpu", batch=batch, rows=n, max_abs_diff=diff)
    assert gpu.shape == cpu.shape == (n, 10) and diff < 1e-4


@pytest.mark.parametrize("batch,n", BATCHES)
def test_onnxruntime_cuda_matches_cpu(tmp_path: Path, batch: int, n: int) -> None:
    needs_ort_cuda()
    layers = weights()
    model, data = onnx_mlp(tmp_path / "mlp.onnx", layers), rows(n)
    with make_runner("onnxruntime", model) as runner:
        cpu = runner.infer_all(data, batch)
    with make_runner("onnxruntime", model, {"providers": [CUDA_EP, CPU]}) as runner:
        gpu = runner.infer_all(data, batch)
        described = runner.describe()
    assert described["providers"][0] == CUDA_EP and described["numeric_mode"] == "fp32"
    diff = float(np.abs(gpu - cpu).max())
    measure("onnxruntime_cuda_vs_cpu", batch=batch, rows=n, max_abs_diff=diff)
    assert diff < 1e-4


@pytest.mark.parametrize("batch,n", BATCHES)
def test_tensorrt_matches_cpu_and_reuses_its_engine(torch, tmp_path: Path, batch: int, n: int) -> None:  # noqa: ANN001
    needs_tensorrt()
    layers = weights()
    model, data = onnx_mlp(tmp_path / "mlp.onnx", layers), rows(n)
    options = {"cache_dir": str(tmp_path / "engines"), "max_batch_size": 100_000}
    with make_runner("onnxruntime", model) as runner:
        cpu = runner.infer_all(data, batch)
    with make_runner("tensorrt", model, options) as runner:
        first, built = runner.infer_all(data, batch), runner.describe()
    with make_runner("tensorrt", model, options) as runner:
        second, cached = runner.infer_all(data, batch), runner.describe()
    assert (built["engine_from_cache"], cached["engine_from_cache"]) == (False, True)
    assert built["engine_sha256"] == cached["engine_sha256"] and built["numeric_mode"] == "fp32"
    np.testing.assert_array_equal(first, second)
    diff = float(np.abs(first - cpu).max())
    measure("tensorrt_vs_cpu", batch=batch, rows=n, max_abs_diff=diff)
    assert diff < 1e-4


def test_tensorrt_fixed_batch_engine_pads_its_last_batch(torch, tmp_path: Path) -> None:  # noqa: ANN001
    needs_tensorrt()
    import onnx

    layers, data = weights(), rows(20)
    model = onnx_mlp(tmp_path / "fixed.onnx", layers)
    proto = onnx.load(str(model))
    for value in list(proto.graph.input) + list(proto.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = 8  # a fixed batch of 8
    onnx.save(proto, str(model))
    with make_runner("tensorrt", model, {"cache_dir": str(tmp_path)}) as runner:
        out = runner.infer_all(data, 8)  # 8, 8, then 4 rows padded to 8
    np.testing.assert_allclose(out, reference(layers, data["x"]), atol=1e-4)


def test_torch_on_a_second_gpu_runs_there(torch, tmp_path: Path) -> None:  # noqa: ANN001
    if torch.cuda.device_count() < 2:
        pytest.skip("one GPU here: cuda:1 cannot be checked")
    layers, data = weights(), rows(4096)
    with make_runner("torch", torchscript_mlp(torch, tmp_path / "mlp.ts", layers), {"device": "cuda:1"}) as runner:
        out, described = runner.infer_all(data, 1024), runner.describe()
    assert described["device"] == "cuda:1"
    np.testing.assert_allclose(out, reference(layers, data["x"]), atol=1e-4)


# -- fp16 ------------------------------------------------------------------------------------------------
def test_torch_fp16_on_cuda_is_close_to_fp32_not_equal(torch, tmp_path: Path) -> None:  # noqa: ANN001
    layers, data = weights(), rows(4096)
    with make_runner("torch", torchscript_mlp(torch, tmp_path / "half.ts", layers, half=True), {"device": "cuda"}) as r:
        half, described = r.infer_all(data, 1024), r.describe()
    assert half.dtype == np.float16 and described["output_dtype"] == "float16"
    diff = float(np.abs(half.astype(np.float64) - reference(layers, data["x"])).max())
    measure("torch_fp16_vs_fp64_reference", max_abs_diff=diff)
    assert 0 < diff < 5e-2


def test_tensorrt_fp16_io_engine_gets_fp16_inputs(torch, tmp_path: Path) -> None:  # noqa: ANN001
    needs_tensorrt()
    layers, data = weights(), rows(4096)
    model = onnx_mlp(tmp_path / "half.onnx", layers, fp16=True)
    with make_runner("tensorrt", model, {"cache_dir": str(tmp_path), "fp16": True}) as runner:
        out, described = runner.infer_all(data, 1024), runner.describe()
    assert described["input_dtypes"] == {"x": "HALF"} and described["inputs_cast"] == {"x": "float32->float16"}
    diff = float(np.abs(out.astype(np.float64) - reference(layers, data["x"])).max())
    measure("tensorrt_fp16_io_vs_fp64_reference", max_abs_diff=diff)
    assert diff < 5e-2


# -- two outputs: every backend compares the graph's first ------------------------------------------------
def test_two_output_model_gives_the_first_graph_output_on_every_gpu_backend(torch, tmp_path: Path) -> None:  # noqa: ANN001
    layers, data = weights(), rows(2048)
    expected = reference(layers, data["x"])
    with make_runner("torch", torchscript_mlp(torch, tmp_path / "two.ts", layers, two_outputs=True),
                     {"device": "cuda"}) as runner:
        np.testing.assert_allclose(runner.infer_all(data, 512), expected, atol=1e-4)
    model = onnx_mlp(tmp_path / "two.onnx", layers, two_outputs=True)
    ran = ["torch"]
    if importlib.util.find_spec("tensorrt"):
        with make_runner("tensorrt", model, {"cache_dir": str(tmp_path)}) as runner:
            assert runner.describe()["output"] == "logits"
            np.testing.assert_allclose(runner.infer_all(data, 512), expected, atol=1e-4)
        ran.append("tensorrt")
    ort = pytest.importorskip("onnxruntime")

    if CUDA_EP in ort.get_available_providers():
        with make_runner("onnxruntime", model, {"providers": [CUDA_EP]}) as runner:
            np.testing.assert_allclose(runner.infer_all(data, 512), expected, atol=1e-4)
        ran.append("onnxruntime-cuda")
    measure("two_output_model", backends=ran)


# -- TF32 on and off ---------------------------------------------------------------------------------------
def test_tf32_is_off_unless_asked_and_the_difference_is_measured(torch, tmp_path: Path) -> None:  # noqa: ANN001
    rng = np.random.default_rng(3)
    w = rng.normal(0, 1 / 64, (4096, 4096)).astype(np.float32)
    layers = [(w, np.zeros(4096, np.float32))]
    data = {"x": rng.normal(0, 1, (2048, 4096)).astype(np.float32)}
    model = torchscript_mlp(torch, tmp_path / "wide.ts", layers)
    exact = reference(layers, data["x"])
    errors = {}
    for tf32 in (False, True):
        with make_runner("torch", model, {"device": "cuda", "tf32": tf32}) as runner:
            out, described = runner.infer_all(data, 2048), runner.describe()
        assert described["numeric_mode"] == ("tf32" if tf32 else "fp32")
        errors[tf32] = float(np.abs(out - exact).max())
    measure("torch_tf32_on_off", max_abs_err_fp32=errors[False], max_abs_err_tf32=errors[True],
            compute_capability=torch.cuda.get_device_capability(0))
    assert errors[False] < 1e-3
    if torch.cuda.get_device_capability(0) >= (8, 0):  # TF32 exists from Ampere on
        assert errors[True] > 3 * errors[False]


# -- fallback refused --------------------------------------------------------------------------------------
def test_onnxruntime_never_runs_a_cuda_job_on_the_cpu(torch, tmp_path: Path) -> None:  # noqa: ANN001
    ort = pytest.importorskip("onnxruntime")

    model = onnx_mlp(tmp_path / "mlp.onnx", weights())
    # Without a loadable CUDA provider (CPU onnxruntime), or with one asked for a GPU that is not
    # there (device 99), onnxruntime would fall back to the CPU; the runner refuses instead.
    options = {"providers": [CUDA_EP], "device_id": 99 if CUDA_EP in ort.get_available_providers() else 0}
    with pytest.raises(BackendUnavailable):
        make_runner("onnxruntime", model, options).activate()
    measure("onnxruntime_fallback_refused", cuda_provider_built=CUDA_EP in ort.get_available_providers())


# -- a .pt2 exported on the CPU, with a device in its graph, run on CUDA -------------------------------------
def test_pt2_with_a_baked_cpu_device_runs_on_cuda(torch, tmp_path: Path) -> None:  # noqa: ANN001
    class AddOnes(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + torch.ones(x.shape[1], device=x.device) * 2

    program = torch.export.export(AddOnes(), (torch.zeros(4, 3),),
                                  dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    torch.export.save(program, str(tmp_path / "baked.pt2"))
    x = np.arange(30, dtype=np.float32).reshape(10, 3)
    with make_runner("torch", tmp_path / "baked.pt2", {"device": "cuda"}) as runner:
        np.testing.assert_array_equal(runner.infer_all({"x": x}, 4), x + 2)


# -- the GPU a run used is the probed one --------------------------------------------------------------------
def test_a_runs_gpu_is_found_in_the_nvml_probe_by_pci_bus_id(torch) -> None:  # noqa: ANN001
    pytest.importorskip("pynvml")
    from runners.backends.cuda_device import device_record
    from runners.probes.nvidia import read_nvml
    import pynvml

    facts = read_nvml(pynvml)
    record = device_record(torch, 0)
    matches = [k.removesuffix("_pci") for k, v in facts.items() if k.endswith("_pci") and v == record["pci_bus_id"]]
    measure("cuda0_vs_nvml", pci_bus_id=record["pci_bus_id"], nvml=matches, gpu=record["gpu"],
            uuid_match=bool(matches) and facts.get(f"{matches[0]}_uuid") == record.get("gpu_uuid"))
    assert len(matches) == 1
    assert facts[f"{matches[0]}_uuid"] == record["gpu_uuid"]
