"""The exit-code contract on fault paths, through the real CLI in its own process: one line that
names what is wrong and where, no traceback; 2 for bad input, 3 for infrastructure."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runners.contracts import JobResult
from scheduler.config import load_config
from scheduler.ledger import Ledger
from scheduler.planning import plan
from scheduler.validate import LedgerListener
from tests.conftest import REPO, demo_config
from tests.e2e.observability import wait_for
from tests.faults.support import stop_validate, unprivileged


def cli(*args: str, privileged: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "scheduler.cli", *args]
    return subprocess.run(argv if privileged else unprivileged(argv), cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def one_error_line(done: subprocess.CompletedProcess) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in done.stderr, done.stderr
    return lines[0]


@pytest.mark.parametrize("listen, why", [("foo", "expected HOST:PORT"), ("127.0.0.1:99999", "outside 0..65535")])
def test_a_bad_listen_address_is_bad_input(tmp_path: Path, demo_dir: Path, listen: str, why: str) -> None:
    config = tmp_path / "targets.yaml"
    config.write_text(demo_config(demo_dir, tmp_path / "ledger.db"))
    done = cli("daemon", "-c", str(config), "--listen", listen)
    assert done.returncode == 2
    assert why in one_error_line(done) and listen in done.stderr


def test_check_config_refuses_a_directory_given_as_a_model_file(tmp_path: Path, demo_dir: Path) -> None:
    folder = tmp_path / "model.onnx"
    folder.mkdir()
    config = tmp_path / "targets.yaml"
    config.write_text(demo_config(demo_dir, tmp_path / "ledger.db").replace(str(demo_dir / "digits-w8a3.onnx"),
                                                                              str(folder)))
    done = cli("check-config", "-c", str(config))
    assert done.returncode == 2, done.stdout
    assert f"is a directory, not a file: {folder}" in one_error_line(done)
    assert "candidates.ort-w8a3.path" in done.stderr and f"{config}:" in done.stderr


def test_check_config_and_validate_refuse_an_unreadable_model_file(tmp_path: Path, demo_dir: Path) -> None:
    secret = tmp_path / "secret.onnx"
    secret.write_bytes((demo_dir / "digits-w8a3.onnx").read_bytes())
    secret.chmod(0o000)
    config = tmp_path / "targets.yaml"
    config.write_text(demo_config(demo_dir, tmp_path / "ledger.db").replace(str(demo_dir / "digits-w8a3.onnx"),
                                                                              str(secret)))
    for command in ("check-config", "validate"):
        done = cli(command, "-c", str(config), privileged=False)
        assert done.returncode == 2, (command, done.stderr)
        assert f"not readable by this user: {secret}" in one_error_line(done)


def _ledger_with_one_result(tmp_path: Path, demo_dir: Path) -> Path:
    config = tmp_path / "targets.yaml"
    config.write_text(demo_config(demo_dir, tmp_path / "db" / "ledger.db", candidates=("ort-int8-dynamic",)))
    loaded = load_config(config)
    ledger = Ledger(loaded.config.ledger, loaded.base_dir)
    spec = plan(loaded)[0]
    run_id = ledger.start_run(spec)
    ledger.finish_run(run_id, JobResult(job_id=spec.job_id, status="finished", verdict="pass",
                                        started_at=time.time() - 1, finished_at=time.time()))
    ledger.close()
    return config


def test_status_and_history_read_a_read_only_ledger(tmp_path: Path, demo_dir: Path) -> None:
    config = _ledger_with_one_result(tmp_path, demo_dir)
    folder = tmp_path / "db"
    before = sorted(p.name for p in folder.iterdir())
    (folder / "ledger.db").chmod(0o444)
    folder.chmod(0o555)
    try:
        status = cli("status", "-c", str(config), privileged=False)
        history = cli("history", "-c", str(config), privileged=False)
        probe = subprocess.run(unprivileged(["sh", "-c", f"touch {folder}/x"]), capture_output=True)
    finally:
        folder.chmod(0o755)
    assert probe.returncode != 0, "the ledger's folder was writable after all: the test proves nothing"
    assert status.returncode == 0, status.stderr
    assert "ort-int8-dynamic" in status.stdout and "pass" in status.stdout
    assert history.returncode == 0, history.stderr
    assert "finished" in history.stdout and "ort-int8-dynamic" in history.stdout
    assert sorted(p.name for p in folder.iterdir()) == before  # nothing written beside it either


def test_a_resume_after_a_restart_is_not_a_retry(tmp_path: Path, demo_dir: Path) -> None:
    config = _ledger_with_one_result(tmp_path, demo_dir)
    loaded = load_config(config)
    ledger = Ledger(loaded.config.ledger, loaded.base_dir)
    listener = LedgerListener(ledger)
    spec = plan(loaded)[0]
    resumed, retried = ledger.enqueue(spec), ledger.enqueue(spec)
    for run_id in (resumed, retried):
        listener.started(run_id, spec)
    listener.handed_back(resumed, spec, "cancelled by shutdown")  # a restart: the next start resumes it
    listener.retrying(retried, spec, "WorkerCrashedError: the worker died")
    for run_id in (resumed, retried):
        listener.started(run_id, spec)
    assert (ledger.run(resumed)["attempts"], ledger.run(resumed)["retries"]) == (2, 0)
    assert (ledger.run(retried)["attempts"], ledger.run(retried)["retries"]) == (2, 1)
    assert ledger.retries() == 1
    ledger.close()


@pytest.mark.ray
def test_validate_stopped_by_sigterm_exits_3_and_records_its_jobs_as_cancelled(tmp_path: Path,
                                                                                demo_dir: Path) -> None:
    config = tmp_path / "targets.yaml"
    text = demo_config(demo_dir, tmp_path / "ledger.db").replace(
        "runners: [onnxruntime, torch]", 'runners: [onnxruntime, torch, "tests.plugins:SlowOnnxRunner"]').replace(
        "        runner: onnxruntime", '        runner: "tests.plugins:SlowOnnxRunner"')
    config.write_text(text)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen([sys.executable, "-m", "scheduler.cli", "validate", "-c", str(config)], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def statuses() -> list[str]:
        try:
            with sqlite3.connect(tmp_path / "ledger.db") as conn:
                return [s for (s,) in conn.execute("SELECT status FROM runs")]
        except sqlite3.Error:
            return []
    try:
        wait_for(lambda: "running" in statuses(), 120, "a job to start")
    except BaseException:
        proc.kill()
        raise
    stop_validate(proc, signal.SIGTERM, tmp_path / "ledger.db")
    assert "cancelled" in statuses() and not {"queued", "running"} & set(statuses())


def test_an_empty_listen_host_means_loopback_not_every_interface() -> None:
    from scheduler.http import parse_listen

    assert parse_listen(":9108") == ("127.0.0.1", 9108)
    assert parse_listen("0.0.0.0:9108") == ("0.0.0.0", 9108)  # every interface only when asked for
