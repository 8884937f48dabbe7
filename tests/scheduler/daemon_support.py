"""Helpers for tests that run the daemon as a real process against a real Ray cluster."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Mapping, Sequence

from scheduler.ledger import Ledger
from tests.conftest import REPO
from tests.e2e.observability import free_port, wait_for  # noqa: F401 (re-exported for the daemon tests)


CANDIDATES = {  # the demo's candidates by name: file, quantization
    "int8": ("digits-int8-dynamic.onnx", "{method: dynamic, weight_bits: 8}"),
    "w8a3": ("digits-w8a3.onnx", "{method: static-per-tensor-truncating, weight_bits: 8, activation_bits: 3}"),
}
CLUSTER_RAY = "job_timeout_seconds: 120, unschedulable_after_seconds: 6, max_attempts: 3, retry_backoff_seconds: 0.5"


def cluster_config(tmp: Path, demo: Path, targets: Mapping[str, str | None], *, slow: bool = False, poll: float = 2,
                   extra: str = "", runner: str | None = None, daemon_extra: str = "", drain: float = 3,
                   ray: str = CLUSTER_RAY, probes: bool = True, candidates: Sequence[str] = ("int8", "w8a3"),
                   slice_checks: bool = True, listen: str | None = None, firmware: str = "1.0") -> Path:
    """The daemon tests' config over the demo digits model: each target pinned by its custom resource
    (None: wherever Ray runs it) with, unless `probes` is False, a firmware file probe holding `firmware`."""
    runner = runner or ("tests.plugins:SlowOnnxRunner" if slow else "onnxruntime")
    runners = ", ".join(dict.fromkeys(["onnxruntime", f'"{runner}"' if runner != "onnxruntime" else runner]))
    target_lines = []
    for name, resource in targets.items():
        lines = [f"  {name}:"] + ([f'    where: {{resource: "{resource}"}}'] if resource else [])
        lines += [f"    runners: [{runners}]", "    options: {onnxruntime: {intra_op_threads: 1}}"]
        if probes:
            probe = tmp / f"firmware-{name}"
            if not probe.exists():
                probe.write_text(f"{firmware}\n")
            lines.append(f"    probes: {{firmware: {{file: {probe}}}}}")
        target_lines.append("\n".join(lines))
    candidate_lines = "\n".join(f"""      {name}:
        path: {demo / CANDIDATES[name][0]}
        runner: "{runner}"
        quantization: {CANDIDATES[name][1]}""" for name in candidates)
    path = tmp / "targets.yaml"
    path.write_text(f"""version: 1
ledger: sqlite:///{tmp / 'ledger.db'}
ray: {{{ray}}}
schedule: {{poll_interval_seconds: {poll:g}, nightly: "0 2 * * *"}}
daemon: {{listen: "{listen or f'127.0.0.1:{free_port()}'}", drain_seconds: {drain:g}, log_format: json{daemon_extra}}}
targets:
{chr(10).join(target_lines)}
models:
  digits-mlp:
    baseline: {{path: {demo / 'digits-fp32.onnx'}, runner: onnxruntime}}
    suites: [digits]
    candidates:
{candidate_lines}
suites:
  digits:
    data: {demo / 'digits-eval.npz'}
    task: classification
    slices: [scan]
    min_slice_size: 50
    checks: {{max_drop: 0.03}}
{"    slice_checks: {max_drop: 0.08}" + chr(10) if slice_checks else ""}{extra}""")
    return path


class DaemonProcess:
    """`revalidator daemon` in its own process, connected to a cluster by address (or, with "", starting
    its own local Ray); `python` is the interpreter it runs under (an embedded Ray's workers use it too)."""

    def __init__(self, config: Path, ray_address: str, python: Path | None = None) -> None:
        self.config = config
        self.listen = next(line.split('listen: "')[1].split('"')[0] for line in config.read_text().splitlines()
                           if "listen:" in line)
        self.log = config.parent / f"daemon-{time.time_ns()}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("RAY_ADDRESS", None)
        if ray_address:
            env["RAY_ADDRESS"] = ray_address
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen([str(python or sys.executable), "-m", "scheduler.cli", "daemon", "-c", str(config)],
                                         cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)

    def get(self, path: str) -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(f"http://{self.listen}{path}", timeout=2) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def last_poll(self) -> float:
        """The daemon's revalidator_last_poll_timestamp_seconds (0 before its first poll)."""
        with urllib.request.urlopen(f"http://{self.listen}/metrics", timeout=5) as answer:
            text = answer.read().decode()
        for line in text.splitlines():
            if line.startswith("revalidator_last_poll_timestamp_seconds "):
                return float(line.split()[1])
        return 0.0

    def wait_polls(self, count: int, timeout: float = 60) -> None:
        """Return once the daemon has completed `count` more polls (observed, not slept)."""
        for _ in range(count):
            before = self.last_poll()
            wait_for(lambda: self.last_poll() > before, timeout, "the daemon's next poll")

    def token(self) -> str:
        """The sweep token the daemon wrote beside its config at start."""
        return (self.config.parent / ".revalidator" / "sweep-token").read_text().strip()

    def post(self, path: str, token: str | None = "", headers: dict[str, str] | None = None) -> int:
        """POST with the daemon's own token (by default), another one, or none (`token=None`)."""
        token = self.token() if token == "" else token
        sent = {**({"Authorization": f"Bearer {token}"} if token is not None else {}), **(headers or {})}
        request = urllib.request.Request(f"http://{self.listen}{path}", method="POST", headers=sent)
        try:
            with urllib.request.urlopen(request, timeout=2) as answer:
                return answer.status
        except urllib.error.HTTPError as exc:
            return exc.code

    def wait_ready(self, timeout: float = 60) -> None:
        def ready() -> bool:
            assert self.proc.poll() is None, f"daemon exited {self.proc.returncode}: {self.log.read_text()[-3000:]}"
            try:
                return self.get("/readyz")[0] == 200
            except OSError:
                return False
        wait_for(ready, timeout, "the daemon to be ready")

    def terminate(self, timeout: float) -> tuple[int, float]:
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        return code, time.monotonic() - started

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.kill()

    def logs(self) -> list[dict]:
        out = []
        for line in self.log.read_text().splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
        return out


def runs(config: Path) -> list[dict]:
    ledger = Ledger(f"sqlite:///{config.parent / 'ledger.db'}")
    try:
        return ledger.history(limit=10_000)
    finally:
        ledger.close()
