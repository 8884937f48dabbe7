"""The planner: impact map, job keys, dedupe, and which events plan what."""

from __future__ import annotations

from pathlib import Path

import pytest

from scheduler.config import load_config
from scheduler.events import ConfigChanged, Manual, Scheduled, StackChanged
from scheduler.impact import affects
from scheduler.planning import Planner, SelectionError

CONFIG = """version: 1
impact: {{cpu_microcode: [torch]}}
targets:
  cpu:
    runners: [onnxruntime, torch]
    probes: {{fw: {{file: /nonexistent, affects: [torch]}}}}
  gpu:
    where: {{resource: "target:gpu"}}
    runners: [onnxruntime, torch]
    options:
      onnxruntime: {{providers: [CUDAExecutionProvider, CPUExecutionProvider]}}
models:
  m:
    baseline: {{path: {d}/base.onnx, runner: onnxruntime}}
    suites: [s]
    candidates:
      ort: {{path: {d}/ort.onnx, runner: onnxruntime, quantization: {{method: dynamic, weight_bits: 8}}}}
      pt: {{path: {d}/pt.ts, runner: torch, quantization: {{method: dynamic, weight_bits: 8}}}}
suites:
  s: {{data: {d}/eval.npz, task: classification, slices: [k], checks: {{max_drop: 0.02}}}}
"""

STACK = {"kernel": "6.1", "onnxruntime": "1.20", "torch": "2.5", "nvidia_driver": "550", "gpu0": "H100 cc9.0"}


def two_target_config(tmp_path: Path):
    """CONFIG with its (tiny) artifact files written into tmp_path, loaded."""
    for name in ("base.onnx", "ort.onnx", "pt.ts", "eval.npz"):
        (tmp_path / name).write_bytes(name.encode())
    path = tmp_path / "targets.yaml"
    path.write_text(CONFIG.format(d=tmp_path))
    return load_config(path)


@pytest.fixture
def setup(tmp_path: Path):
    loaded = two_target_config(tmp_path)
    fingerprints = {t: {"components": dict(STACK)} for t in ("cpu", "gpu")}
    return tmp_path, loaded, fingerprints


def nothing_known(keys: list[str]) -> set[str]:
    return set()


def pairs(plan) -> set[tuple[str, str]]:
    return {(j.target, j.candidate) for j in plan.jobs}


def test_impact_map(setup) -> None:
    _, loaded, _ = setup
    cfg = loaded.config
    assert affects(cfg, "cpu", "kernel", "onnxruntime") and affects(cfg, "cpu", "kernel", "torch")
    assert affects(cfg, "cpu", "onnxruntime", "onnxruntime") and not affects(cfg, "cpu", "onnxruntime", "torch")
    # GPU components touch only what runs on the GPU: onnxruntime with CUDA on "gpu", nothing on "cpu".
    assert affects(cfg, "gpu", "nvidia_driver", "onnxruntime") and not affects(cfg, "gpu", "nvidia_driver", "torch")
    assert not affects(cfg, "cpu", "gpu0_vbios", "onnxruntime")
    # Overrides: the config's impact map and a custom probe's own `affects`.
    assert affects(cfg, "cpu", "cpu_microcode", "torch") and not affects(cfg, "cpu", "cpu_microcode", "onnxruntime")
    assert affects(cfg, "cpu", "fw", "torch") and not affects(cfg, "cpu", "fw", "onnxruntime")
    assert affects(cfg, "cpu", "something_new", "onnxruntime")  # unknown: assume the worst


@pytest.mark.parametrize("target,diff,expected", [
    ("cpu", {"onnxruntime": ("1.20", "1.21")}, {("cpu", "ort"), ("cpu", "pt")}),  # pt's baseline is onnxruntime
    ("cpu", {"torch": ("2.5", "2.6")}, {("cpu", "pt")}),
    ("gpu", {"nvidia_driver": ("550", "560")}, {("gpu", "ort"), ("gpu", "pt")}),
    ("cpu", {"nvidia_driver": ("550", "560")}, set()),
    ("cpu", {"kernel": ("6.1", "6.2")}, {("cpu", "ort"), ("cpu", "pt")}),
])
def test_stack_change_plans_only_affected_jobs(setup, target, diff, expected) -> None:
    _, loaded, fingerprints = setup
    plan = Planner(loaded).plan(StackChanged(target, diff), fingerprints, nothing_known)
    assert pairs(plan) == expected
    assert all(j.trigger == "stack-change" for j in plan.jobs)


def test_dedupe_on_job_keys(setup) -> None:
    _, loaded, fingerprints = setup
    planner = Planner(loaded)
    first = planner.plan(Scheduled(due=0), fingerprints, nothing_known)
    assert len(first.jobs) == 4 and len({j.job_key for j in first.jobs}) == 4
    done = {j.job_key for j in first.jobs}
    again = planner.plan(Manual(), fingerprints, lambda keys: done & set(keys))
    assert again.jobs == [] and again.skipped_known == 4
    # Forced: finished work is planned again, work still queued or running is not.
    running = {j.job_key for j in first.jobs if (j.target, j.candidate) == ("cpu", "pt")}
    forced = planner.plan(Manual(target="cpu", force=True), fingerprints, lambda keys: running & set(keys))
    assert pairs(forced) == {("cpu", "ort")} and forced.skipped_known == 1


