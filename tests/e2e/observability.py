"""Real processes on 127.0.0.1 for end-to-end alerting: the daemon, Prometheus with the project's
rules, Alertmanager, and a webhook receiver that records what Alertmanager delivers.

Used by tests/e2e and by benchmarks/alert_latency.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=3) as answer:
        return json.loads(answer.read())


@dataclass
class Delivery:
    received_at: float
    alert: dict[str, Any]


@dataclass
class WebhookReceiver:
    """Alertmanager's webhook target: every alert of every notification, with when it arrived."""

    deliveries: list[Delivery] = field(default_factory=list)

    def start(self) -> str:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                now = time.time()
                receiver.deliveries.extend(Delivery(now, alert) for alert in body["alerts"])
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}/alerts"

    def find(self, alertname: str, status: str, **labels: str) -> list[Delivery]:
        return [d for d in self.deliveries if d.alert["labels"].get("alertname") == alertname
                and d.alert["status"] == status and all(d.alert["labels"].get(k) == v for k, v in labels.items())]

    def stop(self) -> None:
        self.server.shutdown()


class Process:
    def __init__(self, argv: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path = REPO) -> None:
        self.log = log
        with open(log, "w") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 30) -> int:
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise FileNotFoundError(name)
    return path


class Stack:
    """Daemon + Prometheus + Alertmanager + receiver, over a demo config in `work`."""

    def __init__(self, work: Path, demo: Path, poll_seconds: float = 1.0) -> None:
        self.work, self.demo = work, demo
        self.poll_seconds = poll_seconds
        self.processes: list[Process] = []
        self.receiver = WebhookReceiver()
        self.daemon_port, self.prom_port, self.am_port = free_port(), free_port(), free_port()
        self.firmware = work / "firmware"
        self.candidate = work / "candidate.onnx"

    # -- configuration -----------------------------------------------------------------------
    def write_config(self) -> Path:
        shutil.copy(self.demo / "digits-int8-dynamic.onnx", self.candidate)
        self.firmware.write_text("1.0\n")
        config = self.work / "targets.yaml"
        config.write_text(f"""version: 1
ledger: sqlite:///{self.work / 'ledger.db'}
ray: {{job_timeout_seconds: 120, num_cpus: 1}}
schedule: {{poll_interval_seconds: {self.poll_seconds}}}
daemon: {{listen: "127.0.0.1:{self.daemon_port}", drain_seconds: 5}}
targets:
  edge-cpu:
    runners: [onnxruntime]
    options: {{onnxruntime: {{intra_op_threads: 1}}}}
    probes: {{firmware: {{file: {self.firmware}}}}}
models:
  digits-mlp:
    baseline: {{path: {self.demo / 'digits-fp32.onnx'}, runner: onnxruntime}}
    suites: [digits]
    candidates:
      int8:
        path: {self.candidate}
        runner: onnxruntime
        quantization: {{method: dynamic, weight_bits: 8, activation_bits: 8}}
suites:
  digits:
    data: {self.demo / 'digits-eval.npz'}
    task: classification
    slices: [digit, scan]
    min_slice_size: 50
    checks: {{max_drop: 0.03, min_agreement: 0.95}}
    slice_checks: {{max_drop: 0.08, min_agreement: 0.90}}
""")
        return config

    def _prometheus_config(self) -> Path:
        path = self.work / "prometheus.yml"
        path.write_text(f"""global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - {REPO / 'alerts' / 'revalidator.rules.yaml'}
alerting:
  alertmanagers:
    - static_configs:
        - targets: ["127.0.0.1:{self.am_port}"]
scrape_configs:
  - job_name: revalidator
    static_configs:
      - targets: ["127.0.0.1:{self.daemon_port}"]
""")
        return path

    def _alertmanager_config(self, webhook: str) -> Path:
        path = self.work / "alertmanager.yml"
        path.write_text(f"""route:
  receiver: webhook
  group_by: ["alertname", "target", "model", "candidate", "slice", "check"]
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: webhook
    webhook_configs:
      - url: "{webhook}"
        send_resolved: true
""")
        return path

    # -- processes ------------------------------------------------------------------------------
    def start(self) -> None:
        config = self.write_config()
        webhook = self.receiver.start()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("RAY_ADDRESS", None)
        self.daemon = Process([sys.executable, "-m", "scheduler.cli", "daemon", "-c", str(config)],
                              self.work / "daemon.log", env)
        self.processes.append(self.daemon)
        (self.work / "am").mkdir()
        self.processes.append(Process([
            tool("prometheus-alertmanager"), f"--config.file={self._alertmanager_config(webhook)}",
            f"--web.listen-address=127.0.0.1:{self.am_port}", "--cluster.listen-address=",
            f"--storage.path={self.work / 'am'}"], self.work / "alertmanager.log"))
        (self.work / "tsdb").mkdir()
        self.processes.append(Process([
            tool("prometheus"), f"--config.file={self._prometheus_config()}",
            f"--web.listen-address=127.0.0.1:{self.prom_port}", f"--storage.tsdb.path={self.work / 'tsdb'}"],
            self.work / "prometheus.log"))
        wait_for(self.ready, 90, "the daemon, Prometheus and Alertmanager to be ready", interval=0.5)

    def ready(self) -> bool:
        for process in self.processes:
            if not process.alive():
                raise AssertionError(f"{process.log.name} exited: {process.log.read_text()[-2000:]}")
        try:
            return all(urllib.request.urlopen(url, timeout=2).status == 200 for url in (
                f"http://127.0.0.1:{self.daemon_port}/readyz", f"http://127.0.0.1:{self.prom_port}/-/ready",
                f"http://127.0.0.1:{self.am_port}/-/ready"))
        except OSError:
            return False

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.receiver.stop()

    # -- observation ----------------------------------------------------------------------------
    def gate(self) -> dict[str, Any] | None:
        document = get_json(f"http://127.0.0.1:{self.daemon_port}/gates")
        gates = document["models"].get("digits-mlp", {}).get("edge-cpu", [])
        return gates[0] if gates else None

    def query(self, expr: str) -> list[float]:
        """An instant query's sample values, through Prometheus."""
        from urllib.parse import quote

        result = get_json(f"http://127.0.0.1:{self.prom_port}/api/v1/query?query={quote(expr)}")["data"]["result"]
        return [float(r["value"][1]) for r in result]

    def prometheus_alerts(self) -> list[dict[str, Any]]:
        return get_json(f"http://127.0.0.1:{self.prom_port}/api/v1/alerts")["data"]["alerts"]

    def daemon_log(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.daemon.log.read_text().splitlines() if line.startswith("{")]

    # -- the upgrade ----------------------------------------------------------------------------
    def upgrade(self, firmware: str = "2.0") -> float:
        """A stack change seen by the probe, and the candidate replaced by a broken build of it."""
        shutil.copy(self.demo / "digits-w8a3.onnx", self.candidate)
        self.firmware.write_text(f"{firmware}\n")
        return time.time()

    def roll_back(self) -> float:
        shutil.copy(self.demo / "digits-int8-dynamic.onnx", self.candidate)
        self.firmware.write_text("1.0\n")
        return time.time()
