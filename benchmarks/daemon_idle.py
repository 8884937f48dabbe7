"""The idle daemon's footprint: RSS and CPU of the daemon process alone (Ray's own processes
excluded), sampled from /proc over a window after its start-up sweep has finished.

Runs the bundled demo config (demo models must be built: scripts/demo does it) with its
ledger in a temporary folder and a 30 s poll, so the window includes real polls.

Usage: python benchmarks/daemon_idle.py [--seconds 60]
Last line: {"metric": "idle_daemon_rss_mb", "value": ..., "target": 150, "ok": ...}
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        text = (ROOT / "targets.yaml").read_text()
        text = text.replace("demo/", f"{ROOT}/demo/").replace("sqlite:///.revalidator/ledger.db",
                                                              f"sqlite:///{tmp}/ledger.db")
        text = text.replace("file: .revalidator/firmware-version", f"file: {tmp}/firmware")
        text = text.replace("poll_interval_seconds: 10", "poll_interval_seconds: 30")
        text = text.replace("listen: 127.0.0.1:9108", f"listen: 127.0.0.1:{port}")
        config = Path(tmp) / "targets.yaml"
        config.write_text(text)
        log = open(Path(tmp) / "daemon.log", "w")
        proc = subprocess.Popen([sys.executable, "-m", "scheduler.cli", "daemon", "-c", str(config)], cwd=ROOT,
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:  # ready, and the start-up sweep done
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=2) as answer:
                        status = json.loads(answer.read())
                    if status["jobs"] == {"queued": 0, "running": 0} and status["gates"]:
                        break
                except OSError:
                    pass
                time.sleep(1)
            else:
                raise SystemExit("the daemon did not finish its start-up sweep in 120 s")
            time.sleep(5)
            cpu_start, started = cpu_seconds(proc.pid), time.monotonic()
            samples = []
            while time.monotonic() - started < args.seconds:
                samples.append(rss_mb(proc.pid))
                time.sleep(1)
            elapsed = time.monotonic() - started
            cpu_percent = 100 * (cpu_seconds(proc.pid) - cpu_start) / elapsed
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    peak = max(samples)
    print(json.dumps({"window_s": round(elapsed, 1), "rss_mb_max": round(peak, 1),
                      "rss_mb_mean": round(sum(samples) / len(samples), 1), "cpu_percent": round(cpu_percent, 2),
                      "cpu_target_percent": 1.0}))
    print(json.dumps({"metric": "idle_daemon_rss_mb", "value": round(peak, 1), "target": 150,
                      "ok": peak <= 150 and cpu_percent < 1.0}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
