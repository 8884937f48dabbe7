"""What a transformers artifact says about its own quantization, for the provenance.

A model folder saved with a quantization config (torchao, bitsandbytes, GPTQ, AWQ, quanto, ...)
carries it in config.json's `quantization_config`; a GGUF file names a GGML type per tensor.
The record read here fills what the job's declared quantization leaves out, and a declared bit
width the artifact contradicts is bad input: the ledger must not record a model as 4-bit that
is 8-bit. Reading needs no torch (the GGUF header through the `gguf` package, imported lazily).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

from runners.backends.base import ArtifactError

GGUF_NOTE = "evaluated through transformers' dequantization to float, not llama.cpp kernels"

# torchao config class -> (weight bits, activation bits or None for float activations); the
# Intx configs name their weight dtype in the config itself.
_TORCHAO_BITS: dict[str, tuple[int | None, int | None]] = {
    "Int8WeightOnlyConfig": (8, None), "Int4WeightOnlyConfig": (4, None), "Float8WeightOnlyConfig": (8, None),
    "Int8DynamicActivationInt8WeightConfig": (8, 8), "Int8StaticActivationInt8WeightConfig": (8, 8),
    "Float8DynamicActivationFloat8WeightConfig": (8, 8), "Float8StaticActivationFloat8WeightConfig": (8, 8),
    "Float8DynamicActivationInt4WeightConfig": (4, 8), "IntxWeightOnlyConfig": (None, None),
    "Int8DynamicActivationIntxWeightConfig": (None, 8),
}


def read_quantization(path: str | Path) -> dict[str, Any] | None:
    """The artifact's own quantization record, or None where it states none (a float folder)."""
    path = Path(path)
    if path.is_dir() and (path / "config.json").is_file():
        return _from_config(path / "config.json")
    if path.is_file() and path.suffix == ".gguf":
        return _from_gguf(path)
    return None


def fill_declared(declared: dict[str, Any], read: dict[str, Any] | None, where: str) -> dict[str, Any]:
    """The declared record with what the artifact says added (`from_artifact`, and the bit widths
    it leaves out); `where` names the declaration for the error when they disagree."""
    out = dict(declared)
    if not read:
        return out
    for key in ("weight_bits", "activation_bits"):
        said = read.get(key)
        if said is None:
            continue
        if key in declared and declared[key] is not None and declared[key] != said:
            raise ArtifactError(f"{where}.{key} is {declared[key]}, but the artifact ({read['source']}) says "
                                f"{said} ({read['method']})")
        out.setdefault(key, said)
    out.setdefault("method", read["method"])
    out["from_artifact"] = read
    return out


# -- model folders --------------------------------------------------------------------------------
def _from_config(config_path: Path) -> dict[str, Any] | None:
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{config_path}: not readable JSON ({exc})") from exc
    quantization = config.get("quantization_config")
    if not isinstance(quantization, dict):
        return None
    library = str(quantization.get("quant_method", "unknown"))
    record: dict[str, Any] = {"source": f"{config_path.name} quantization_config", "library": library,
                              "method": library, "weight_bits": None, "activation_bits": None,
                              "saved_by": f"transformers {config.get('transformers_version', 'unknown')}"}
    if library == "torchao":
        record.update(_torchao(quantization))
    else:
        record["weight_bits"] = _generic_bits(quantization)
    if quantization.get("version") is not None:  # some configs (compressed-tensors, AWQ) name their library's
        record["library_version"] = str(quantization["version"])
    if quantization.get("modules_to_not_convert"):
        record["not_quantized"] = list(quantization["modules_to_not_convert"])
    return record


def _torchao(quantization: dict[str, Any]) -> dict[str, Any]:
    config = ((quantization.get("quant_type") or {}).get("default") or {})
    name = str(config.get("_type", "unknown"))
    data = config.get("_data") or {}
    weight_bits, activation_bits = _TORCHAO_BITS.get(name, (None, None))
    if weight_bits is None:
        weight_bits = _dtype_bits(data.get("weight_dtype"))
    out: dict[str, Any] = {"method": f"torchao {name}", "weight_bits": weight_bits,
                           "activation_bits": activation_bits, "config": config}
    granularity = data.get("granularity")
    if isinstance(granularity, dict) and granularity.get("_type"):
        size = (granularity.get("_data") or {}).get("group_size")
        out["granularity"] = f"{granularity['_type']}({size})" if size else granularity["_type"]
    return out


def _dtype_bits(dtype: Any) -> int | None:
    text = dtype.get("_data") if isinstance(dtype, dict) else dtype
    found = re.search(r"(\d+)", str(text or ""))
    return int(found.group(1)) if found else None


def _generic_bits(quantization: dict[str, Any]) -> int | None:
    if isinstance(quantization.get("bits"), int):  # GPTQ, AWQ, HQQ
        return quantization["bits"]
    if quantization.get("load_in_4bit"):  # bitsandbytes
        return 4
    if quantization.get("load_in_8bit"):
        return 8
    return _dtype_bits(quantization.get("weights"))  # quanto: "int8", "int4", "float8"


# -- GGUF files -----------------------------------------------------------------------------------
def _from_gguf(path: Path) -> dict[str, Any]:
    try:
        import gguf
    except ImportError as exc:
        raise ArtifactError(f"{path}: reading a GGUF file needs the gguf package ({exc})") from exc
    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, OSError) as exc:
        raise ArtifactError(f"{path}: not a readable GGUF file ({exc})") from exc
    types = Counter(t.tensor_type.name for t in reader.tensors)
    elements = Counter()
    for tensor in reader.tensors:
        elements[tensor.tensor_type.name] += int(tensor.n_elements)
    # The weight width is the type holding most of the weights (norms stay F32 in every file type).
    main = elements.most_common(1)[0][0] if elements else "unknown"
    file_type = _field(reader, "general.file_type")
    try:
        file_type_name = gguf.LlamaFileType(int(file_type)).name if file_type is not None else None
    except ValueError:
        file_type_name = str(file_type)
    return {"source": "GGUF tensor types", "library": "gguf", "method": f"gguf {main}",
            "weight_bits": _gguf_bits(main), "activation_bits": None, "file_type": file_type_name,
            "tensor_types": dict(sorted(types.items())),
            "quantization_version": _field(reader, "general.quantization_version"), "note": GGUF_NOTE}


def _field(reader: Any, name: str) -> Any:
    field = reader.fields.get(name)
    return field.contents() if field is not None else None


def _gguf_bits(type_name: str) -> int | None:
    if type_name in ("F32", "F16", "BF16", "F64"):
        return int(type_name.lstrip("BF"))
    found = re.match(r"I?Q(\d)", type_name)  # Q8_0, Q4_K, IQ4_XS, ...
    return int(found.group(1)) if found else None
