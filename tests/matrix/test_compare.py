"""`compare` on a real ledger: cross-target rows from real runs, the stack-change difference-in-differences,
the HTTP endpoint on a real server, and the exporter's agreement series."""

from __future__ import annotations

import dataclasses
import json
import time
import urllib.request
from pathlib import Path

import pytest

from runners.contracts import CheckResult, JobResult
from runners.harness import run_job
from scheduler import compare
from scheduler.config import load_config
from scheduler.exporter import Exporter, Snapshot
from scheduler.gates import current_keys
from scheduler.http import HttpServer
from scheduler.ledger import Ledger
from scheduler.planning import Planner
from tests.matrix.test_row_outputs import demo_spec

STACK = {"kernel": "6.8.0", "onnxruntime": "1.31.1", "cpu_model": "Xeon"}


def fingerprint(**changes: str) -> dict:
    components = {**STACK, **changes}
    return {"hash": "-".join(sorted(components.values())), "components": components}


def finished(ledger: Ledger, spec, result: JobResult, fp: dict) -> str:
    result.provenance = {**result.provenance, "fingerprint": fp}
    result.finished_at = time.time()
    run_id = ledger.start_run(spec)
    assert ledger.finish_run(run_id, result)
    return run_id


@pytest.fixture
def cross(tmp_path: Path, demo_dir: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Ledger, dict[str, str]]:
    """One int8 file run by onnxruntime on target "vnni" and through the stand-in AVX2 kernel path on "avx2"."""
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    (tmp_path / "isa").write_text("avx2\n")
    monkeypatch.setenv("REVALIDATOR_TEST_CPU_ISA_FILE", str(tmp_path / "isa"))
    spec = demo_spec(demo_dir)
    ids = {}
    for target, runner in (("vnni", "onnxruntime"), ("avx2", "tests.plugins:IsaOnnxRunner")):
        job = dataclasses.replace(spec, target=target, job_id=f"job-{target}", job_key=f"job-{target}",
                                  candidate_artifact=dataclasses.replace(spec.candidate_artifact, runner=runner))
        result = run_job(job)
        assert result.status == "finished", result.error
        ids[target] = finished(ledger, job, result, fingerprint(cpu_model=target))
    return ledger, ids


def test_cross_target_rows_slices_and_fingerprints(cross) -> None:
    ledger, ids = cross
    doc = compare.compare(ledger, bound=0.01)
    (pair,) = doc["cross_target"]
    assert pair["targets"] == ["avx2", "vnni"] and pair["run_ids"] == [ids["avx2"], ids["vnni"]]
    assert pair["fingerprint_diff"] == [{"component": "cpu_model", "first": "avx2", "second": "vnni"}]
    candidate = pair["rows"]["models"]["candidate"]
    assert candidate["differ"] > 0 and not pair["identical"]
    assert pair["rows"]["models"]["baseline"]["identical"]
    by_slice = {(s["dimension"], s["value"]): s for s in candidate["slices"]}
    assert sum(s["differ"] for k, s in by_slice.items() if k[0] == "scan") == candidate["differ"]
    assert pair["diverging_slices"] == [f"{d}={v}" for (d, v), s in by_slice.items() if d != "all" and s["differ"]]
    assert pair["within_bound"] == (pair["disagreement"] <= 0.01)
    text = compare.human(doc)
    assert f"candidate: {candidate['differ']} of 1482 rows differ between avx2 and vnni" in text
    assert "cpu_model  avx2: avx2   vnni: vnni" in text


def test_compare_endpoint_on_a_real_server(cross) -> None:
    ledger, ids = cross
    server = HttpServer("127.0.0.1:0", {("GET", "/compare"): compare.route(ledger, lambda: 0.5)})
    server.start()
    try:
        with urllib.request.urlopen(f"http://{server.address}/compare?model=digits&targets=avx2,vnni",
                                    timeout=10) as answer:
            doc = json.loads(answer.read())
        with urllib.request.urlopen(f"http://{server.address}/compare?model=other", timeout=10) as answer:
            empty = json.loads(answer.read())
    finally:
        server.stop()
    assert doc["version"] == 1 and doc["bound"] == 0.5 and doc["cross_target"][0]["run_ids"] == [ids["avx2"],
                                                                                                 ids["vnni"]]
    assert empty["cross_target"] == [] and empty["stack_changes"] == []


