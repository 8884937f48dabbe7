"""An in-place upgrade of onnxruntime in the environment the daemon's Ray workers use: the daemon runs in a
virtual environment holding one onnxruntime release, a real `pip install` of another replaces it while
the daemon runs, and the re-validation runs on the new library, in a worker started after the change,
and records the version it really loaded."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest

from scheduler.ledger import Ledger
from tests.envs import ORT_NEW, ORT_OLD, install, layered_env
from tests.scheduler.daemon_support import DaemonProcess, cluster_config, runs, wait_for
from tests.scheduler.test_exporter import samples

pytestmark = pytest.mark.ray


def local_config(tmp: Path, demo: Path) -> Path:
    """One target wherever the embedded Ray runs, no probe of its own: the stack change is the upgrade."""
    return cluster_config(tmp, demo, {"local-cpu": None}, probes=False,
                          ray="num_cpus: 2, job_timeout_seconds: 120, max_attempts: 2, retry_backoff_seconds: 0.5")


def ended(config: Path, trigger: str) -> list[dict]:
    """Ended runs of a trigger, each with its provenance."""
    ledger = Ledger(f"sqlite:///{config.parent / 'ledger.db'}")
    try:
        return [ledger.run(r["run_id"]) for r in runs(config)
                if r["trigger"] == trigger and r["status"] in ("finished", "error")]
    finally:
        ledger.close()


def test_after_an_in_place_upgrade_jobs_run_and_record_the_installed_onnxruntime(tmp_path: Path,
                                                                                  demo_dir: Path) -> None:
    python = layered_env(tmp_path / "env", {"onnxruntime": ORT_OLD})
    config = local_config(tmp_path, demo_dir)
    daemon = DaemonProcess(config, ray_address="", python=python)
    try:
        daemon.wait_ready(timeout=120)
        wait_for(lambda: len(ended(config, "catch-up")) == 2, 120, "the first sweep")
        first = ended(config, "catch-up")
        for run in first:
            assert run["status"] == "finished", run["error"]
            loaded = run["provenance"]["loaded"]["modules"]["onnxruntime"]
            assert loaded["version"] == run["provenance"]["fingerprint"]["components"]["onnxruntime"] == ORT_OLD
        old_workers = {run["provenance"]["loaded"]["pid"] for run in first}

        install(python, "onnxruntime", ORT_NEW)  # in place, under the running daemon and its idle workers
        wait_for(lambda: len(ended(config, "stack-change")) == 2, 120, "the re-validation on the new stack")
        again = ended(config, "stack-change")
        for run in again:
            assert (run["status"], run["error_kind"]) == ("finished", None), run["error"]
            recorded = run["provenance"]["fingerprint"]["components"]["onnxruntime"]
            loaded = run["provenance"]["loaded"]["modules"]["onnxruntime"]
            assert loaded["version"] == recorded == ORT_NEW
            assert loaded["libraries"] and not any(lib["deleted"] or lib["replaced"] for lib in loaded["libraries"])
            assert "/~" not in " ".join(lib["path"] for lib in loaded["libraries"])
        assert not {run["provenance"]["loaded"]["pid"] for run in again} & old_workers  # fresh workers
        with urllib.request.urlopen(f"http://{daemon.listen}/metrics", timeout=5) as answer:
            metrics = samples(answer.read().decode())
        assert metrics['revalidator_stale_runtime_runs_total{target="local-cpu"}'] == 0.0
        changed = [line for line in daemon.logs() if line["msg"] == "stack changed"]
        assert changed and "onnxruntime" in str(changed[0]["diff"])
        assert daemon.terminate(timeout=30)[0] == 0
    finally:
        daemon.close()
