"""The ledger on real SQLite: migrations, run lifecycle, results and provenance round trip, gates."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from runners.contracts import ArtifactSpec, CheckResult, CheckSpec, JobResult, JobSpec, SuiteSpec
from scheduler.ledger import SCHEMA_VERSION, Ledger, LedgerError
from tests.conftest import old_ledger


def spec(candidate: str = "w4", target: str = "cpu") -> JobSpec:
    suite = SuiteSpec("digits", "/data/eval.npz", "classification", ("scan",), (CheckSpec("max_drop", 0.03),))
    return JobSpec(job_id=f"job-{candidate}-{target}", target=target, model="m", candidate=candidate,
                   baseline=ArtifactSpec("/m/fp32.onnx", "onnxruntime"),
                   candidate_artifact=ArtifactSpec("/m/w4.onnx", "onnxruntime", {"method": "qdq", "weight_bits": 4}),
                   suite=suite, trigger="manual", config_hash="abc")


def result(job_id: str, verdict: str = "fail") -> JobResult:
    checks = [CheckResult("max_drop", "all", "all", 100, 0.97, 0.95, -0.02, 0.03, "pass", {"mcnemar_p": 0.1}),
              CheckResult("max_drop", "scan", "faint", 60, 0.98, 0.70, -0.28, 0.03, verdict, {"mcnemar_p": 1e-6})]
    prov = {"fingerprint": {"hash": "fp1", "components": {"kernel": "6.8"}}, "candidate": {"sha256": "ab" * 32},
            "quantization": {"method": "qdq", "weight_bits": 4}}
    return JobResult(job_id=job_id, status="finished", verdict=verdict, checks=checks, provenance=prov,
                     started_at=time.time(), finished_at=time.time())


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger("sqlite:///ledger/db.sqlite", base_dir=tmp_path)


def test_migrates_to_current_schema_in_wal_mode(ledger: Ledger, tmp_path: Path) -> None:
    assert ledger.schema_version() == SCHEMA_VERSION
    db = tmp_path / "ledger" / "db.sqlite"
    assert db.is_file()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        versions = [r[0] for r in conn.execute("SELECT version FROM schema_version")]
    assert versions == list(range(1, SCHEMA_VERSION + 1))
    Ledger("sqlite:///ledger/db.sqlite", base_dir=tmp_path)  # reopening applies nothing twice
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM schema_version").fetchone()[0] == SCHEMA_VERSION


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    Ledger("sqlite:///db.sqlite", base_dir=tmp_path)
    with sqlite3.connect(tmp_path / "db.sqlite") as conn:
        conn.execute("INSERT INTO schema_version VALUES (99)")
    with pytest.raises(LedgerError, match="v99 is newer"):
        Ledger("sqlite:///db.sqlite", base_dir=tmp_path)


def test_unopenable_ledger_is_named(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(LedgerError, match="cannot open ledger"):
        Ledger("sqlite:///file/sub/db.sqlite", base_dir=tmp_path)


def test_run_round_trip_with_provenance(ledger: Ledger) -> None:
    s = spec()
    run_id = ledger.start_run(s)
    running = ledger.run(run_id)
    assert running["status"] == "running" and running["checks"] == [] and running["provenance"] == {}
    assert ledger.gates() == []  # a running job decides no gate
    ledger.finish_run(run_id, result(s.job_id))
    done = ledger.run(run_id)
    assert (done["status"], done["verdict"], done["fingerprint_hash"]) == ("finished", "fail", "fp1")
    assert done["config_hash"] == "abc" and done["trigger"] == "manual"
    faint = [c for c in done["checks"] if c["value"] == "faint"][0]
    assert faint["candidate"] == pytest.approx(0.70) and faint["statistic"] == {"mcnemar_p": 1e-6}
    assert done["provenance"]["quantization"] == {"method": "qdq", "weight_bits": 4}


def test_finish_is_atomic(ledger: Ledger) -> None:
    s = spec()
    run_id = ledger.start_run(s)
    bad = result(s.job_id)
    bad.checks.append(CheckResult("max_drop", "scan", "x", 1, None, None, None, None, "pass"))  # tolerance NOT NULL
    with pytest.raises(LedgerError, match="NOT NULL"):
        ledger.finish_run(run_id, bad)
    after = ledger.run(run_id)
    assert after["status"] == "running" and after["checks"] == [] and after["provenance"] == {}


def test_gates_take_the_latest_run_per_target_model_candidate(ledger: Ledger) -> None:
    for verdict in ("fail", "pass"):
        s = spec()
        ledger.finish_run(ledger.start_run(s), result(s.job_id, verdict))
        time.sleep(0.01)
    other = spec(target="gpu")
    ledger.finish_run(ledger.start_run(other), result(other.job_id, "fail"))
    gates = {(g["target"], g["candidate"]): g["verdict"] for g in ledger.gates()}
    assert gates == {("cpu", "w4"): "pass", ("gpu", "w4"): "fail"}
    assert [r["verdict"] for r in ledger.history(model="m", target="cpu")] == ["pass", "fail"]


def test_a_v1_ledger_migrates_with_its_runs(tmp_path: Path) -> None:
    """A ledger written by schema v1 (no queue columns, no stack history) opens and keeps its runs."""
    import sqlalchemy as sa

    from scheduler import ledger as module

    url = "sqlite:///v1.sqlite"
    engine = sa.create_engine(module.sqlite_url(tmp_path / "v1.sqlite"))
    with engine.begin() as conn:
        module.metadata.create_all(conn, tables=[module.schema_version])
        module.MIGRATIONS[0](conn)
        conn.execute(module.schema_version.insert().values(version=1))
        conn.execute(sa.text("INSERT INTO runs (run_id, job_id, trigger, target, model, candidate, suite, status, "
                             "verdict, created_at, finished_at) VALUES ('old', 'j', 'manual', 'cpu', 'm', 'w4', 's', "
                             "'finished', 'pass', 1.0, 2.0)"))
    engine.dispose()
    ledger = Ledger(url, base_dir=tmp_path)
    assert ledger.schema_version() == SCHEMA_VERSION
    assert [(g["run_id"], g["verdict"], g["attempts"]) for g in ledger.gates()] == [("old", "pass", 0)]
    assert ledger.unfinished() == []


def test_a_v4_ledger_splits_qualified_check_names_into_fields(tmp_path: Path) -> None:
    """Schema v4 wrote the batch size and the external metric into the check's name; opening it
    migrates them into their columns, and every row and run is still there."""
    import sqlalchemy as sa

    engine = old_ledger(tmp_path / "v4.sqlite", 4)
    with engine.begin() as conn:
        names = ["max_drop@batch=1", "max_drop@batch=64", "max_drop:acc", "max_drop:exact_match,strict-match",
                 "min_agreement", "max_drop@batch=64"]
        for i, name in enumerate(names):
            conn.execute(sa.text("INSERT INTO results (run_id, check_name, dimension, value, n, baseline, candidate, "
                                 "delta, tolerance, verdict, statistic) VALUES ('old', :name, 'scan', :value, 50, "
                                 "0.9, 0.8, -0.1, 0.03, 'fail', '{\"k\": 1}')"),
                         {"name": name, "value": f"v{i}"})
    with engine.connect() as conn:  # the file really has the old shape
        assert "batch_size" not in {r[1] for r in conn.execute(sa.text("PRAGMA table_info(results)"))}
    engine.dispose()
    with pytest.raises(LedgerError, match="schema v4"):
        Ledger.for_reading("sqlite:///v4.sqlite", base_dir=tmp_path)  # a reader does not migrate
    ledger = Ledger("sqlite:///v4.sqlite", base_dir=tmp_path)
    assert ledger.schema_version() == SCHEMA_VERSION == 5
    checks = sorted((c["value"], c["check_name"], c["batch_size"], c["metric"], c["statistic"])
                    for c in ledger.run("old")["checks"])
    assert checks == [("v0", "max_drop", 1, None, {"k": 1}), ("v1", "max_drop", 64, None, {"k": 1}),
                      ("v2", "max_drop", None, "acc", {"k": 1}),
                      ("v3", "max_drop", None, "exact_match,strict-match", {"k": 1}),
                      ("v4", "min_agreement", None, None, {"k": 1}), ("v5", "max_drop", 64, None, {"k": 1})]
    rows = ledger.results_for(["old"])
    assert sorted((r.value, r.check_name, r.batch_size, r.metric, r.n, r.verdict) for r in rows)[1] == (
        "v1", "max_drop", 64, None, 50, "fail")
    assert [r["verdict"] for r in ledger.history()] == ["fail"]


def test_results_of_a_contract_v1_worker_are_stored_with_fields(ledger: Ledger) -> None:
    """A worker still on contract v1 names "max_drop@batch=64": the ledger stores the fields."""
    s = spec()
    run_id = ledger.start_run(s)
    old = result(s.job_id)
    old.version = 1
    old.checks[0].check, old.checks[1].check = "max_drop@batch=64", "max_drop:acc"
    ledger.finish_run(run_id, old)
    stored = {(c["check_name"], c["batch_size"], c["metric"]) for c in ledger.run(run_id)["checks"]}
    assert stored == {("max_drop", 64, None), ("max_drop", None, "acc")}
    current = ledger.start_run(s)
    fields = result(s.job_id)
    fields.checks[1].batch_size = 8
    ledger.finish_run(current, fields)
    assert {(r.check_name, r.batch_size) for r in ledger.results_for([current])} == {("max_drop", None),
                                                                                   ("max_drop", 8)}


def test_queue_lifecycle_and_resume(ledger: Ledger) -> None:
    s = spec()
    run_id = ledger.enqueue(s)
    assert [(r, j.job_id, j.suite.checks) for r, j in ledger.unfinished()] == [(run_id, s.job_id, s.suite.checks)]
    assert ledger.unfinished()[0][1] == s  # the spec survives the round trip intact
    assert ledger.known_job_keys([s.job_id, "other"]) == {s.job_id}
    ledger.mark_running(run_id)
    ledger.requeue(run_id, "WorkerCrashedError")
    ledger.mark_running(run_id)
    assert ledger.run(run_id)["attempts"] == 2
    assert ledger.finish_run(run_id, result(s.job_id)) is True
    assert ledger.finish_run(run_id, result(s.job_id)) is False  # a second delivery records nothing
    assert len(ledger.run(run_id)["checks"]) == 2
    assert ledger.unfinished() == []
    assert ledger.known_job_keys([s.job_id], include_finished=False) == set()
    gone = ledger.enqueue(spec(candidate="x"))
    assert ledger.close_unfinished(gone, "unschedulable", "no node") is True
    assert ledger.close_unfinished(gone, "cancelled", "again") is False
    assert ledger.run(gone)["status"] == "unschedulable"


def test_fingerprint_history_and_diffs(ledger: Ledger) -> None:
    def stack(kernel: str, ort: str) -> dict:
        components = {"kernel": kernel, "onnxruntime": ort}
        return {"hash": f"{kernel}-{ort}", "components": components, "probes": {}}

    assert ledger.record_fingerprint("cpu", stack("6.1", "1.20")) == {}  # first look: no diff
    assert ledger.record_fingerprint("cpu", stack("6.1", "1.20")) == {}
    assert ledger.record_fingerprint("cpu", stack("6.2", "1.21")) == {"kernel": ("6.1", "6.2"),
                                                                      "onnxruntime": ("1.20", "1.21")}
    assert ledger.record_fingerprint("cpu", stack("6.2", "1.22")) == {"onnxruntime": ("1.21", "1.22")}
    assert ledger.change_counts() == {("cpu", "kernel"): 1, ("cpu", "onnxruntime"): 2}
    assert ledger.latest_fingerprints()["cpu"]["components"]["onnxruntime"] == "1.22"
    assert ledger.target_states()["cpu"]["state"] == "ok"
    ledger.set_target_state("cpu", "unreachable", "probe timed out")
    assert ledger.target_states()["cpu"]["detail"] == "probe timed out"
