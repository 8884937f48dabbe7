"""The TensorRT runner's decisions, as plain functions of shapes, dtype names and options.

TensorRT reads an input's bytes as the engine's declared dtype and never checks them, builds
only the optimisation profiles it is given, and orders its I/O tensors its own way. Each of
those is decided here, without TensorRT or a GPU, so it is tested on any machine; the runner
only feeds these functions what the engine reports (dtypes by their `DataType` names).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from runners.backends.base import ArtifactError, BackendUnavailable

# TensorRT DataType name -> (torch dtype name, numpy dtype name or None where numpy has none, kind)
TRT_DTYPES: dict[str, tuple[str, str | None, str]] = {
    "FLOAT": ("float32", "float32", "f"),
    "HALF": ("float16", "float16", "f"),
    "BF16": ("bfloat16", None, "f"),
    "FP8": ("float8_e4m3fn", None, "f"),
    "INT8": ("int8", "int8", "i"),
    "INT32": ("int32", "int32", "i"),
    "INT64": ("int64", "int64", "i"),
    "UINT8": ("uint8", "uint8", "u"),
    "BOOL": ("bool", "bool", "b"),
}
# Sub-byte types pack two values per byte: no torch/numpy buffer holds them one per element.
PACKED = ("INT4", "FP4")


def check_tensorrt_version(version: str) -> None:
    """TensorRT 11 drops weakly typed networks (BuilderFlag.FP16 among them): this runner needs 10.x."""
    major = int(version.split(".")[0])
    if major != 10:
        raise BackendUnavailable(f"the tensorrt runner needs TensorRT 10.x, this target has {version} "
                                 f"(install 'tensorrt>=10,<11')")


@dataclass(frozen=True)
class Precision:
    """Builder flags and the numeric mode they give. TensorRT enables TF32 by default: an fp32
    build must clear it, or "fp32" is TF32 (10 mantissa bits) in every matmul and convolution."""

    fp16: bool
    tf32: bool

    @property
    def mode(self) -> str:
        return ("fp16+" if self.fp16 else "") + ("tf32" if self.tf32 else "fp32")


def precision(options: dict[str, Any]) -> Precision:
    return Precision(fp16=bool(options.get("fp16")), tf32=bool(options.get("tf32")))


@dataclass(frozen=True)
class InputCast:
    """How one batch input reaches the engine: the torch dtype to cast to, and whether the values
    must be checked to fit (int64 data into an int32 input)."""

    name: str
    data_dtype: str
    torch_dtype: str
    check_range: bool = False

    @property
    def casts(self) -> bool:
        return self.data_dtype != self.torch_dtype


def input_cast(path: Any, name: str, data_dtype: np.dtype, engine_dtype: str) -> InputCast:
    """Refuse data TensorRT would misread; cast where the conversion is a precision choice the
    engine itself declares (float32 data into fp16/bf16 inputs) or exact (int32 into int64)."""
    data = np.dtype(data_dtype)
    if engine_dtype in PACKED or engine_dtype == "FP8" or engine_dtype not in TRT_DTYPES:
        raise ArtifactError(f"{path}: input {name!r} is {engine_dtype} in the engine; the tensorrt runner feeds "
                            f"float, integer and bool inputs only")
    torch_dtype, _, kind = TRT_DTYPES[engine_dtype]
    refuse = ArtifactError(f"{path}: input {name!r} is {data} in the evaluation data, but the engine declares it "
                           f"{engine_dtype}: TensorRT would read its bytes as {torch_dtype}")
    if data.kind == "f":
        if kind != "f":
            raise refuse
        return InputCast(name, data.name, torch_dtype)
    if data.kind in "iu":
        if kind not in "iu":
            raise refuse
        engine = np.dtype(torch_dtype)
        covers = (data.kind == engine.kind and engine.itemsize >= data.itemsize) or \
            (data.kind == "u" and engine.kind == "i" and engine.itemsize > data.itemsize)
        return InputCast(name, data.name, torch_dtype, check_range=not covers)
    if data.kind == "b" and kind == "b":
        return InputCast(name, data.name, torch_dtype)
    raise refuse


def check_range(path: Any, cast: InputCast, values: np.ndarray) -> None:
    """Integer values that would wrap in the engine's narrower type are refused, naming the input."""
    if not cast.check_range or values.size == 0:
        return
    limits = np.iinfo(np.dtype(cast.torch_dtype))
    low, high = values.min(), values.max()
    if low < limits.min or high > limits.max:
        raise ArtifactError(f"{path}: input {cast.name!r} holds values in [{low}, {high}], outside the engine's "
                            f"{cast.torch_dtype} range [{limits.min}, {limits.max}]")


