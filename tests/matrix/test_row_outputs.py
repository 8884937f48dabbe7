"""Row-level outputs: what the harness keeps per run, the blob round trip, the ledger's v4 table."""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

from runners import rowoutputs
from runners.contracts import ArtifactSpec, CheckSpec, JobResult, JobSpec, SuiteSpec
from runners.harness import run_job
from scheduler.ledger import SCHEMA_VERSION, Ledger
from tests.conftest import old_ledger


def demo_spec(demo: Path, candidate: str = "digits-int8-static.onnx", **suite: object) -> JobSpec:
    spec = SuiteSpec("digits", str(demo / "digits-eval.npz"), "classification", ("digit", "scan"),
                     (CheckSpec("max_drop", 0.03),), min_slice_size=50)
    return JobSpec(job_id="job-1", target="cpu", model="digits", candidate="int8",
                   baseline=ArtifactSpec(str(demo / "digits-fp32.onnx"), "onnxruntime"),
                   candidate_artifact=ArtifactSpec(str(demo / candidate), "onnxruntime"),
                   suite=dataclasses.replace(spec, **suite))


def test_row_digest_changes_with_any_bit_of_its_row_only() -> None:
    rng = np.random.default_rng(0)
    outputs = rng.standard_normal((10, 5000)).astype(np.float32)
    changed = outputs.copy()
    changed[3, 17] = np.nextafter(changed[3, 17], np.float32(np.inf))  # one ulp
    changed[:, 99] = outputs[:, 98]
    differ = np.flatnonzero(rowoutputs.row_digests(outputs) != rowoutputs.row_digests(changed))
    assert differ.tolist() == [17, 99]
    # float16 rows of an odd byte width are padded, not refused
    assert rowoutputs.row_digests(outputs[:3].astype(np.float16)).shape == (5000,)


def test_classification_run_keeps_top1_digests_and_slices(demo_dir: Path) -> None:
    result = run_job(demo_spec(demo_dir))
    assert result.status == "finished", result.error
    arrays, meta = rowoutputs.decode(result.row_outputs)
    data = np.load(demo_dir / "digits-eval.npz")
    rows = len(data["labels"])
    assert meta["kind"] == "classification" and meta["rows"] == rows and meta["classes"] == 10
    assert arrays["baseline_top1"].dtype == np.uint8 and arrays["baseline_digest"].dtype == np.uint32
    # the kept top-1 agree with the checks' own accuracy
    aggregate = next(c for c in result.checks if c.dimension == "all")
    assert np.mean(arrays["baseline_top1"] == data["labels"]) == pytest.approx(aggregate.baseline)
    assert np.mean(arrays["candidate_top1"] == data["labels"]) == pytest.approx(aggregate.candidate)
    groups = rowoutputs.slice_rows(arrays, meta)
    scan = [c for c in result.checks if c.dimension == "scan"]
    assert {c.value: c.n for c in scan} == {v: len(groups[("scan", v)]) for v in meta["slices"]["scan"]}
    assert len(result.row_outputs) < 12 * rows  # a few bytes per row (docs/rows.md)


def test_batch_size_runs_keep_the_first_size(demo_dir: Path) -> None:
    result = run_job(demo_spec(demo_dir, "digits-int8-dynamic.onnx", batch_sizes=(7, 256)))
    assert result.status == "finished", result.error
    assert rowoutputs.decode(result.row_outputs)[1]["candidate_batch_size"] == 7


def test_generation_run_keeps_token_ids(demo_dir: Path) -> None:
    suite = SuiteSpec("chars", str(demo_dir / "charlm-prompts.jsonl"), "generation", ("category",),
                      (CheckSpec("min_token_agreement", 0.5),), min_slice_size=1,
                      generation={"tokenizer": str(demo_dir / "charlm-vocab.json"), "context": 32,
                                  "max_new_tokens": 16, "curve_positions": [8, 16]})
    spec = JobSpec(job_id="g", target="cpu", model="charlm", candidate="int8",
                   baseline=ArtifactSpec(str(demo_dir / "charlm-fp32.onnx"), "onnxruntime"),
                   candidate_artifact=ArtifactSpec(str(demo_dir / "charlm-int8-dynamic.onnx"), "onnxruntime"),
                   suite=suite)
    result = run_job(spec)
    assert result.status == "finished", result.error
    arrays, meta = rowoutputs.decode(result.row_outputs)
    assert meta["kind"] == "generation"
    assert arrays["baseline_tokens"].shape == (meta["rows"], 16) and arrays["baseline_tokens"].dtype == np.int32
    assert (arrays["candidate_lengths"] <= 16).all() and arrays["candidate_lengths"].min() >= 1


def test_ledger_v4_stores_with_the_result_and_prunes_with_the_run(tmp_path: Path, demo_dir: Path) -> None:
    ledger = Ledger("sqlite:///db.sqlite", base_dir=tmp_path)
    assert SCHEMA_VERSION >= 4
    spec = demo_spec(demo_dir)
    result = JobResult(job_id=spec.job_id, status="finished", verdict="pass", row_outputs=b"blob",
                       started_at=time.time(), finished_at=time.time())
    old = JobResult(job_id=spec.job_id, status="finished", verdict="pass")  # a worker without row outputs
    kept, bare = ledger.start_run(spec), ledger.start_run(spec)
    assert ledger.finish_run(kept, result) and ledger.finish_run(bare, old)
    assert ledger.row_outputs(kept) == b"blob" and ledger.row_outputs(bare) is None
    assert ledger.spec(kept).candidate_artifact.path == spec.candidate_artifact.path
    assert ledger.delete_run(kept)
    with sqlite3.connect(tmp_path / "db.sqlite") as conn:
        assert conn.execute("SELECT count(*) FROM row_outputs").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM runs").fetchone()[0] == 1


def test_a_v3_ledger_migrates_and_keeps_its_runs(tmp_path: Path) -> None:
    old_ledger(tmp_path / "v3.sqlite", 3, verdict="pass").dispose()
    ledger = Ledger("sqlite:///v3.sqlite", base_dir=tmp_path)
    assert ledger.schema_version() == SCHEMA_VERSION
    assert ledger.run("old")["verdict"] == "pass" and ledger.row_outputs("old") is None
