"""Baseline outputs shared by the candidates of a sweep: reused when every part of the key holds,
made again when the stack, the baseline file or the data file changes; bounded; never a reason
for a job to fail. Real onnxruntime models through run_job, the cache in a temporary directory."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from runners.baseline_cache import BYTES_ENV, DIRECTORY_ENV, BaselineCache
from runners.contracts import ArtifactSpec, CheckSpec, JobSpec, SuiteSpec
from runners.harness import run_job
from runners.hashing import sha256_file

CHECKS = (CheckSpec("max_drop", 0.03), CheckSpec("min_agreement", 0.95))


@pytest.fixture
def work(tmp_path: Path, demo_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the demo files (so they can be replaced) and a private cache."""
    for name in ("digits-fp32.onnx", "digits-int8-dynamic.onnx", "digits-int8-static.onnx", "digits-w8a3.onnx",
                 "digits-eval.npz"):
        shutil.copy(demo_dir / name, tmp_path / name)
    (tmp_path / "firmware").write_text("1.0\n")
    monkeypatch.setenv(DIRECTORY_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(BYTES_ENV, raising=False)
    return tmp_path


def job(folder: Path, candidate: str, job_id: str, batch_sizes: tuple[int, ...] | None = None) -> JobSpec:
    suite = SuiteSpec("digits", str(folder / "digits-eval.npz"), "classification", ("digit", "scan"), CHECKS,
                      min_slice_size=50, batch_sizes=batch_sizes)
    return JobSpec(job_id, "local-cpu", "digits-mlp", candidate, ArtifactSpec(str(folder / "digits-fp32.onnx"),
                   "onnxruntime"), ArtifactSpec(str(folder / candidate), "onnxruntime"), suite, batch_size=512,
                   probes={"firmware": {"file": str(folder / "firmware")}})


def finished(spec: JobSpec):
    result = run_job(spec)
    assert result.status == "finished", result.error
    return result


def baseline_accuracy(result) -> float:
    return next(c.baseline for c in result.checks if c.check.startswith("max_drop") and c.dimension == "all")


def test_a_second_candidate_reuses_the_baseline_and_names_the_job_that_made_it(work: Path) -> None:
    first = finished(job(work, "digits-int8-dynamic.onnx", "job-a"))
    second = finished(job(work, "digits-w8a3.onnx", "job-b"))
    made, reused = first.provenance["baseline_outputs"], second.provenance["baseline_outputs"]
    assert made == {"key": made["key"], "generated_by_job": "job-a", "reused": False}
    assert reused == {"key": made["key"], "generated_by_job": "job-a", "reused": True}
    assert len(BaselineCache.from_env().entries()) == 1
    # How the runner computed the reused outputs travels with them.
    assert second.provenance["baseline"]["runtime"] == first.provenance["baseline"]["runtime"]
    assert second.provenance["baseline"]["runtime"]
    # The verdicts are those of a run that computes its own baseline.
    os.environ[DIRECTORY_ENV] = "off"
    alone = finished(job(work, "digits-w8a3.onnx", "job-c"))
    assert alone.provenance["baseline_outputs"]["reused"] is False
    assert [(c.check, c.value, c.baseline, c.candidate, c.verdict) for c in alone.checks] == \
           [(c.check, c.value, c.baseline, c.candidate, c.verdict) for c in second.checks]


def test_the_batch_size_sweep_shares_the_baseline_too(work: Path) -> None:
    finished(job(work, "digits-int8-dynamic.onnx", "job-a", batch_sizes=(1, 64)))
    second = finished(job(work, "digits-w8a3.onnx", "job-b", batch_sizes=(1, 64)))
    assert second.provenance["baseline_outputs"]["generated_by_job"] == "job-a"
    assert second.provenance["baseline_outputs"]["reused"] is True


def test_a_stack_change_recomputes(work: Path) -> None:
    first = finished(job(work, "digits-int8-dynamic.onnx", "job-a"))
    (work / "firmware").write_text("2.0\n")
    after = finished(job(work, "digits-w8a3.onnx", "job-b"))
    assert after.provenance["fingerprint"]["hash"] != first.provenance["fingerprint"]["hash"]
    assert after.provenance["baseline_outputs"]["reused"] is False
    assert after.provenance["baseline_outputs"]["key"] != first.provenance["baseline_outputs"]["key"]


@pytest.mark.parametrize("how", ["renamed over", "rewritten in place"])
def test_a_replaced_baseline_file_never_reuses_stale_outputs(work: Path, how: str) -> None:
    first = finished(job(work, "digits-int8-dynamic.onnx", "job-a"))
    replacement = (work / "digits-int8-static.onnx").read_bytes()
    if how == "renamed over":
        (work / "new.onnx").write_bytes(replacement)
        os.replace(work / "new.onnx", work / "digits-fp32.onnx")
    else:
        (work / "digits-fp32.onnx").write_bytes(replacement)
    after = finished(job(work, "digits-w8a3.onnx", "job-b"))
    assert after.provenance["baseline"]["sha256"] != first.provenance["baseline"]["sha256"]
    assert after.provenance["baseline_outputs"]["reused"] is False
    # The baseline side of the checks is the new file's: as if nothing had been cached.
    os.environ[DIRECTORY_ENV] = "off"
    assert baseline_accuracy(after) == baseline_accuracy(finished(job(work, "digits-w8a3.onnx", "job-c")))


def test_a_changed_data_file_never_reuses_stale_outputs(work: Path) -> None:
    first = finished(job(work, "digits-int8-dynamic.onnx", "job-a"))
    with np.load(work / "digits-eval.npz") as data:
        columns = {name: data[name] for name in data.files}
    inputs = next(name for name in columns if name not in ("labels", "digit", "scan"))
    columns[inputs] = columns[inputs][::-1].copy()  # the same rows, other inputs to the model
    np.savez(work / "digits-eval.npz", **columns)
    after = finished(job(work, "digits-w8a3.onnx", "job-b"))
    assert after.provenance["suite"]["data_sha256"] != first.provenance["suite"]["data_sha256"]
    assert after.provenance["baseline_outputs"]["reused"] is False
    os.environ[DIRECTORY_ENV] = "off"
    assert baseline_accuracy(after) == baseline_accuracy(finished(job(work, "digits-w8a3.onnx", "job-c")))


def test_a_file_rewritten_with_its_old_size_and_mtime_is_hashed_again(tmp_path: Path) -> None:
    path = tmp_path / "weights.bin"
    path.write_bytes(b"a" * 4096)
    old = path.stat()
    os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns - 10**10))  # old enough to be memoised
    before = sha256_file(path)
    stat = path.stat()
    with open(path, "r+b") as handle:
        handle.write(b"b")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    assert sha256_file(path) != before