def test_exporter_agreement_series(cross, tmp_path: Path, demo_dir: Path) -> None:
    ledger, ids = cross
    config = tmp_path / "targets.yaml"
    config.write_text(f"""version: 1
ledger: sqlite:///{tmp_path / 'ledger.db'}
metrics: {{max_cross_target_disagreement: 0.002}}
targets:
  vnni: {{runners: [onnxruntime]}}
  avx2: {{runners: [onnxruntime]}}
models:
  digits:
    baseline: {{path: {demo_dir / 'digits-fp32.onnx'}, runner: onnxruntime}}
    suites: [digits]
    candidates:
      int8: {{path: {demo_dir / 'digits-int8-static.onnx'}, runner: onnxruntime,
             quantization: {{method: static-qdq, weight_bits: 8}}}}
suites:
  digits: {{data: {demo_dir / 'digits-eval.npz'}, task: classification, slices: [digit, scan],
            checks: {{max_drop: 0.03}}}}
""")
    loaded = load_config(config)
    snapshot = Snapshot(loaded=loaded, keys=current_keys(Planner(loaded).jobs("manual", {})))
    exporter = Exporter(ledger, lambda: snapshot)
    text = exporter.render().decode()
    assert exporter.collector.read_errors == 0
    pair = compare.compare(ledger, 0.002)["cross_target"][0]
    labels = 'candidate="int8",model="digits",other_target="vnni",target="avx2"'
    assert f"revalidator_cross_target_agreement_ratio{{{labels}}} {pair['agreement']!r}" in text
    assert f"revalidator_cross_target_rows_differing{{{labels}}} {float(pair['rows']['models']['candidate']['differ'])!r}" in text
    assert "revalidator_cross_target_disagreement_bound 0.002" in text
    assert exporter.render().decode() == text  # the second scrape answers from the cache, alike


def check(name: str, dimension: str, value: str, baseline: float, candidate: float, verdict: str) -> CheckResult:
    return CheckResult(name, dimension, value, 500, baseline, candidate, candidate - baseline, 0.02, verdict, {})


def test_stack_change_difference_in_differences(tmp_path: Path, demo_dir: Path) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    spec = demo_spec(demo_dir)
    sha = {"candidate": {"sha256": "ab" * 32}}

    def run(target: str, verdict: str, agg: tuple[float, float], faint: tuple[float, float], fp: dict) -> str:
        job = dataclasses.replace(spec, target=target)
        checks = [check("max_drop", "all", "all", *agg, verdict), check("max_drop", "scan", "faint", *faint, verdict)]
        return finished(ledger, job, JobResult(job.job_id, "finished", verdict, checks, dict(sha)), fp)

    # "equal": an upgrade moves both models by the same amount; the gate fails on an absolute floor.
    run("equal", "pass", (0.95, 0.94), (0.90, 0.89), fingerprint())
    run("equal", "fail", (0.90, 0.89), (0.85, 0.84), fingerprint(onnxruntime="1.32.0"))
    # "quant": the baseline holds, the candidate regresses on the faint slice; two components changed.
    passed = run("quant", "pass", (0.95, 0.94), (0.90, 0.89), fingerprint())
    failed = run("quant", "fail", (0.95, 0.90), (0.90, 0.70), fingerprint(onnxruntime="1.32.0", kernel="6.9.1"))
    # pass, fail, pass, fail: the latest transition is the one reported
    run("again", "pass", (0.95, 0.94), (0.90, 0.89), fingerprint())
    run("again", "fail", (0.95, 0.90), (0.90, 0.85), fingerprint(kernel="6.9.1"))
    again = run("again", "pass", (0.95, 0.94), (0.90, 0.89), fingerprint())
    again_fail = run("again", "fail", (0.90, 0.89), (0.85, 0.84), fingerprint(onnxruntime="1.32.0"))
    run("again", "fail", (0.90, 0.80), (0.85, 0.70), fingerprint(onnxruntime="1.32.0"))
    # another target runs the passing stack with only the new onnxruntime: it isolates that change
    ledger.record_fingerprint("probe-ort", {**fingerprint(onnxruntime="1.32.0"), "probes": {}})
    doc = compare.compare(ledger, 0.01)
    changes = {c["target"]: c for c in doc["stack_changes"]}
    assert (changes["again"]["last_pass"], changes["again"]["first_fail"]) == (again, again_fail)
    assert [d["component"] for d in changes["again"]["changed"]] == ["onnxruntime"]
    assert changes["equal"]["reading"] == "the stack moved both models equally"
    assert changes["equal"]["aggregate"]["diff_in_diff"] == pytest.approx(0.0)
    assert [d["component"] for d in changes["equal"]["changed"]] == ["onnxruntime"]
    assert changes["equal"]["isolate"] == []  # one change: nothing to isolate
    quant = changes["quant"]
    assert (quant["last_pass"], quant["first_fail"]) == (passed, failed)
    assert quant["reading"] == "the quantized path regressed on the new stack"
    assert quant["aggregate"]["diff_in_diff"] == pytest.approx(-0.04)
    assert quant["regressed_slices"] == ["scan=faint"]
    assert {d["component"] for d in quant["changed"]} == {"kernel", "onnxruntime"}
    isolate = {j["component"]: j for j in quant["isolate"]}
    assert isolate["onnxruntime"]["command"] == "revalidator validate --target probe-ort --model digits"
    assert "command" not in isolate["kernel"] and "kernel = 6.9.1" in isolate["kernel"]["stack"]
    text = compare.human(doc)
    assert "to isolate onnxruntime: revalidator validate --target probe-ort --model digits" in text
    assert "difference-in-differences -0.0400" in text
