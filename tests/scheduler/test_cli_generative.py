"""validate on the generative demo model through Ray: the human drift table, the JSON drift
curves, and --plot writing one SVG per generative run."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from scheduler.cli import main


def charlm_config(demo: Path, ledger: Path) -> str:
    return f"""version: 1
ledger: sqlite:///{ledger}
ray: {{job_timeout_seconds: 300}}
targets:
  local-cpu:
    runners: [onnxruntime]
models:
  charlm:
    baseline: {{path: {demo / 'charlm-fp32.onnx'}, runner: onnxruntime}}
    suites: [chat]
    candidates:
      ort-int8-dynamic:
        path: {demo / 'charlm-int8-dynamic.onnx'}
        runner: onnxruntime
        quantization: {{method: dynamic, weight_bits: 8, activation_bits: 8}}
      ort-w5:
        path: {demo / 'charlm-w5.onnx'}
        runner: onnxruntime
        quantization: {{method: weight-only-per-tensor, weight_bits: 5}}
suites:
  chat:
    data: {demo / 'charlm-prompts.jsonl'}
    task: generation
    slices: [category]
    min_slice_size: 20
    generation: {{tokenizer: {demo / 'charlm-vocab.json'}, context: 32, max_new_tokens: 384,
                 curve_positions: [32, 128, 384]}}
    checks: {{max_exact_match_drop: 0.05, max_format_drop: 0.05, min_token_agreement: 0.6}}
"""


@pytest.mark.ray
def test_validate_reports_and_plots_the_drift(tmp_path: Path, demo_dir: Path, ray_local, capsys) -> None:
    config = tmp_path / "targets.yaml"
    config.write_text(charlm_config(demo_dir, tmp_path / "ledger.db"))
    plots = tmp_path / "plots"
    code = main(["validate", "-c", str(config), "--plot", str(plots)])
    out, err = capsys.readouterr()
    assert code == 1
    assert "charlm / ort-w5 on local-cpu (suite chat): FAIL" in out
    assert "FAILED min_token_agreement: category=long: token agreement" in out
    assert "charlm / ort-int8-dynamic on local-cpu (suite chat): PASS" in out
    table = out[out.index("drift from the baseline"):]
    header = table.splitlines()[1].split()
    assert header[:4] == ["slice", "@32", "@128", "@384"]

    svgs = sorted(plots.glob("*.svg"))
    assert [p.name for p in svgs] == ["charlm--ort-int8-dynamic--local-cpu--chat.drift.svg",
                                      "charlm--ort-w5--local-cpu--chat.drift.svg"]
    root = ET.parse(svgs[1]).getroot()
    lines = root.findall("{http://www.w3.org/2000/svg}polyline")
    labels = [line.find("{http://www.w3.org/2000/svg}title").text for line in lines]
    assert labels == ["all", "category=ask", "category=json", "category=long", "category=short"]
    long_points = [tuple(map(float, p.split(","))) for p in lines[3].get("points").split()]
    assert len(long_points) == 4 and long_points[-1][1] > long_points[0][1]  # lower on the page: agreement fell

    code = main(["validate", "-c", str(config), "--json"])
    doc = json.loads(capsys.readouterr().out)
    run = next(r for r in doc["runs"] if r["candidate"] == "ort-w5")
    assert run["drift"]["positions"] == [32, 128, 384]
    long = next(s for s in run["drift"]["slices"] if s["value"] == "long")
    assert long["agreement"][-1] < 0.6 and long["first_divergence"]["p50"] > 0
    assert run["provenance"]["suite"]["tokenizer_sha256"] and run["provenance"]["drift"] == run["drift"]


def test_an_unusable_plot_directory_exits_2_before_running(tmp_path: Path, demo_dir: Path, capsys) -> None:
    config = tmp_path / "targets.yaml"
    config.write_text(charlm_config(demo_dir, tmp_path / "ledger.db"))
    (tmp_path / "file").write_text("x")
    assert main(["validate", "-c", str(config), "--plot", str(tmp_path / "file")]) == 2
    assert "--plot" in capsys.readouterr().err and not (tmp_path / "ledger.db").exists()


@pytest.mark.ray
def test_validate_an_external_harness_suite(tmp_path: Path, ray_local, capsys) -> None:
    fixtures = Path(__file__).resolve().parent.parent / "fixtures" / "lm_eval"
    config = tmp_path / "targets.yaml"
    config.write_text(f"""version: 1
ledger: sqlite:///{tmp_path / 'ledger.db'}
targets:
  gpu-a:
    runners: [lm-eval]
models:
  llm:
    baseline: {{path: {fixtures / 'results_fp16.json'}, runner: lm-eval}}
    suites: [harness]
    candidates:
      awq-int4:
        path: {fixtures / 'results_awq_int4.json'}
        runner: lm-eval
        quantization: {{method: awq, weight_bits: 4}}
suites:
  harness:
    task: external
    slices: [task]
    external: {{format: lm-eval, metrics: [acc]}}
    checks: {{max_drop: 0.03}}
""")
    assert main(["check-config", "-c", str(config)]) == 0
    capsys.readouterr()
    assert main(["validate", "-c", str(config), "-q"]) == 1
    out = capsys.readouterr().out
    assert "FAILED max_drop (acc): task=mmlu_abstract_algebra: acc drop 0.0900 > tolerance 0.03" in out
    assert "aggregate within tolerance" not in out