def test_the_bound_evicts_the_least_recently_used(tmp_path: Path) -> None:
    cache = BaselineCache(tmp_path / "cache")
    arrays = {"outputs": np.zeros(1000)}
    for key in ("a", "b"):
        cache.fetch((key * 64, {"format": 1}), f"job-{key}", lambda: arrays)
    size = cache._path("a" * 64).stat().st_size
    cache.max_bytes = 2 * size + size // 2  # room for two entries
    os.utime(cache._path("a" * 64), ns=(0, 1))  # a is the oldest...
    cache.fetch(("b" * 64, {"format": 1}), "job-x", lambda: pytest.fail("b is cached"))  # ...and b was just read
    cache.fetch(("c" * 64, {"format": 1}), "job-c", lambda: arrays)
    assert [p.stem[0] for p in cache.entries()] == ["b", "c"]
    _, record = cache.fetch(("a" * 64, {"format": 1}), "job-a2", lambda: arrays)
    assert record["reused"] is False and record["generated_by_job"] == "job-a2"


def test_concurrent_jobs_of_one_key_compute_once(tmp_path: Path) -> None:
    cache = BaselineCache(tmp_path / "cache")
    calls: list[int] = []
    inside, release = threading.Event(), threading.Event()
    results: dict[str, dict] = {}

    def compute() -> dict[str, np.ndarray]:
        calls.append(1)
        inside.set()
        release.wait(30)
        return {"outputs": np.arange(5.0)}

    def fetch(job_id: str) -> None:
        results[job_id] = cache.fetch(("k" * 64, {"format": 1}), job_id, compute)[1]

    first = threading.Thread(target=fetch, args=("job-0",))
    first.start()
    assert inside.wait(30)
    others = [threading.Thread(target=fetch, args=(f"job-{i}",)) for i in range(1, 4)]
    for thread in others:
        thread.start()
    _wait_for_lock_waiters(tmp_path / "cache" / f"{'k' * 64}.lock", 3)
    release.set()
    for thread in [first, *others]:
        thread.join(30)
    assert len(calls) == 1
    assert {j: (r["generated_by_job"], r["reused"]) for j, r in results.items()} == {
        "job-0": ("job-0", False), **{f"job-{i}": ("job-0", True) for i in range(1, 4)}}