def output_dtypes(path: Any, name: str, engine_dtype: str) -> tuple[str, str]:
    """(torch dtype of the output buffer, numpy dtype of what the runner returns). bf16 and fp8
    have no numpy dtype (trt.nptype raises on them): they come back widened to float32."""
    if engine_dtype not in TRT_DTYPES:
        raise ArtifactError(f"{path}: output {name!r} is {engine_dtype} in the engine, which no host buffer holds")
    torch_dtype, numpy_dtype, _ = TRT_DTYPES[engine_dtype]
    return torch_dtype, numpy_dtype or "float32"


def profile_shapes(path: Any, name: str, shape: Sequence[int], max_batch: int,
                   opt_batch: int | None = None) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None:
    """(min, opt, max) of the optimisation profile for one network input, or None when the input
    is static (a scalar, or a fixed batch: TensorRT wants min = opt = max there, i.e. no range).
    Only the first (batch) dimension may be dynamic."""
    shape = tuple(int(d) for d in shape)
    if not shape or all(d >= 0 for d in shape):
        return None
    if shape[0] >= 0 or any(d < 0 for d in shape[1:]):
        raise ArtifactError(f"{path}: input {name!r} has shape {list(shape)}: only the first (batch) dimension "
                            f"may be dynamic for the tensorrt runner")
    rest = shape[1:]
    opt = min(opt_batch or min(1024, max_batch), max_batch)
    return (1, *rest), (opt, *rest), (max_batch, *rest)


@dataclass(frozen=True)
class BatchLimit:
    """The batches an engine takes: any size up to `largest`, or exactly `fixed` rows."""

    largest: int
    fixed: int | None = None


def batch_limit(path: Any, input_shapes: dict[str, Sequence[int]], max_batch: int) -> BatchLimit:
    """From the network's input shapes: a fixed first dimension makes a fixed-batch engine."""
    fixed = {tuple(s)[0] for s in input_shapes.values() if len(s) and int(tuple(s)[0]) >= 0}
    dynamic = [n for n, s in input_shapes.items() if len(s) and int(tuple(s)[0]) < 0]
    if fixed and dynamic or len(fixed) > 1:
        raise ArtifactError(f"{path}: inputs disagree on the batch dimension ({dict(input_shapes)})")
    if fixed:
        (size,) = fixed
        return BatchLimit(largest=int(size), fixed=int(size))
    return BatchLimit(largest=max_batch)


def padding(path: Any, rows: int, limit: BatchLimit) -> int:
    """Rows to pad this batch with (a fixed-batch engine's last, partial batch); refuses a batch
    the engine was not built for instead of letting TensorRT fail or read past the buffer."""
    if rows > limit.largest:
        what = (f"a fixed batch of {limit.fixed}" if limit.fixed is not None
                else f"max_batch_size {limit.largest} (its optimisation profile's largest batch)")
        raise ArtifactError(f"{path}: a batch of {rows} rows, but the engine takes {what}: lower the batch size or "
                            f"raise the tensorrt runner's max_batch_size")
    return (limit.fixed - rows) if limit.fixed is not None else 0


def select_output(path: Any, graph_outputs: Sequence[str], engine_outputs: Sequence[str]) -> str:
    """The engine tensor that is the ONNX graph's first output. Engine I/O order is TensorRT's,
    not the graph's: by name, both backends compare the same tensor."""
    if not graph_outputs:
        raise ArtifactError(f"{path}: the ONNX graph declares no outputs")
    if graph_outputs[0] not in engine_outputs:
        raise ArtifactError(f"{path}: the graph's first output {graph_outputs[0]!r} is not an engine output "
                            f"(engine outputs: {list(engine_outputs)})")
    return graph_outputs[0]