def test_job_keys_follow_what_the_result_depends_on(setup) -> None:
    tmp, loaded, fingerprints = setup
    keys = {(j.target, j.candidate): j.job_key for j in Planner(loaded).jobs("manual", fingerprints)}
    # A torch upgrade on cpu changes only the keys of jobs that run torch there.
    changed = {**fingerprints, "cpu": {"components": {**STACK, "torch": "2.6"}}}
    after = {(j.target, j.candidate): j.job_key for j in Planner(loaded).jobs("manual", changed)}
    assert [k for k in keys if keys[k] != after[k]] == [("cpu", "pt")]
    # A replaced candidate artifact changes its keys on every target, and only its.
    (tmp / "ort.onnx").write_bytes(b"a rebuilt model")
    rebuilt = {(j.target, j.candidate): j.job_key for j in Planner(loaded).jobs("manual", fingerprints)}
    assert sorted(k for k in keys if keys[k] != rebuilt[k]) == [("cpu", "ort"), ("gpu", "ort")]


def test_config_change_plans_only_new_work(setup) -> None:
    tmp, loaded, fingerprints = setup
    done = {j.job_key for j in Planner(loaded).jobs("manual", fingerprints)}
    path = tmp / "targets.yaml"
    path.write_text(path.read_text().replace("max_drop: 0.02", "max_drop: 0.01"))
    plan = Planner(load_config(path)).plan(ConfigChanged(), fingerprints, lambda keys: done & set(keys))
    assert len(plan.jobs) == 4  # a tolerance changed: every job of that suite is new work


def test_unknown_selection(setup) -> None:
    _, loaded, _ = setup
    with pytest.raises(SelectionError, match="--target 'tpu'"):
        Planner(loaded).jobs("manual", target="tpu")


def test_refresh_notices_a_replaced_artifact(setup) -> None:
    tmp, loaded, _ = setup
    planner = Planner(loaded)
    planner.work()
    assert planner.refresh() is False
    (tmp / "pt.ts").write_bytes(b"a new build")
    assert planner.refresh() is True
    assert planner.refresh() is False


ENDPOINT_CONFIG = """version: 1
targets:
  serving:
    runners: [transformers, openai]
    probes: {{server: {{file: {d}/server-version, affects: [openai]}}}}
models:
  llm:
    baseline: {{path: {d}/llm, runner: transformers}}
    suites: [chat]
    candidates:
      served: {{path: {d}/served.yaml, runner: openai, quantization: {{method: served-int8, weight_bits: 8}}}}
suites:
  chat: {{data: {d}/prompts.jsonl, task: generation, slices: [category], checks: {{max_format_drop: 0.1}},
          generation: {{max_new_tokens: 16, stop: null}}}}
"""


def test_an_endpoint_candidate_is_keyed_by_its_descriptor_and_replanned_by_a_probe_of_the_server(
        tmp_path: Path) -> None:
    (tmp_path / "llm").mkdir()
    (tmp_path / "llm" / "config.json").write_text("{}")
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "hi", "category": "a"}\n')
    (tmp_path / "server-version").write_text("vllm 0.9\n")
    descriptor = tmp_path / "served.yaml"
    descriptor.write_text("base_url: http://127.0.0.1:8000/v1\nmodel: llm-int8\n")
    path = tmp_path / "targets.yaml"
    path.write_text(ENDPOINT_CONFIG.format(d=tmp_path))
    loaded = load_config(path)
    cfg = loaded.config
    # The target's own stack does not move what the server computes; a probe of the server does.
    assert not affects(cfg, "serving", "kernel", "openai") and affects(cfg, "serving", "kernel", "transformers")
    assert affects(cfg, "serving", "server", "openai")
    fingerprints = {"serving": {"components": {"kernel": "6.1", "transformers": "5.23", "server": "vllm 0.9"}}}
    plan = Planner(loaded).plan(StackChanged("serving", {"server": ("vllm 0.9", "vllm 0.10")}), fingerprints,
                                nothing_known)
    assert pairs(plan) == {("serving", "served")}
    key = Planner(loaded).jobs("manual", fingerprints)[0].job_key
    descriptor.write_text("base_url: http://127.0.0.1:8000/v1\nmodel: llm-int8\ntop_logprobs: 20\n")
    assert Planner(loaded).jobs("manual", fingerprints)[0].job_key != key  # the descriptor is in the key


def test_an_endpoint_model_with_a_classification_suite_is_refused_with_the_field(tmp_path: Path) -> None:
    from scheduler.config import ConfigError

    (tmp_path / "llm").mkdir()
    (tmp_path / "prompts.jsonl").write_text("")
    (tmp_path / "served.yaml").write_text("base_url: http://127.0.0.1:8000/v1\nmodel: m\n")
    (tmp_path / "server-version").write_text("1\n")
    text = ENDPOINT_CONFIG.format(d=tmp_path).replace("task: generation", "task: classification").replace(
        "checks: {max_format_drop: 0.1},\n          generation: {max_new_tokens: 16, stop: null}", "checks: {max_drop: 0.1}")
    path = tmp_path / "targets.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="openai endpoint takes generation suites only"):
        load_config(path)
