"""The GPU backends' decisions, on the CPU: dtypes, profiles, batches, outputs, providers, TF32,
device naming, and how a missing GPU stack is classified. No GPU, TensorRT or onnxruntime-gpu here:
these are the plain functions the GPU code calls, and the CPU halves of the real runners."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from runners.backends import make_runner
from runners.backends import tensorrt_logic as logic
from runners.backends.base import ArtifactError, BackendUnavailable
from runners.backends.cuda_device import cuda_index, pci_bus_id, require_cuda
from runners.backends.ort_providers import CPU, CUDA, TENSORRT, check_providers, numeric_mode, provider_options

M = "model.onnx"


# -- TensorRT: input dtypes against the engine's declared ones ----------------------------------------
def test_float32_data_into_an_fp16_input_is_cast_not_fed_as_raw_bytes() -> None:
    cast = logic.input_cast(M, "pixels", np.dtype("float32"), "HALF")
    assert (cast.torch_dtype, cast.casts, cast.check_range) == ("float16", True, False)
    assert logic.input_cast(M, "pixels", np.dtype("float32"), "BF16").torch_dtype == "bfloat16"
    assert not logic.input_cast(M, "pixels", np.dtype("float32"), "FLOAT").casts


def test_int32_into_int64_is_exact_and_int64_into_int32_is_range_checked() -> None:
    widen = logic.input_cast(M, "ids", np.dtype("int32"), "INT64")
    assert (widen.torch_dtype, widen.check_range) == ("int64", False)
    narrow = logic.input_cast(M, "ids", np.dtype("int64"), "INT32")
    assert (narrow.torch_dtype, narrow.check_range) == ("int32", True)
    logic.check_range(M, narrow, np.array([0, 2**31 - 1]))
    with pytest.raises(ArtifactError, match=r"'ids' holds values in \[0, 2147483648\], outside the engine's int32"):
        logic.check_range(M, narrow, np.array([0, 2**31]))
    assert logic.input_cast(M, "ids", np.dtype("uint8"), "INT32").check_range is False
    assert logic.input_cast(M, "ids", np.dtype("int8"), "UINT8").check_range is True  # negatives would wrap


@pytest.mark.parametrize("data,engine", [("float32", "INT32"), ("int64", "FLOAT"), ("bool", "FLOAT"),
                                         ("float32", "BOOL"), ("float32", "FP8"), ("float32", "INT4"),
                                         ("float32", "FP4"), ("float32", "SOMETHING_NEW")])
def test_data_tensorrt_would_misread_is_refused_naming_the_input(data: str, engine: str) -> None:
    with pytest.raises(ArtifactError, match=f"model.onnx: input 'x' is .*{engine}"):
        logic.input_cast(M, "x", np.dtype(data), engine)


def test_bf16_and_fp8_outputs_come_back_as_float32_and_packed_types_are_refused() -> None:
    assert logic.output_dtypes(M, "y", "BF16") == ("bfloat16", "float32")
    assert logic.output_dtypes(M, "y", "FP8") == ("float8_e4m3fn", "float32")
    assert logic.output_dtypes(M, "y", "HALF") == ("float16", "float16")
    assert logic.output_dtypes(M, "y", "INT64") == ("int64", "int64")
    with pytest.raises(ArtifactError, match="output 'y' is INT4"):
        logic.output_dtypes(M, "y", "INT4")


# -- TensorRT: optimisation profiles and batch limits -------------------------------------------------
def test_profile_for_a_dynamic_batch() -> None:
    assert logic.profile_shapes(M, "x", (-1, 64), 4096) == ((1, 64), (1024, 64), (4096, 64))
    assert logic.profile_shapes(M, "x", (-1, 3, 8), 100) == ((1, 3, 8), (100, 3, 8), (100, 3, 8))  # opt <= max
    assert logic.profile_shapes(M, "x", (-1, 64), 4096, opt_batch=256)[1] == (256, 64)


def test_fixed_batch_and_scalar_inputs_get_no_profile_range() -> None:
    # TensorRT refuses a range on a static dimension ("expected min=opt=max"): no profile entry at all.
    assert logic.profile_shapes(M, "x", (8, 64), 4096) is None
    assert logic.profile_shapes(M, "temperature", (), 4096) is None


@pytest.mark.parametrize("shape", [(-1, -1), (8, -1), (-1, 3, -1)])
def test_dynamic_dimensions_beyond_the_batch_are_refused(shape: tuple[int, ...]) -> None:
    with pytest.raises(ArtifactError, match="only the first \\(batch\\) dimension may be dynamic"):
        logic.profile_shapes(M, "x", shape, 4096)


def test_batches_are_held_to_what_the_engine_was_built_for() -> None:
    dynamic = logic.batch_limit(M, {"x": (-1, 64), "t": ()}, 4096)
    assert dynamic == logic.BatchLimit(largest=4096) and logic.padding(M, 4096, dynamic) == 0
    with pytest.raises(ArtifactError, match="a batch of 100000 rows, but the engine takes max_batch_size 4096"):
        logic.padding(M, 100_000, dynamic)
    fixed = logic.batch_limit(M, {"x": (8, 64)}, 4096)
    assert fixed == logic.BatchLimit(largest=8, fixed=8)
    assert logic.padding(M, 3, fixed) == 5  # the last, partial batch is padded; its extra rows dropped
    with pytest.raises(ArtifactError, match="a fixed batch of 8"):
        logic.padding(M, 9, fixed)
    with pytest.raises(ArtifactError, match="disagree on the batch dimension"):
        logic.batch_limit(M, {"x": (8, 64), "y": (-1, 2)}, 4096)


def test_outputs_are_mapped_by_graph_name_not_engine_order() -> None:
    assert logic.select_output(M, ["logits", "features"], ["features", "logits"]) == "logits"
    with pytest.raises(ArtifactError, match="first output 'logits' is not an engine output"):
        logic.select_output(M, ["logits"], ["output_0"])


# -- numeric mode ---------------------------------------------------------------------------------------
def test_tensorrt_precision_is_explicit_and_tf32_is_off_unless_asked() -> None:
    assert logic.precision({}).mode == "fp32" and not logic.precision({}).tf32
    assert logic.precision({"fp16": False, "tf32": None}).mode == "fp32"
    assert logic.precision({"tf32": True}).mode == "tf32"
    assert logic.precision({"fp16": True}).mode == "fp16+fp32"


def test_tensorrt_11_is_refused_as_infrastructure() -> None:
    logic.check_tensorrt_version("10.13.0.35")
    with pytest.raises(BackendUnavailable, match="needs TensorRT 10.x, this target has 11.0.0"):
        logic.check_tensorrt_version("11.0.0")


def test_pyproject_bounds_tensorrt_below_11() -> None:
    import tomllib

    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]
    gpu = project["optional-dependencies"]["gpu"]
    assert any(d.replace(" ", "").startswith("tensorrt>=10,<11") for d in gpu), gpu


# -- onnxruntime providers --------------------------------------------------------------------------------
def test_cuda_provider_gets_its_device_and_tf32_off() -> None:
    assert provider_options([CUDA, CPU], {"device_id": 1}) == [
        (CUDA, {"device_id": "1", "use_tf32": "0"}), (CPU, {})]
    assert provider_options([CUDA], {"tf32": True})[0][1]["use_tf32"] == "1"


def test_tensorrt_provider_gets_device_fp16_workspace_and_engine_cache(tmp_path: Path) -> None:
    (name, settings), = provider_options([TENSORRT], {"device_id": 2, "fp16": True, "workspace_mb": 2048,
                                                      "engine_cache_dir": str(tmp_path)})
    assert name == TENSORRT
    assert settings == {"device_id": "2", "trt_fp16_enable": "1", "trt_max_workspace_size": str(2048 << 20),
                        "trt_engine_cache_enable": "1", "trt_engine_cache_path": str(tmp_path),
                        "trt_timing_cache_enable": "1", "trt_timing_cache_path": str(tmp_path)}
    assert provider_options([TENSORRT], {})[0][1]["trt_fp16_enable"] == "0"


def test_a_session_that_fell_back_to_the_cpu_is_refused() -> None:
    check_providers(M, [CUDA], [CUDA, CPU])
    with pytest.raises(BackendUnavailable, match=r"could not load execution provider\(s\) \['CUDAExecutionProvider'\]"):
        check_providers(M, [CUDA, CPU], [CPU])
    with pytest.raises(BackendUnavailable, match="TensorrtExecutionProvider"):
        check_providers(M, [TENSORRT, CUDA], [CUDA, CPU])


def test_onnxruntime_numeric_mode_names_what_the_first_provider_does() -> None:
    assert numeric_mode([CPU], {}) == "fp32"
    assert numeric_mode([CUDA, CPU], {}) == "fp32"
    assert numeric_mode([CUDA, CPU], {"tf32": True}) == "tf32"
    assert numeric_mode([TENSORRT, CUDA, CPU], {"fp16": True}) == "fp16+tf32"


def test_onnxruntime_session_runs_without_fallback_and_records_its_providers(demo_dir: Path) -> None:
    with make_runner("onnxruntime", demo_dir / "digits-fp32.onnx") as runner:
        assert runner._session._enable_fallback is False  # what disable_fallback() sets
        described = runner.describe()
    assert described["providers"] == [CPU] and described["numeric_mode"] == "fp32"
    assert described["device"] == "cpu"


# -- CUDA devices and torch ------------------------------------------------------------------------------
def test_cuda_device_names() -> None:
    assert (cuda_index("cuda"), cuda_index("cuda:3")) == (0, 3)
    with pytest.raises(ArtifactError):
        cuda_index("gpu1")
    assert pci_bus_id(0, 0x17, 0) == "00000000:17:00.0"  # NVML's and nvidia-smi's spelling


def test_no_cuda_device_is_infrastructure_for_every_gpu_runner(demo_dir: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    with pytest.raises(BackendUnavailable, match="torch sees no CUDA device"):
        require_cuda(torch, "cuda:1", "x")
    with pytest.raises(BackendUnavailable, match="torch sees no CUDA device"):
        make_runner("torch", demo_dir / "digits-fp32.ts", {"device": "cuda"}).activate()


def test_torch_runner_holds_tf32_off_while_active_and_restores_it(demo_dir: Path) -> None:
    import torch

    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cudnn.allow_tf32 = True  # torch's own default for cuDNN
    try:
        with make_runner("torch", demo_dir / "digits-fp32.ts") as runner:
            assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (False, False)
            assert runner.describe()["numeric_mode"] == "fp32"
        assert torch.backends.cudnn.allow_tf32 is True
        with make_runner("torch", demo_dir / "digits-fp32.ts", {"tf32": True}):
            assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (True, True)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_pt2_with_a_device_baked_into_its_graph_is_moved_by_the_export_pass(tmp_path: Path) -> None:
    """A program exported on another device (here "meta", standing in for a GPU) keeps that device in
    its tensor constructors; Module.to() does not rewrite them, torch.export's move pass does."""
    import torch

    class AddOnes(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + torch.ones(x.shape[1], device=x.device) * 2

    program = torch.export.export(AddOnes(), (torch.zeros(4, 3, device="meta"),),
                                  dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    program._example_inputs = None  # meta tensors hold no data to move
    torch.export.save(program, str(tmp_path / "baked.pt2"))
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    with make_runner("torch", tmp_path / "baked.pt2") as runner:
        np.testing.assert_array_equal(runner.infer_all({"x": x}, 4), x + 2)


# -- a missing GPU stack is infrastructure (exit 3), not bad input (exit 2) -----------------------------------
@pytest.mark.parametrize("runner,options", [("tensorrt", {}), ("torch", {"device": "cuda"}),
                                            ("onnxruntime", {"providers": [CUDA]})])
def test_a_job_on_a_target_without_the_gpu_stack_is_an_infrastructure_error(demo_dir: Path, runner: str,
                                                                            options: dict) -> None:
    import importlib.util

    import torch

    if torch.cuda.is_available() and importlib.util.find_spec("tensorrt"):
        pytest.skip("this machine has the GPU stack")
    from runners.contracts import ArtifactSpec
    from runners.harness import run_job
    from scheduler.validate import EXIT_INTERNAL, RunRecord, ValidationReport
    from tests.runners.test_harness import job

    spec = job(demo_dir, "digits-fp32.ts" if runner == "torch" else "digits-fp32.onnx", runner)
    spec.runner_options = {runner: options}
    if runner == "onnxruntime":
        spec.candidate_artifact = ArtifactSpec(spec.candidate_artifact.path, "onnxruntime")
    result = run_job(spec)
    assert result.status == "error" and result.error_kind != "input", result.error
    assert "BackendUnavailable" in result.error
    assert ValidationReport([RunRecord("r1", spec, result)]).exit_code() == EXIT_INTERNAL


def test_the_provenance_records_how_each_model_was_computed(demo_dir: Path) -> None:
    from runners.harness import run_job
    from tests.runners.test_harness import job

    for spec in (job(demo_dir, "digits-int8-dynamic.onnx"), job(demo_dir, "digits-int8-dynamic.ts", "torch"),
                 job(demo_dir, "digits-int8-dynamic.onnx", batch_sizes=(1, 64))):
        result = run_job(spec)
        assert result.status == "finished", result.error
        baseline, candidate = (result.provenance[role]["runtime"] for role in ("baseline", "candidate"))
        assert baseline == {"device": "cpu", "numeric_mode": "fp32", "providers": [CPU], "provider_options": {},
                            "output": "logits", "output_dtype": "tensor(float)"}
        assert candidate["numeric_mode"] == "fp32" and candidate["device"] == "cpu"
        assert candidate["output_dtype"] in ("tensor(float)", "float32")
