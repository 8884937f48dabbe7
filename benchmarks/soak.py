"""A bounded soak of the daemon: 16 targets on a local Ray, stack changes, scrapes, ledger locks, a worker kill.

Real processes on 127.0.0.1: a one-node Ray cluster whose node offers 16 custom resources (one per
target, so each target's jobs are pinned) and 2 CPUs, keeping up to 32 idle workers warm (Ray's
default keeps as many as CPUs: every poll's 16 probes would start 14 workers anew, which on a
small loaded machine outlasts the probe timeout), and `revalidator daemon` connected to it, over the demo
digits model (one int8 candidate, so one job per target and stack). Each target declares a file
probe (its "firmware" version); one target's file is rewritten every `--change-every` seconds
(6), which the daemon sees at its next poll (`--poll`, 5 s; a probe gets that long) as a stack change.
Meanwhile /metrics is scraped 20 times a second, 200 clients scrape it at once every
`--burst-every` seconds (30), /healthz is asked every 100 ms, a second process holds
`BEGIN EXCLUSIVE` on the ledger for 4 s three times, and one Ray worker is killed (SIGKILL) in the
middle of a job. Then the changes stop, the daemon finishes
its queue and is stopped by SIGTERM.

Counted from the ledger afterwards: jobs done; results lost (runs left unfinished or ended in error,
and gates still `unknown`: a current job key without a result); duplicates (a job key finished more
than once, or a result row stored twice; nothing here forces a re-run, so each key runs once).

Usage: python benchmarks/soak.py [--seconds 300] [--poll 5]
Last line: {"metric": "soak", "jobs_done": ..., "results_lost": 0, "duplicates": 0, ..., "ok": ...}
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TARGETS = [f"t{i:02d}" for i in range(16)]
LOCK_HOLDER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
conn.execute("BEGIN EXCLUSIVE")
time.sleep(float(sys.argv[2]))
conn.execute("ROLLBACK")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(work: Path, demo: Path, port: int, poll: float) -> Path:
    """The daemon tests' config: every target pinned by its resource with a firmware file probe, one candidate."""
    from tests.scheduler.daemon_support import cluster_config

    return cluster_config(work, demo, {name: f"target:{name}" for name in TARGETS}, poll=poll, drain=10,
                          ray="job_timeout_seconds: 300, unschedulable_after_seconds: 120, max_attempts: 3, "
                              "retry_backoff_seconds: 0.5",
                          candidates=("int8",), slice_checks=False, listen=f"127.0.0.1:{port}", firmware="1")