def _wait_for_lock_waiters(lock: Path, count: int) -> None:
    """Until /proc/locks shows `count` blocked waiters on the lock file (observable state, not a sleep)."""
    inode = lock.stat().st_ino
    event = threading.Event()
    for _ in range(3000):
        lines = Path("/proc/locks").read_text().splitlines()
        waiting = [line for line in lines if "->" in line and line.split()[-3].endswith(f":{inode}")]
        if len(waiting) >= count:
            return
        event.wait(0.01)
    pytest.fail(f"{count} jobs never waited on {lock}")


def test_an_unusable_directory_computes_and_says_why(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    cache = BaselineCache(tmp_path / "file" / "cache")
    arrays, record = cache.fetch(("k" * 64, {"format": 1}), "job-a", lambda: {"outputs": np.ones(3)})
    assert arrays["outputs"].tolist() == [1.0, 1.0, 1.0]
    assert record["reused"] is False and record["cache"].startswith("unusable")


def test_off_computes_every_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DIRECTORY_ENV, "off")
    cache = BaselineCache.from_env()
    for job_id in ("a", "b"):
        _, record = cache.fetch(("k" * 64, {}), job_id, lambda: {"outputs": np.ones(1)})
        assert record == {"key": None, "generated_by_job": job_id, "reused": False, "cache": "off"}


def test_a_foreign_file_under_the_key_is_made_again(tmp_path: Path) -> None:
    cache = BaselineCache(tmp_path / "cache")
    cache.directory.mkdir()
    cache._path("k" * 64).write_bytes(b"truncated")
    arrays, record = cache.fetch(("k" * 64, {"format": 1}), "job-a", lambda: {"outputs": np.ones(2)})
    assert record["reused"] is False and arrays["outputs"].tolist() == [1.0, 1.0]
    assert cache.fetch(("k" * 64, {"format": 1}), "job-b", lambda: pytest.fail("cached"))[1]["reused"] is True


def charlm_job(folder: Path, candidate: str, job_id: str) -> JobSpec:
    """The demo's step model: the cached baseline carries its step logits too (per-step KL)."""
    checks = (CheckSpec("min_token_agreement", 0.6), CheckSpec("max_mean_step_kl", 0.05))
    suite = SuiteSpec("chat", str(folder / "charlm-prompts.jsonl"), "generation", ("category",), checks,
                      min_slice_size=20, generation={"tokenizer": str(folder / "charlm-vocab.json"), "context": 32,
                                                     "max_new_tokens": 64, "curve_positions": [32, 64]})
    return JobSpec(job_id, "local-cpu", "charlm", candidate, ArtifactSpec(str(folder / "charlm-fp32.onnx"),
                   "onnxruntime"), ArtifactSpec(str(folder / candidate), "onnxruntime"), suite, batch_size=256)


def test_a_step_model_baseline_is_shared_and_a_changed_vocabulary_recomputes(tmp_path: Path, demo_dir: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("charlm-fp32.onnx", "charlm-int8-dynamic.onnx", "charlm-w5.onnx", "charlm-prompts.jsonl",
                 "charlm-vocab.json"):
        shutil.copy(demo_dir / name, tmp_path / name)
    monkeypatch.setenv(DIRECTORY_ENV, str(tmp_path / "cache"))
    first = finished(charlm_job(tmp_path, "charlm-int8-dynamic.onnx", "job-a"))
    second = finished(charlm_job(tmp_path, "charlm-w5.onnx", "job-b"))
    assert second.provenance["baseline_outputs"] == {**first.provenance["baseline_outputs"], "reused": True}
    # Judged on the reused outputs exactly as on outputs of its own.
    monkeypatch.setenv(DIRECTORY_ENV, "off")
    alone = finished(charlm_job(tmp_path, "charlm-w5.onnx", "job-c"))
    assert [(c.check, c.value, c.baseline, c.candidate, c.verdict) for c in alone.checks] == \
           [(c.check, c.value, c.baseline, c.candidate, c.verdict) for c in second.checks]
    assert alone.provenance["drift"] == second.provenance["drift"]
    # The same vocabulary at the same path, written differently: another file, so made again.
    monkeypatch.setenv(DIRECTORY_ENV, str(tmp_path / "cache"))
    vocab = tmp_path / "charlm-vocab.json"
    vocab.write_text(vocab.read_text() + "\n")
    again = finished(charlm_job(tmp_path, "charlm-w5.onnx", "job-d"))
    assert again.provenance["baseline_outputs"]["reused"] is False
    assert again.provenance["baseline_outputs"]["key"] != first.provenance["baseline_outputs"]["key"]
