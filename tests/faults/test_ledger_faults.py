"""Ledger faults with real SQLite: a lock held by another process, a full filesystem, a file damaged
in the middle. Computed results are kept until they can be written, then written exactly once."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from scheduler.config import load_config
from scheduler.dispatch import RayDispatcher
from scheduler.ledger import Ledger, LedgerError
from scheduler.planning import plan
from scheduler.validate import LedgerListener
from tests.conftest import REPO, demo_config
from tests.e2e.observability import wait_for
from tests.faults.support import fill, full_filesystem, locked


def slow(spec):
    """The job with a candidate that takes seconds to load: time to take the lock while it runs."""
    return replace(spec, candidate_artifact=replace(spec.candidate_artifact, runner="tests.plugins:SlowOnnxRunner"))


def rows(db: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


@pytest.mark.ray
def test_results_finished_while_another_process_locks_the_ledger_are_kept_then_written_once(
        tmp_path: Path, demo_dir: Path, ray_local) -> None:
    config = tmp_path / "targets.yaml"
    config.write_text(demo_config(demo_dir, tmp_path / "ledger.db"))
    loaded = load_config(config)
    ledger = Ledger(loaded.config.ledger, loaded.base_dir)
    dispatcher = RayDispatcher(loaded)
    dispatcher.start()
    recorded = []
    listener = LedgerListener(ledger, recorded.append)
    jobs = [slow(spec) for spec in plan(loaded)]
    dispatcher.submit([(ledger.enqueue(spec), spec) for spec in jobs])
    wait_for(lambda: (dispatcher.step(listener), dispatcher.in_flight()["running"] == 1)[1], 30, "a job running")
    with locked(tmp_path / "ledger.db"):
        # The job finishes on Ray; its result cannot be written and waits in memory; nothing new starts.
        wait_for(lambda: (dispatcher.step(listener), dispatcher.in_flight()["running"] == 0)[1], 60,
                 "the job computed")
        for _ in range(3):  # a few more turns (each waits out the lock's busy timeout): still held, still blocked
            dispatcher.step(listener)
        assert dispatcher.in_flight() == {"queued": 1, "running": 0, "unwritten": 1}
        assert not ledger.health.writable and ledger.health.errors >= 1
        assert "database is locked" in ledger.health.last_error
        assert sorted(s for (s,) in rows(tmp_path / "ledger.db", "SELECT status FROM runs")) == ["queued", "running"]
        assert recorded == []
    dispatcher.run_until_idle(listener)
    assert ledger.health.writable and dispatcher.unwritten == 0
    runs = rows(tmp_path / "ledger.db", "SELECT run_id, status, verdict, attempts, retries FROM runs")
    assert sorted((status, verdict, attempts, retries) for _, status, verdict, attempts, retries in runs) == [
        ("finished", "fail", 1, 0), ("finished", "pass", 1, 0)]
    # Each result written once: as many result rows as the harness computed, no more.
    stored = dict(rows(tmp_path / "ledger.db", "SELECT run_id, count(*) FROM results GROUP BY run_id"))
    assert {r.run_id: len(r.result.checks) for r in recorded} == stored
    ledger.close()


def _damaged_ledger(path: Path) -> None:
    """A ledger with enough rows to span many pages, then garbage written over pages in its middle."""
    ledger = Ledger(f"sqlite:///{path}")
    with ledger.engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE padding (x TEXT)")
        conn.exec_driver_sql("CREATE INDEX ix_padding ON padding (x)")
        for i in range(3000):
            conn.exec_driver_sql("INSERT INTO padding VALUES (?)", (f"row {i} " * 8,))
    ledger.close()
    size = path.stat().st_size
    with open(path, "r+b") as out:
        out.seek(size // 2 // 4096 * 4096)
        out.write(b"\xde\xad\xbe\xef" * 2048)


def test_a_ledger_damaged_in_the_middle_is_refused_at_open_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    _damaged_ledger(path)
    with pytest.raises(LedgerError, match=rf"ledger {path} is damaged"):
        Ledger(f"sqlite:///{path}")


def test_daemon_and_validate_refuse_a_damaged_ledger_with_one_line_and_exit_3(tmp_path: Path, demo_dir: Path) -> None:
    config = tmp_path / "targets.yaml"
    config.write_text(demo_config(demo_dir, tmp_path / "ledger.db"))
    _damaged_ledger(tmp_path / "ledger.db")
    for command in ("daemon", "validate", "status"):
        done = subprocess.run([sys.executable, "-m", "scheduler.cli", command, "-c", str(config)], cwd=REPO,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 3, (command, done.stderr)
        assert done.stderr.startswith(f"error: ledger {tmp_path / 'ledger.db'} is damaged"), (command, done.stderr)
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_validate_on_a_locked_ledger_exits_3_naming_the_ledger(tmp_path: Path, demo_dir: Path) -> None:
    config = tmp_path / "targets.yaml"
    config.write_text(demo_config(demo_dir, tmp_path / "ledger.db"))
    Ledger(f"sqlite:///{tmp_path / 'ledger.db'}").close()
    with locked(tmp_path / "ledger.db"):
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "scheduler.cli", "validate", "-c", str(config)], cwd=REPO,
                              capture_output=True, text=True, timeout=180)
    assert done.returncode == 3, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last == f"error: cannot write the ledger {tmp_path / 'ledger.db'}: database is locked", done.stderr
    assert "Traceback" not in done.stderr
    assert time.monotonic() - started < 120


def test_validate_on_a_full_disk_exits_3_naming_the_ledger(tmp_path: Path, demo_dir: Path) -> None:
    with full_filesystem(tmp_path / "small") as small:
        config = tmp_path / "targets.yaml"
        config.write_text(demo_config(demo_dir, small / "ledger.db"))
        Ledger(f"sqlite:///{small / 'ledger.db'}").close()
        fill(small)
        done = subprocess.run([sys.executable, "-m", "scheduler.cli", "validate", "-c", str(config)], cwd=REPO,
                              capture_output=True, text=True, timeout=180)
        assert done.returncode == 3, done.stderr
        last = done.stderr.strip().splitlines()[-1]
        assert re.fullmatch(rf"error: cannot (open|write the) ledger {re.escape(str(small / 'ledger.db'))}: .*"
                            r"(database or disk is full|no space left).*", last), done.stderr
        assert "Traceback" not in done.stderr, done.stderr