class Timings:
    """Latencies (seconds) and failures of one kind of request, from several threads."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.failures = 0
        self.not_ready = 0
        self._lock = threading.Lock()

    def request(self, url: str, timeout: float = 30) -> None:
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(url, timeout=timeout) as answer:
                answer.read()
            ok = True
        except urllib.error.HTTPError as exc:
            ok = exc.code == 503 and url.endswith("/readyz")  # a locked ledger: not ready, as it should say
            with self._lock:
                self.not_ready += ok
        except OSError:
            ok = False
        with self._lock:
            if ok:
                self.seconds.append(time.perf_counter() - started)
            else:
                self.failures += 1

    def p99_ms(self) -> float:
        ordered = sorted(self.seconds)
        return round(1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 1) if ordered else -1.0


def every(interval: float, stop: threading.Event, action) -> threading.Thread:
    def loop() -> None:
        next_at = time.monotonic()
        while not stop.is_set():
            action()
            next_at += interval
            stop.wait(max(0.0, next_at - time.monotonic()))
    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def burst(url: str, timings: Timings, clients: int = 200) -> None:
    threads = [threading.Thread(target=timings.request, args=(url,)) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def kill_a_running_job(deadline: float) -> int | None:
    """SIGKILL one Ray worker while it runs a job (its process title is ray::execute)."""
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if (entry / "cmdline").read_bytes().startswith(b"ray::execute"):
                    os.kill(int(entry.name), signal.SIGKILL)
                    return int(entry.name)
            except OSError:
                continue
        time.sleep(0.02)
    return None


def ledger_rows(path: Path, query: str) -> list[tuple]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute(query).fetchall()
    finally:
        conn.close()


def quiet(base: str, ledger: Path, timeout: float) -> bool:
    """Wait until nothing is queued or running and no gate is unknown."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            unfinished = ledger_rows(ledger, "SELECT count(*) FROM runs WHERE status IN ('queued', 'running')")[0][0]
            with urllib.request.urlopen(f"{base}/gates", timeout=30) as answer:
                gates = json.loads(answer.read())
            unknown = sum(g["state"] == "unknown" for t in gates["models"].values() for gs in t.values() for g in gs)
            if unfinished == 0 and unknown == 0:
                return True
        except (OSError, sqlite3.Error):
            pass
        time.sleep(1)
    return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--change-every", type=float, default=6)
    parser.add_argument("--burst-every", type=float, default=30)
    parser.add_argument("--poll", type=float, default=5, help="the daemon's poll interval, also each probe's timeout")
    args = parser.parse_args()
    from ray.cluster_utils import Cluster

    from examples.build import build

    work = Path(tempfile.mkdtemp(prefix="revalidator-soak-"))
    demo = work / "demo"
    demo.mkdir()
    build(demo, llm=False)
    port = free_port()
    config = write_config(work, demo, port, args.poll)
    base, ledger = f"http://127.0.0.1:{port}", work / "ledger.db"
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "resources": {f"target:{t}": 1 for t in TARGETS}, "include_dashboard": False,
        "_system_config": {"num_workers_soft_limit": 2 * len(TARGETS)}})
    cluster.wait_for_nodes()
    env = {**os.environ, "RAY_ADDRESS": cluster.address, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}
    log = open(work / "daemon.log", "w")
    daemon = subprocess.Popen([sys.executable, "-m", "scheduler.cli", "daemon", "-c", str(config)], cwd=REPO,
                              env=env, stdout=log, stderr=subprocess.STDOUT)
    scrapes, health, ready = Timings(), Timings(), Timings()
    stop = threading.Event()
    changes, locks, exit_code = 0, 0, None
    try:
        deadline = time.monotonic() + 120
        while ready.seconds == [] and time.monotonic() < deadline:
            assert daemon.poll() is None, (work / "daemon.log").read_text()[-3000:]
            ready.request(f"{base}/readyz", timeout=2)
            time.sleep(0.5)
        assert ready.seconds, "the daemon did not get ready in 120 s"
        ready.failures = 0
        started = time.monotonic()
        loops = [every(0.05, stop, lambda: scrapes.request(f"{base}/metrics")),
                 every(0.1, stop, lambda: health.request(f"{base}/healthz")),
                 every(0.5, stop, lambda: ready.request(f"{base}/readyz"))]
        events = sorted([(args.seconds * share, "lock") for share in (0.25, 0.6, 0.85)]
                        + [(args.seconds * 0.4, "kill")]
                        + [(t, "burst") for t in _range(args.burst_every / 2, args.seconds, args.burst_every)]
                        + [(t, "change") for t in _range(args.change_every, args.seconds, args.change_every)])
        holders = []
        for at, kind in events:
            time.sleep(max(0.0, started + at - time.monotonic()))
            if kind == "change":
                target = TARGETS[changes % len(TARGETS)]
                changes += 1
                (work / f"firmware-{target}").write_text(f"{changes + 1}\n")
            elif kind == "lock":
                holders.append(subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(ledger), "4"]))
                locks += 1
            elif kind == "kill":
                threading.Thread(target=lambda: _set_killed(kill_a_running_job(time.monotonic() + 60)),
                                 daemon=True).start()
            else:
                threading.Thread(target=burst, args=(f"{base}/metrics", scrapes), daemon=True).start()
        for holder in holders:
            holder.wait(timeout=60)
        settled = quiet(base, ledger, timeout=300)
        stop.set()
        for loop in loops:
            loop.join(timeout=60)
        daemon.send_signal(signal.SIGTERM)
        exit_code = daemon.wait(timeout=60)
    finally:
        stop.set()
        if daemon.poll() is None:
            daemon.kill()
        cluster.shutdown()
        log.close()
    runs = ledger_rows(ledger, "SELECT job_key, status, verdict, retries FROM runs")
    finished = [r for r in runs if r[1] == "finished"]
    keys: dict[str, int] = {}
    for key, *_ in finished:
        keys[key] = keys.get(key, 0) + 1
    stored, distinct = ledger_rows(ledger, "SELECT count(*), count(DISTINCT run_id || '/' || check_name || '/' || "
                                           "coalesce(batch_size, '') || '/' || coalesce(metric, '') || '/' || "
                                           "dimension || '/' || value) FROM results")[0]
    lost = sum(1 for r in runs if r[1] != "finished" or r[2] == "error") + (0 if settled else 1)
    duplicates = sum(n - 1 for n in keys.values()) + (stored - distinct)
    summary = {"seconds": args.seconds, "targets": len(TARGETS), "stack_changes": changes, "ledger_locks": locks,
               "worker_killed": KILLED[0] is not None, "jobs_done": len(finished),
               "retries": sum(r[3] for r in runs), "results_lost": lost, "duplicates": duplicates,
               "settled": settled, "daemon_exit": exit_code, "scrapes": len(scrapes.seconds),
               "scrape_failures": scrapes.failures, "scrape_p99_ms": scrapes.p99_ms(),
               "healthz": len(health.seconds), "healthz_failures": health.failures, "healthz_p99_ms": health.p99_ms(),
               "readyz_503_while_locked": ready.not_ready, "work": str(work)}
    for key in ("jobs_done", "results_lost", "duplicates", "scrape_p99_ms", "healthz_p99_ms"):
        print(f"{key}: {summary[key]}")
    print(json.dumps({"metric": "soak", **summary, "ok": lost == 0 and duplicates == 0 and exit_code == 0
                      and health.failures == 0 and KILLED[0] is not None and len(finished) >= len(TARGETS)}))
    return 0


KILLED: list[int | None] = [None]


def _set_killed(pid: int | None) -> None:
    KILLED[0] = pid


def _range(start: float, stop: float, step: float) -> list[float]:
    out, t = [], start
    while t < stop:
        out.append(t)
        t += step
    return out


if __name__ == "__main__":
    sys.exit(main())
