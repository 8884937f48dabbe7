"""Runner backends on real models: onnxruntime and torch (TorchScript and torch.export).
The GPU paths are in test_gpu.py (real GPU) and test_gpu_logic.py (their logic, on the CPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from runners.backends import ArtifactError, make_runner
from runners.backends.base import BackendUnavailable
from runners.families.classification.data import load_eval_data


@pytest.fixture(scope="module")
def rows(demo_dir: Path) -> dict[str, np.ndarray]:
    return load_eval_data(demo_dir / "digits-eval.npz", ["digit", "scan"]).inputs


def test_onnxruntime_and_torchscript_fp32_agree(demo_dir: Path, rows: dict[str, np.ndarray]) -> None:
    with make_runner("onnxruntime", demo_dir / "digits-fp32.onnx") as ort_runner:
        assert ort_runner.input_names == ["pixels"]
        assert ort_runner.providers == ["CPUExecutionProvider"]
        ort_out = ort_runner.infer_all(rows, batch_size=256)
    with make_runner("torch", demo_dir / "digits-fp32.ts") as torch_runner:
        assert torch_runner.input_names == ["pixels"]
        torch_out = torch_runner.infer_all(rows, batch_size=256)
    assert ort_out.shape == (len(rows["pixels"]), 10)
    np.testing.assert_allclose(ort_out, torch_out, rtol=1e-4, atol=1e-4)


def test_batch_size_does_not_change_fp32_outputs(demo_dir: Path, rows: dict[str, np.ndarray]) -> None:
    with make_runner("onnxruntime", demo_dir / "digits-fp32.onnx") as runner:
        whole = runner.infer_all(rows, batch_size=100_000)
        ragged = runner.infer_all(rows, batch_size=7)  # last batch is partial
    np.testing.assert_allclose(whole, ragged, rtol=1e-5, atol=1e-5)


def test_quantized_candidates_differ_from_fp32(demo_dir: Path, rows: dict[str, np.ndarray]) -> None:
    with make_runner("onnxruntime", demo_dir / "digits-fp32.onnx") as runner:
        fp32 = runner.infer_all(rows, 1024)
    with make_runner("onnxruntime", demo_dir / "digits-int8-dynamic.onnx") as runner:
        int8 = runner.infer_all(rows, 1024)
    with make_runner("torch", demo_dir / "digits-int8-dynamic.ts") as runner:
        torch_int8 = runner.infer_all(rows, 1024)
    for quantized in (int8, torch_int8):
        assert not np.array_equal(fp32, quantized)
        assert (fp32.argmax(1) == quantized.argmax(1)).mean() > 0.98


def test_torch_export_artifact(tmp_path: Path) -> None:
    import torch

    class Scale(torch.nn.Module):
        def forward(self, features: torch.Tensor) -> torch.Tensor:
            return features * 2.0 + 1.0

    path = tmp_path / "scale.pt2"
    torch.export.save(torch.export.export(Scale(), (torch.zeros(4, 3),),
                                          dynamic_shapes={"features": {0: torch.export.Dim("batch")}}), str(path))
    x = np.arange(30, dtype=np.float32).reshape(10, 3)
    with make_runner("torch", path) as runner:
        assert runner.input_names == ["features"]
        out = runner.infer_all({"features": x}, batch_size=4)
    np.testing.assert_allclose(out, x * 2 + 1)


def test_runner_releases_on_exit(demo_dir: Path) -> None:
    runner = make_runner("onnxruntime", demo_dir / "digits-fp32.onnx")
    with runner:
        assert runner.active
    assert not runner.active


@pytest.mark.parametrize("runner_name", ["onnxruntime", "torch"])
def test_missing_artifact_is_named(tmp_path: Path, runner_name: str) -> None:
    with pytest.raises(ArtifactError, match=r"absent\.bin: model artifact not found"):
        make_runner(runner_name, tmp_path / "absent.bin").activate()


@pytest.mark.parametrize("runner_name,suffix", [("onnxruntime", ".onnx"), ("torch", ".ts"), ("torch", ".pt2")])
def test_corrupt_artifact_is_named(tmp_path: Path, runner_name: str, suffix: str) -> None:
    path = tmp_path / f"broken{suffix}"
    path.write_bytes(b"this is not a model")
    with pytest.raises(ArtifactError, match=f"broken\\{suffix}: {runner_name} cannot load the model"):
        make_runner(runner_name, path).activate()


def test_unavailable_provider_is_refused_as_infrastructure(demo_dir: Path) -> None:
    runner = make_runner("onnxruntime", demo_dir / "digits-fp32.onnx", {"providers": ["ROCMExecutionProvider"]})
    with pytest.raises(BackendUnavailable, match="ROCMExecutionProvider.*not available here") as caught:
        runner.activate()
    assert not isinstance(caught.value, ArtifactError)  # the target lacks it: not the model's fault


def test_inputs_missing_from_data(demo_dir: Path) -> None:
    with make_runner("onnxruntime", demo_dir / "digits-fp32.onnx") as runner:
        with pytest.raises(ArtifactError, match=r"model inputs \['pixels'\] are not in the evaluation data"):
            runner.infer_all({"image": np.zeros((2, 64), np.float32)}, 8)


def test_unknown_runner_name() -> None:
    with pytest.raises(ArtifactError, match="unknown runner 'tflite'"):
        make_runner("tflite", "x")


def test_tensorrt_engine_key_changes_with_gpu_tensorrt_model_and_options() -> None:
    from runners.backends.tensorrt_runner import engine_key

    base = engine_key("onnx-sha", "10.7.0", "NVIDIA H100 80GB HBM3", "9.0", {"fp16": False})
    assert base == engine_key("onnx-sha", "10.7.0", "NVIDIA H100 80GB HBM3", "9.0", {"fp16": False, "device": "cuda:1"})
    for changed in (engine_key("onnx-sha2", "10.7.0", "NVIDIA H100 80GB HBM3", "9.0", {"fp16": False}),
                    engine_key("onnx-sha", "10.8.0", "NVIDIA H100 80GB HBM3", "9.0", {"fp16": False}),
                    engine_key("onnx-sha", "10.7.0", "NVIDIA L4", "8.9", {"fp16": False}),
                    engine_key("onnx-sha", "10.7.0", "NVIDIA H100 80GB HBM3", "9.0", {"fp16": True})):
        assert changed != base


def test_tensorrt_without_its_stack_is_a_clear_infrastructure_error(demo_dir: Path) -> None:
    import importlib.util

    import torch

    if importlib.util.find_spec("tensorrt") and torch.cuda.is_available():
        pytest.skip("TensorRT and a GPU are present: the GPU test covers this runner")
    with pytest.raises(BackendUnavailable, match="tensorrt runner needs") as caught:
        make_runner("tensorrt", demo_dir / "digits-fp32.onnx").activate()
    assert not isinstance(caught.value, ArtifactError)


def _onnx(path: Path, nodes: list, inputs: list, outputs: list) -> Path:
    import onnx
    from onnx import helper

    graph = helper.make_graph(nodes, "g", inputs, outputs)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_a_model_whose_output_does_not_follow_the_batch_is_refused_not_left_uninitialised(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    # ReduceSum over the batch: one row out per batch, whatever its size.
    path = _onnx(tmp_path / "sum.onnx",
                 [helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=1),
                  helper.make_node("Constant", [], ["axes"], value=helper.make_tensor("a", TensorProto.INT64, [1], [0]))],
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    x = np.ones((20, 3), np.float32)
    with make_runner("onnxruntime", path) as runner:
        for class_major in (False, True):
            with pytest.raises(ArtifactError, match=r"sum\.onnx: the onnxruntime runner returned 1 rows for a batch "
                                                    r"of 7 rows \(rows 0\.\.6\)"):
                runner.infer_all({"x": x}, 7, class_major=class_major)


def test_a_scalar_input_goes_whole_with_every_batch(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    path = _onnx(tmp_path / "scale.onnx", [helper.make_node("Mul", ["x", "t"], ["y"])],
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3]),
                  helper.make_tensor_value_info("t", TensorProto.FLOAT, [])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])])
    x = np.arange(30, dtype=np.float32).reshape(10, 3)
    with make_runner("onnxruntime", path) as runner:
        out = runner.infer_all({"x": x, "t": np.array(2.0, np.float32)}, 4)
    np.testing.assert_array_equal(out, x * 2)
