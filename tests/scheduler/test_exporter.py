"""The exporter and the gates, read from a real SQLite ledger: values, gate decisions, the golden
exposition (names, types, labels), and promtool's metric lint."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from runners import rowoutputs
from runners.contracts import CheckResult, JobResult
from scheduler.exporter import Exporter, Snapshot
from scheduler.gates import compute_gates, current_keys
from scheduler.ledger import Ledger
from scheduler.planning import Planner
from tests.conftest import REPO
from tests.scheduler.test_planning import STACK, two_target_config

GOLDEN = REPO / "tests" / "fixtures" / "exposition.golden"


def result(spec, verdict: str) -> JobResult:
    checks = [CheckResult("max_drop", "all", "all", 1000, 0.97, 0.955, -0.015, 0.02, "pass", {"mcnemar_p": 0.01}),
              CheckResult("max_drop", "scan", "faint", 90, 0.98, 0.73 if verdict == "fail" else 0.975,
                          -0.25 if verdict == "fail" else -0.005, 0.08, verdict, {}),
              CheckResult("max_drop", "scan", "tiny", 5, 1.0, 1.0, 0.0, 0.08, "insufficient", {}),
              CheckResult("max_drop", "quote", 'say "hi" \\ now', 60, 1.0, 1.0, 0.0, 0.08, "pass", {}),
              CheckResult("max_drop", "scan", "clean", 400, 0.99, 0.985, -0.005, 0.08, "pass",
                          {"bound_low": -0.004, "bound_high": 0.021, "direction": "above", "p_within": 0.001})]
    now = time.time()
    # row outputs of the same candidate file on every target, one row answered differently on "gpu"
    outputs = np.eye(4, dtype=np.float32)
    candidate = outputs[:, [0, 1, 2, 2]] if spec.target == "gpu" else outputs
    return JobResult(job_id=spec.job_id, status="finished", verdict=verdict, checks=checks,
                     provenance={"fingerprint": {"hash": "fp"}, "candidate": {"sha256": f"sha-{spec.candidate}"}},
                     started_at=now - 2, finished_at=now,
                     row_outputs=rowoutputs.classification(outputs, candidate, {"scan": ["a", "a", "b", "b"]}))


@pytest.fixture
def world(tmp_path: Path):
    loaded = two_target_config(tmp_path)
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    for target in ("cpu", "gpu"):
        ledger.record_fingerprint(target, {"hash": f"{target}-1", "components": dict(STACK),
                                           "probes": {"kernel": {"status": "ok"}, "nvidia": {"status": "error"}}})
    jobs = Planner(loaded).jobs("manual", ledger.latest_fingerprints())
    for spec in jobs:
        verdict = "fail" if (spec.target, spec.candidate) == ("cpu", "pt") else "pass"
        ledger.finish_run(ledger.start_run(spec), result(spec, verdict))
    # A driver upgrade on the CPU target: a stack change that affects none of its jobs.
    ledger.record_fingerprint("cpu", {"hash": "cpu-2", "components": {**STACK, "nvidia_driver": "560"},
                                      "probes": {"kernel": {"status": "ok"}}})
    ledger.close_unfinished(ledger.enqueue(jobs[0]), "unschedulable", "no node")
    snapshot = Snapshot(loaded=loaded, keys=current_keys(Planner(loaded).jobs("current", ledger.latest_fingerprints())),
                        last_poll_at=time.time())
    return loaded, ledger, snapshot


@pytest.mark.parametrize("policy,use", [(None, "baseline"), ("release", "baseline"), ("alert", "candidate")])
def test_an_inconclusive_gate_serves_by_the_suites_policy(tmp_path: Path, policy: str | None, use: str) -> None:
    from scheduler.config import load_config

    two_target_config(tmp_path)
    path = tmp_path / "targets.yaml"
    if policy:
        path.write_text(path.read_text().replace("checks: {max_drop: 0.02}}",
                                                 f"checks: {{max_drop: 0.02}}, decision: {{policy: {policy}}}}}"))
    loaded = load_config(path)
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.record_fingerprint("cpu", {"hash": "cpu-1", "components": dict(STACK), "probes": {}})
    jobs = [j for j in Planner(loaded).jobs("manual", ledger.latest_fingerprints()) if j.target == "cpu"]
    for spec in jobs:
        ledger.finish_run(ledger.start_run(spec), result(spec, "inconclusive" if spec.candidate == "pt" else "pass"))
    snapshot = Snapshot(loaded=loaded, keys=current_keys(Planner(loaded).jobs("current", ledger.latest_fingerprints())))
    gates = gates_by(ledger, snapshot)
    assert gates[("cpu", "pt")].state == "inconclusive" and gates[("cpu", "pt")].use == use
    assert "more rows would decide" in gates[("cpu", "pt")].reason
    assert (gates[("cpu", "ort")].state, gates[("cpu", "ort")].use) == ("pass", "candidate")
    text = Exporter(ledger, lambda: snapshot).render().decode()
    assert ('revalidator_gate_state{candidate="pt",model="m",state="inconclusive",target="cpu"} 1.0' in text)
    assert 'revalidator_check_bound{target="cpu",model="m",candidate="pt",suite="s",dimension="scan",slice="clean",' \
           'check="max_drop"} 0.021' in text


def gates_by(ledger, snapshot) -> dict[tuple[str, str], object]:
    return {(g.target, g.candidate): g for g in compute_gates(ledger, snapshot.loaded, snapshot.keys)}


def test_gates_serve_the_candidate_only_when_it_passed_on_the_current_stack(world) -> None:
    loaded, ledger, snapshot = world
    gates = gates_by(ledger, snapshot)
    assert {k: (g.state, g.use) for k, g in gates.items()} == {
        ("cpu", "ort"): ("pass", "candidate"), ("cpu", "pt"): ("fail", "baseline"),
        ("gpu", "ort"): ("pass", "candidate"), ("gpu", "pt"): ("pass", "candidate")}
    assert gates[("cpu", "pt")].reason == "failed on the current stack: max_drop scan=faint"
    assert gates[("cpu", "pt")].artifact.endswith("base.onnx") and gates[("cpu", "ort")].artifact.endswith("ort.onnx")
    # A torch upgrade on gpu: pt there has no result for the new stack yet -> baseline; ort is unaffected.
    ledger.record_fingerprint("gpu", {"hash": "gpu-2", "components": {**STACK, "torch": "2.6"}, "probes": {}})
    snapshot.keys = current_keys(Planner(loaded).jobs("current", ledger.latest_fingerprints()))
    gates = gates_by(ledger, snapshot)
    assert (gates[("gpu", "pt")].state, gates[("gpu", "pt")].use) == ("unknown", "baseline")
    assert "re-validation pending" in gates[("gpu", "pt")].reason
    assert gates[("gpu", "ort")].state == "pass"
    # Rolling the upgrade back restores the earlier decision without re-running anything.
    ledger.record_fingerprint("gpu", {"hash": "gpu-1", "components": dict(STACK), "probes": {}})
    snapshot.keys = current_keys(Planner(loaded).jobs("current", ledger.latest_fingerprints()))
    assert gates_by(ledger, snapshot)[("gpu", "pt")].state == "pass"


def samples(text: str) -> dict[str, float]:
    """Sample values by name{labels}, labels in name order (whatever order the exposition used)."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            name, _, labels = series.partition("{")
            pairs = sorted(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', labels))
            key = name + ("{" + ",".join(f'{k}="{v}"' for k, v in pairs) + "}" if pairs else "")
            out[key] = float(value)
    return out


def test_exposition_values(world) -> None:
    _, ledger, snapshot = world
    text = Exporter(ledger, lambda: snapshot).render().decode()
    values = samples(text)
    faint = ('{candidate="pt",check="max_drop",dimension="scan",model="m",slice="faint",suite="s",target="cpu"}')
    assert values["revalidator_check_pass" + faint] == 0.0
    assert values["revalidator_check_candidate_value" + faint] == pytest.approx(0.73)
    assert values["revalidator_check_delta" + faint] == pytest.approx(-0.25)
    assert values["revalidator_check_tolerance" + faint] == pytest.approx(0.08)
    tiny = faint.replace("faint", "tiny")
    assert "revalidator_check_pass" + tiny not in values  # insufficient slices are not judged
    assert values["revalidator_check_rows" + tiny] == 5
    quoted = ('{candidate="pt",check="max_drop",dimension="quote",model="m",slice="say \\"hi\\" \\\\ now",'
              'suite="s",target="cpu"}')
    assert values["revalidator_check_pass" + quoted] == 1.0  # label values escaped
    gate = '{candidate="pt",model="m",state="fail",target="cpu"}'
    assert values["revalidator_gate_state" + gate] == 1.0
    assert values['revalidator_gate_serve_candidate{candidate="pt",model="m",target="cpu"}'] == 0.0
    assert values['revalidator_gate_serve_candidate{candidate="ort",model="m",target="cpu"}'] == 1.0
    assert values['revalidator_probe_success{probe="nvidia",target="gpu"}'] == 0.0
    assert values['revalidator_jobs{state="finished",target="cpu"}'] == 2
    assert values['revalidator_stack_changes_total{component="nvidia_driver",target="cpu"}'] == 1
    # cpu's one unschedulable run is its one error; gpu has none, so no series
    assert values['revalidator_job_errors_total{target="cpu"}'] == 1
    assert not any(k.startswith('revalidator_job_errors_total{target="gpu"') for k in values)
    assert values['revalidator_job_duration_seconds_count'] == 4
    assert values['revalidator_job_duration_seconds_bucket{le="2.5"}'] == 4


def test_slice_budget_keeps_the_aggregate_and_failures(world) -> None:
    loaded, ledger, snapshot = world
    snapshot.loaded = loaded.__class__(config=loaded.config.model_copy(update={"metrics": loaded.config.metrics
                                       .model_copy(update={"max_slices_per_run": 2})}), path=loaded.path,
                                       hash=loaded.hash)
    text = Exporter(ledger, lambda: snapshot).render().decode()
    rows = [k for k in samples(text) if k.startswith("revalidator_check_rows") and 'target="cpu"' in k
            and 'candidate="pt"' in k]
    assert sorted(re.search(r'slice="(\w+)"', r).group(1) for r in rows) == ["all", "faint"]


def shape(text: str) -> list[str]:
    """Each family's name and type, and the label names of its samples."""
    out, types = [], {}
    for line in text.splitlines():
        if line.startswith("# TYPE"):
            _, _, name, kind = line.split()
            types[name] = kind
            out.append(f"{name} {kind}")
        elif line and not line.startswith("#"):
            name = re.match(r"[a-zA-Z_:][\w:]*", line).group(0)
            labels = ",".join(sorted(re.findall(r'(\w+)="', line)))
            out.append(f"  {name} {{{labels}}}")
    return list(dict.fromkeys(out))


def test_golden_exposition(world) -> None:
    _, ledger, snapshot = world
    text = Exporter(ledger, lambda: snapshot).render().decode()
    assert shape(text) == GOLDEN.read_text().splitlines(), \
        "metric names, types or labels changed: update tests/fixtures/exposition.golden and the README catalogue"


def test_promtool_check_metrics(world) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed")
    _, ledger, snapshot = world
    done = subprocess.run([promtool, "check", "metrics"], input=Exporter(ledger, lambda: snapshot).render(),
                          capture_output=True)
    assert done.returncode == 0 and not done.stdout.strip() and not done.stderr.strip(), done.stdout + done.stderr


def test_a_broken_ledger_is_counted_and_the_scrape_still_answers(world, tmp_path: Path) -> None:
    _, ledger, snapshot = world
    exporter = Exporter(ledger, lambda: snapshot)
    with ledger.engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE results")
    text = exporter.render().decode()
    values = samples(text)
    assert values["revalidator_ledger_errors_total"] >= 1
    assert "revalidator_build_info" in "".join(values)


class CountingLedger(Ledger):
    """A real ledger that counts how often the latest finished runs are read."""

    reads = 0

    def latest_finished(self):
        self.reads += 1
        return super().latest_finished()


def test_one_scrape_reads_the_latest_runs_once_for_every_family(world, tmp_path: Path) -> None:
    _, ledger, snapshot = world
    counting = CountingLedger(f"sqlite:///{tmp_path / 'ledger.db'}")
    try:
        text = Exporter(counting, lambda: snapshot).render().decode()
        assert counting.reads == 1
        values = samples(text)
        # the gates, the per-slice series and the cross-target agreement all came from that one read
        assert values['revalidator_gate_state{candidate="pt",model="m",state="fail",target="cpu"}'] == 1.0
        assert any(k.startswith("revalidator_check_pass{") for k in values)
        assert any(k.startswith("revalidator_cross_target_agreement_ratio{") for k in values)
    finally:
        counting.close()


def test_stale_runtime_runs_are_counted_per_target_from_zero(world) -> None:
    loaded, ledger, snapshot = world
    exporter = Exporter(ledger, lambda: snapshot)
    name = "revalidator_stale_runtime_runs_total"
    assert {k: v for k, v in samples(exporter.render().decode()).items() if k.startswith(name)} == {
        f'{name}{{target="cpu"}}': 0.0, f'{name}{{target="gpu"}}': 0.0}
    spec = Planner(loaded).jobs("manual", ledger.latest_fingerprints(), target="gpu")[0]
    now = time.time()
    stale = JobResult(job_id=spec.job_id, status="error", verdict="error", error_kind="stale_runtime",
                      error="stale runtime in the worker: loaded onnxruntime 1.32.0, installed 1.31.1",
                      started_at=now - 1, finished_at=now)
    ledger.finish_run(ledger.start_run(spec), stale)
    values = samples(exporter.render().decode())
    assert (values[f'{name}{{target="gpu"}}'], values[f'{name}{{target="cpu"}}']) == (1.0, 0.0)
    assert values['revalidator_job_errors_total{target="gpu"}'] == 1.0  # an error like any other, too


def test_batch_size_and_metric_are_labels_of_their_own(world) -> None:
    """A result judged at a production batch size, and an external metric's, carry `batch_size` and
    `metric` labels (the check label stays the bare name); the gate's reason names them too."""
    loaded, ledger, snapshot = world
    spec = next(j for j in Planner(loaded).jobs("manual", ledger.latest_fingerprints()) if j.target == "gpu"
                and j.candidate == "ort")
    checks = [CheckResult("max_drop", "scan", "faint", 90, 0.98, 0.975, -0.005, 0.08, "pass", {}, batch_size=1),
              CheckResult("max_drop", "scan", "faint", 90, 0.98, 0.73, -0.25, 0.08, "fail", {}, batch_size=64),
              CheckResult("max_drop", "task", "gsm8k", 1319, 0.5, 0.4, -0.1, 0.03, "fail", {}, metric="acc")]
    now = time.time()
    ledger.finish_run(ledger.start_run(spec), JobResult(
        job_id=spec.job_id, status="finished", verdict="fail", checks=checks,
        provenance={"fingerprint": {"hash": "fp"}}, started_at=now - 1, finished_at=now))
    values = samples(Exporter(ledger, lambda: snapshot).render().decode())
    run = '{}candidate="ort",check="max_drop",dimension="{}",{}model="m",slice="{}",suite="s",target="gpu"'
    at = {size: "revalidator_check_pass{" + run.format(f'batch_size="{size}",', "scan", "", "faint") + "}"
          for size in (1, 64)}
    assert (values[at[1]], values[at[64]]) == (1.0, 0.0)
    metric = "revalidator_check_delta{" + run.format("", "task", 'metric="acc",', "gsm8k") + "}"
    assert values[metric] == pytest.approx(-0.1)
    assert not [k for k in values if "@" in k or 'check="max_drop:' in k]
    gate = gates_by(ledger, snapshot)[("gpu", "ort")]
    assert gate.state == "fail" and gate.reason == ("failed on the current stack: max_drop (batch 64) scan=faint, "
                                                    "max_drop (acc) task=gsm8k")
