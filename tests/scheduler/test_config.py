"""targets.yaml validation: every malformed config gets a message naming file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from scheduler.config import ConfigError, load_config

BASE = """\
version: 1
ledger: sqlite:///ledger.db
targets:
  cpu:
    runners: [onnxruntime]
    options:
      onnxruntime: {providers: [CPUExecutionProvider]}
models:
  m:
    baseline: {path: base.onnx, runner: onnxruntime}
    suites: [s]
    candidates:
      q8:
        path: q8.onnx
        runner: onnxruntime
        quantization: {method: dynamic, weight_bits: 8}
suites:
  s:
    data: eval.npz
    task: classification
    slices: [digit]
    checks: {max_drop: 0.02}
"""


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    for name in ("base.onnx", "q8.onnx", "eval.npz"):
        (tmp_path / name).write_bytes(b"x")
    return tmp_path


def write(workdir: Path, text: str) -> Path:
    path = workdir / "targets.yaml"
    path.write_text(text)
    return path


def errors_for(workdir: Path, text: str) -> list[str]:
    path = write(workdir, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.errors


def test_base_config_is_valid(workdir: Path) -> None:
    loaded = load_config(write(workdir, BASE))
    assert set(loaded.config.targets) == {"cpu"}
    assert loaded.resolve("q8.onnx") == str(workdir / "q8.onnx")
    assert len(loaded.hash) == 16


# (case id, old text, new text, expected line, expected fragments of that error)
CASES = [
    ("wrong-version", "version: 1", "version: 2", 1, ["version:", "1"]),
    ("missing-version", "version: 1\n", "", 1, ["version: required"]),
    ("unknown-top-key", "suites:\n  s:", "colour: blue\nsuites:\n  s:", 17, ["colour: unknown key 'colour'"]),
    ("unknown-target-key", "    runners: [onnxruntime]\n", "    runners: [onnxruntime]\n    gpu: true\n", 6,
     ["targets.cpu.gpu: unknown key 'gpu'"]),
    ("unknown-runner", "runners: [onnxruntime]", "runners: [onnxruntime, tflite]", 5,
     ["targets.cpu.runners[1]: unknown runner 'tflite'"]),
    ("no-runners", "runners: [onnxruntime]", "runners: []", 5, ["targets.cpu.runners", "at least 1"]),
    ("bad-provider", "[CPUExecutionProvider]", "[CUDAProvider]", 7,
     ["targets.cpu.options.onnxruntime.providers[0]"]),
    ("no-baseline", "    baseline: {path: base.onnx, runner: onnxruntime}\n", "", 9,
     ["models.m.baseline: required", "full-precision baseline"]),
    ("bad-candidate-runner", "        runner: onnxruntime\n", "        runner: tensorflow\n", 15,
     ["models.m.candidates.q8.runner: unknown runner 'tensorflow'", "package.module:Class"]),
    ("bad-custom-probe", "    runners: [onnxruntime]\n",
     "    runners: [onnxruntime]\n    probes: {fw: {file: /x, command: [cat, /x]}}\n", 6,
     ["targets.cpu.probes.fw", "exactly one of 'file' or 'command'"]),
    ("bad-listen", "ledger: sqlite:///ledger.db\n", "ledger: sqlite:///ledger.db\ndaemon: {listen: nowhere}\n", 3,
     ["daemon.listen"]),
    ("zero-bits", "weight_bits: 8", "weight_bits: 0", 16,
     ["models.m.candidates.q8.quantization.weight_bits", "greater than or equal to 1"]),
    ("no-method", "{method: dynamic, weight_bits: 8}", "{weight_bits: 8}", 16,
     ["models.m.candidates.q8.quantization.method: required"]),
    ("no-quantization-record", "        quantization: {method: dynamic, weight_bits: 8}\n", "", 13,
     ["models.m.candidates.q8.quantization: required"]),
    ("unknown-suite-ref", "suites: [s]", "suites: [s, t]", 11, ["models.m.suites[1]: unknown suite 't'"]),
    ("unknown-target-ref", "    suites: [s]\n", "    suites: [s]\n    targets: [gpu]\n", 12,
     ["models.m.targets[0]: unknown target 'gpu'"]),
    ("no-target-offers-runner", "        runner: onnxruntime\n", "        runner: torch\n", 9,
     ["models.m: no target offers all of its runners"]),
    ("unknown-check", "{max_drop: 0.02}", "{max_drop: 0.02, max_wobble: 1}", 22, ["suites.s.checks.max_wobble"]),
    ("tolerance-out-of-range", "{max_drop: 0.02}", "{max_drop: 1.5}", 22,
     ["suites.s.checks", "max_drop: tolerance 1.5 must be between 0 and 1"]),
    ("negative-kl", "{max_drop: 0.02}", "{max_mean_kl: -0.1}", 22, ["must be non-negative"]),
    ("unknown-task", "task: classification", "task: regression", 20, ["suites.s.task"]),
    ("no-slices", "slices: [digit]", "slices: []", 21, ["suites.s.slices"]),
    ("zero-min-slice", "    slices: [digit]\n", "    slices: [digit]\n    min_slice_size: 0\n", 22,
     ["suites.s.min_slice_size"]),
    ("confidence-above-one", "    slices: [digit]\n", "    slices: [digit]\n    confidence: 1.5\n", 22,
     ["suites.s.confidence"]),
    ("duplicate-target", "models:\n", "  cpu:\n    runners: [torch]\nmodels:\n", 8, ["targets.cpu: duplicate key"]),
    ("invalid-yaml", "slices: [digit]", "slices: [digit", 22, ["invalid YAML"]),
    ("missing-data-file", "data: eval.npz", "data: nope.npz", 19, ["suites.s.data: file not found", "nope.npz"]),
    ("missing-artifact", "path: q8.onnx", "path: missing.onnx", 14,
     ["models.m.candidates.q8.path: file not found", "missing.onnx"]),
    ("bad-cron", "ledger: sqlite:///ledger.db\n", "ledger: sqlite:///ledger.db\nschedule: {nightly: every day}\n", 3,
     ["schedule.nightly: not a valid crontab"]),
    ("placement-both", "    runners: [onnxruntime]\n",
     "    runners: [onnxruntime]\n    where: {resource: 'target:a', labels: {a: b}}\n", 6,
     ["targets.cpu.where", "exactly one of 'resource' or 'labels'"]),
    ("bad-torch-device", "      onnxruntime: {providers: [CPUExecutionProvider]}\n",
     "      onnxruntime: {providers: [CPUExecutionProvider]}\n      torch: {device: tpu}\n", 8,
     ["targets.cpu.options.torch.device"]),
    ("negative-batch", "ledger: sqlite:///ledger.db\n", "ledger: sqlite:///ledger.db\nbatch_size: -1\n", 3,
     ["batch_size", "greater than or equal to 1"]),
    ("bad-target-name", "  cpu:\n    runners", "  'cpu node!':\n    runners", 3, ["targets: invalid name"]),
    ("wrong-type-checks", "checks: {max_drop: 0.02}", "checks: [max_drop]", 22, ["suites.s.checks"]),
    ("within-tolerance-without-rule", "{max_drop: 0.02}", "{min_within_tolerance: 1.0}", 18,
     ["suites.s", "min_within_tolerance needs a 'tolerance' section"]),
    ("repeated-batch-size", "    slices: [digit]\n", "    slices: [digit]\n    batch_sizes: [64, 64]\n", 18,
     ["suites.s", "batch_sizes [64, 64] repeats a size"]),
    ("zero-batch-size", "    slices: [digit]\n", "    slices: [digit]\n    batch_sizes: [0]\n", 22,
     ["suites.s.batch_sizes[0]", "greater than or equal to 1"]),
    ("generation-without-settings", "task: classification", "task: generation", 18,
     ["suites.s", "task 'generation' needs a 'generation' section"]),
    ("check-of-another-task", "{max_drop: 0.02}", "{max_drop: 0.02, min_token_agreement: 0.9}", 18,
     ["suites.s", "checks ['min_token_agreement'] do not apply to task 'classification'"]),
    ("generation-on-classification", "    slices: [digit]\n",
     "    slices: [digit]\n    generation: {tokenizer: v.json, context: 8, max_new_tokens: 16}\n", 18,
     ["suites.s", "only applies to task 'generation'"]),
    ("generation-bad-settings", "task: classification\n    slices: [digit]\n    checks: {max_drop: 0.02}",
     "task: generation\n    slices: [digit]\n    checks: {min_token_agreement: 0.9}\n"
     "    generation: {tokenizer: v.json, context: 0, max_new_tokens: 16, refusal_patterns: ['(']}", 23,
     ["suites.s.generation.context", "greater than or equal to 1"]),
    ("generation-missing-tokenizer", "task: classification\n    slices: [digit]\n    checks: {max_drop: 0.02}",
     "task: generation\n    slices: [digit]\n    checks: {min_token_agreement: 0.9}\n"
     "    generation: {tokenizer: nowhere.json, context: 8, max_new_tokens: 16}", 23,
     ["suites.s.generation.tokenizer: file not found", "nowhere.json"]),
]


@pytest.mark.parametrize("old,new,line,fragments", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_config_names_file_line_and_field(workdir: Path, old: str, new: str, line: int,
                                                    fragments: list[str]) -> None:
    assert old in BASE
    errors = errors_for(workdir, BASE.replace(old, new, 1))
    source = str(workdir / "targets.yaml")
    matching = [e for e in errors if all(f in e for f in fragments)]
    assert matching, f"no error contains {fragments}: {errors}"
    assert matching[0].startswith(f"{source}:{line}: "), matching[0]


def test_every_error_is_reported_at_once(workdir: Path) -> None:
    text = BASE.replace("version: 1", "version: 3").replace("task: classification", "task: nope") \
        .replace("weight_bits: 8", "weight_bits: 99")
    errors = errors_for(workdir, text)
    assert len(errors) == 3
    assert [e.split(":")[1] for e in errors] == ["1", "16", "20"]


def test_not_a_mapping(workdir: Path) -> None:
    errors = errors_for(workdir, "- a\n- b\n")
    assert errors[0].endswith("expected a mapping with 'version: 1', targets, models, suites")


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "absent.yaml")
    assert "absent.yaml: cannot read config" in info.value.errors[0]


def test_repository_default_config_is_valid_schema() -> None:
    from tests.conftest import REPO

    loaded = load_config(REPO / "targets.yaml", check_files=False)
    assert "digits-mlp" in loaded.config.models
    assert loaded.config.models["digits-mlp"].candidates["ort-w8a3"].quantization.weight_bits == 8
