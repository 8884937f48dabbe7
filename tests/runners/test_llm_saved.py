"""Candidates of the real LLM saved the way users make them (examples/smollm2_saved.py): a folder
saved by transformers with a torchao quantization config, and a Q8_0 GGUF file. Each runs as a
plain artifact through run_job; the provenance carries the quantization record the artifact
itself states and every file's hash. The record is also read from configs other quantizers
write (fixture config.json files)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from examples import smollm2_saved
from runners.backends.base import ArtifactError
from runners.backends.lm_quantization import GGUF_NOTE, fill_declared, read_quantization
from runners.contracts import ArtifactSpec, CheckSpec, JobSpec, SuiteSpec
from runners.harness import run_job

CHECKS = (CheckSpec("max_format_drop", 0.2), CheckSpec("max_exact_match_drop", 0.2),
          CheckSpec("min_step_top1_agreement", 0.95), CheckSpec("max_mean_step_kl", 0.02))


def job(folder: Path, candidate: Path, job_id: str, quantization: dict) -> JobSpec:
    # The suite of tests/runners/test_llm.py: the baseline's outputs are reused across both files.
    suite = SuiteSpec("llm-chat", str(folder / "short.jsonl"), "generation", ("category", "intent"), CHECKS,
                      min_slice_size=2, generation={"max_new_tokens": 32, "stop": None,
                                                    "curve_positions": [8, 16, 32]})
    return JobSpec(job_id, "local", "smollm2", candidate.name, ArtifactSpec(str(folder / "smollm2-fp32"), "transformers"),
                   ArtifactSpec(str(candidate), "transformers", quantization), suite, batch_size=1024,
                   runner_options={"transformers": {"batch_size": 8}})


def check(result, name: str):
    return next(c for c in result.checks if c.check == name and c.dimension == "all")


@pytest.fixture(scope="module")
def torchao_result(smollm2: Path):
    pytest.importorskip("transformers")
    pytest.importorskip("torchao")
    return run_job(job(smollm2, smollm2 / smollm2_saved.TORCHAO_FOLDER, "job-saved-torchao", {"tool": "torchao"}))


def test_a_saved_torchao_folder_runs_as_an_artifact_with_its_record_read(torchao_result) -> None:
    result = torchao_result
    assert result.status == "finished", result.error
    assert result.verdict == "pass"
    # Quantized, not the baseline reloaded: the teacher-forced distributions differ, a little.
    kl = check(result, "max_mean_step_kl")
    assert 0.0 < kl.candidate < 0.02 and check(result, "min_step_top1_agreement").candidate > 0.95
    quantization = result.provenance["quantization"]
    read = quantization["from_artifact"]
    assert read["source"] == "config.json quantization_config" and read["library"] == "torchao"
    assert read["method"] == "torchao Int8WeightOnlyConfig" and read["granularity"] == "PerRow"
    assert read["weight_bits"] == 8 and read["activation_bits"] is None
    assert read["saved_by"].startswith("transformers 5.")
    # What the config left out is filled from the artifact; what it declared is kept.
    assert quantization["tool"] == "torchao" and quantization["weight_bits"] == 8
    assert quantization["method"] == "torchao Int8WeightOnlyConfig"


def test_the_saved_folder_has_every_file_hashed(torchao_result) -> None:
    candidate, baseline = torchao_result.provenance["candidate"], torchao_result.provenance["baseline"]
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "chat_template.jinja", "source.json"} <= set(candidate["files"])
    assert all(len(digest) == 64 for digest in candidate["files"].values())
    assert candidate["files"]["model.safetensors"] != baseline["files"]["model.safetensors"]
    assert candidate["files"]["tokenizer.json"] == baseline["files"]["tokenizer.json"]
    assert candidate["sha256"] != baseline["sha256"]


def test_a_q8_0_gguf_file_runs_through_transformers_dequantization(smollm2: Path) -> None:
    pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    gguf_file = smollm2 / smollm2_saved.GGUF_FOLDER / smollm2_saved.GGUF_FILE
    result = run_job(job(smollm2, gguf_file, "job-saved-gguf", {"method": "gguf-requantized", "weight_bits": 8}))
    assert result.status == "finished", result.error
    read = result.provenance["quantization"]["from_artifact"]
    assert read["method"] == "gguf Q8_0" and read["weight_bits"] == 8 and read["file_type"] == "MOSTLY_Q8_0"
    assert read["tensor_types"] == {"F32": 61, "Q8_0": 211} and read["note"] == GGUF_NOTE
    assert result.provenance["quantization"]["method"] == "gguf-requantized"  # the declared name is kept
    assert len(result.provenance["candidate"]["sha256"]) == 64
    # Q8_0 of these weights stays close to them, and not equal.
    assert 0.0 < check(result, "max_mean_step_kl").candidate < 0.02
    assert check(result, "min_step_top1_agreement").candidate > 0.9


def test_a_declared_bit_width_the_artifact_contradicts_is_bad_input(smollm2: Path) -> None:
    spec = job(smollm2, smollm2 / smollm2_saved.TORCHAO_FOLDER, "job-saved-wrong-bits", {"weight_bits": 4})
    result = run_job(spec)
    assert result.status == "error" and result.error_kind == "input"
    assert "models.smollm2.candidates.smollm2-torchao-int8.quantization.weight_bits is 4" in result.error
    assert "says 8 (torchao Int8WeightOnlyConfig)" in result.error


@pytest.mark.parametrize("config, method, bits", [
    ({"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}, "bitsandbytes", 4),
    ({"quant_method": "gptq", "bits": 4, "group_size": 128}, "gptq", 4),
    ({"quant_method": "quanto", "weights": "int8", "activations": None}, "quanto", 8),
    ({"quant_method": "torchao", "quant_type": {"default": {
        "_type": "IntxWeightOnlyConfig", "_version": 2,
        "_data": {"weight_dtype": {"_type": "torch.dtype", "_data": "int4"},
                  "granularity": {"_type": "PerGroup", "_version": 1, "_data": {"group_size": 32}}}}}},
     "torchao IntxWeightOnlyConfig", 4),
])
def test_quantization_configs_of_other_tools_are_read(tmp_path: Path, config: dict, method: str, bits: int) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": config, "transformers_version": "5.0.0"}))
    read = read_quantization(tmp_path)
    assert read["method"] == method and read["weight_bits"] == bits and read["saved_by"] == "transformers 5.0.0"
    if method.endswith("IntxWeightOnlyConfig"):
        assert read["granularity"] == "PerGroup(32)"


def test_a_float_folder_states_no_quantization_and_the_declared_record_stands(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert read_quantization(tmp_path) is None
    assert fill_declared({"method": "recipe", "weight_bits": 8}, None, "x") == {"method": "recipe", "weight_bits": 8}


def test_an_unreadable_config_is_bad_input_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="config.json: not readable JSON"):
        read_quantization(tmp_path)
