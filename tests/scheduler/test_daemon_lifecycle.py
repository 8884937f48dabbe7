"""The daemon's lifecycle in its own process and in this one: a start that fails says why and leaves
nothing for shutdown() to trip on, and a config reloaded while polls run is never seen half swapped."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from scheduler.config import load_config
from scheduler.daemon import Daemon
from scheduler.dispatch import InfrastructureError
from scheduler.gates import compute_gates
from tests.conftest import REPO, demo_config
from tests.scheduler.daemon_support import free_port


def config(tmp: Path, demo: Path, candidates: tuple[str, ...] = ("ort-int8-dynamic", "ort-w8a3"),
           listen: str | None = None, ray_address: str | None = None) -> Path:
    path = tmp / "targets.yaml"
    text = demo_config(demo, tmp / "ledger.db", candidates)
    if ray_address:
        text = text.replace("ray: {", f'ray: {{address: "{ray_address}", ')
    path.write_text(text + f'daemon: {{listen: "{listen or f"127.0.0.1:{free_port()}"}", drain_seconds: 2}}\n')
    return path


def test_a_start_that_cannot_listen_fails_naming_the_address_and_shutdown_returns(tmp_path: Path,
                                                                                  demo_dir: Path) -> None:
    with socket.socket() as held:  # the port is taken by another listener
        held.bind(("127.0.0.1", 0))
        held.listen()
        address = f"127.0.0.1:{held.getsockname()[1]}"
        daemon = Daemon(load_config(config(tmp_path, demo_dir, listen=address)))
        with pytest.raises(InfrastructureError, match=f"cannot listen on {address}: Address already in use"):
            daemon.start()
        assert daemon.start_error.startswith(f"cannot listen on {address}: Address already in use")
        daemon.shutdown()  # nothing was started but the ledger: it returns, and closes that
    assert daemon.ready is False and daemon.http is None


# Run in a fresh interpreter: a Ray already connected in this one would be reused, never reached.
FAILED_START = """
import json, sys, urllib.error, urllib.request
from scheduler.config import load_config
from scheduler.daemon import Daemon
daemon = Daemon(load_config(sys.argv[1]))
try:
    daemon.start()
except Exception as exc:
    raised = f"{type(exc).__name__}: {exc}"
answers = {}
for path in ("/healthz", "/readyz"):
    try:
        urllib.request.urlopen(f"http://{daemon.listen}{path}", timeout=10)
    except urllib.error.HTTPError as exc:
        answers[path] = [exc.code, json.loads(exc.read())]
daemon.shutdown()
try:
    urllib.request.urlopen(f"http://{daemon.listen}/healthz", timeout=10)
    served_after = True
except OSError:
    served_after = False
print(json.dumps({"raised": raised, "answers": answers, "served_after_shutdown": served_after}))
"""


def test_a_start_that_cannot_reach_ray_says_why_on_health_and_exits_3(tmp_path: Path, demo_dir: Path) -> None:
    closed = f"127.0.0.1:{free_port()}"  # nothing listens there
    path = config(tmp_path, demo_dir, ray_address=closed)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run([sys.executable, "-c", FAILED_START, str(path)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    why = f"cannot start or reach {closed}"
    assert seen["raised"].startswith("InfrastructureError: " + why)
    for path_ in ("/healthz", "/readyz"):
        code, body = seen["answers"][path_]
        assert code == 503 and body["status"] == "start failed" and body["error"].startswith(why)
    assert seen["served_after_shutdown"] is False  # shutdown() stopped the server it had started
    # The command: one line naming the reason, exit 3, and the shutdown after it ran to its end.
    daemon = subprocess.run([sys.executable, "-m", "scheduler.cli", "daemon", "-c", str(path)], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert daemon.returncode == 3, daemon.stderr[-3000:]
    assert daemon.stderr.strip().splitlines()[-1].startswith(f"error: {why}")
    assert "Traceback" not in daemon.stderr
    messages = [json.loads(line)["msg"] for line in (daemon.stdout + daemon.stderr).splitlines()
                if line.startswith("{")]
    assert messages.index("start failed") < messages.index("shutting down") < messages.index("stopped")


@pytest.mark.ray
def test_a_config_reloaded_while_polls_run_is_never_seen_with_another_configs_keys(tmp_path: Path, demo_dir: Path,
                                                                                   ray_local) -> None:
    path = config(tmp_path, demo_dir)
    texts = [path.read_text(), config(tmp_path, demo_dir, candidates=("ort-int8-static",)).read_text()]
    path.write_text(texts[0])
    daemon = Daemon(load_config(path))
    daemon.dispatcher.start()  # the session's Ray; no HTTP server, no schedule: polls are driven here
    reloads, seen, problems = 6, set(), []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            snap = daemon.snapshot()
            models = snap.loaded.config.models
            stray = [work for work in snap.keys if work[2] not in models[work[1]].candidates]
            if stray:
                problems.append(f"config {snap.loaded.hash[:8]} with keys of another config: {stray}")
            try:
                gates = compute_gates(daemon.ledger, snap.loaded, snap.keys)
            except Exception as exc:  # a KeyError when the keys name a candidate the config lacks
                problems.append(f"gates: {type(exc).__name__}: {exc}")
            else:
                if snap.keys:  # before the first poll there are none yet
                    seen.add((snap.loaded.hash, frozenset(g.candidate for g in gates)))

    readers = [threading.Thread(target=read) for _ in range(2)]
    for reader in readers:
        reader.start()
    try:
        daemon.poll(timeout=60)
        for i in range(1, reloads + 1):
            path.write_text(texts[i % 2])
            daemon.poll(timeout=60)
            assert daemon.loaded.hash == load_config(path).hash  # this poll reloaded it
    finally:
        done.set()
        for reader in readers:
            reader.join(timeout=60)
        daemon.shutdown()
    assert problems == []
    # The readers saw both configs, each with its own candidates.
    assert {candidates for _, candidates in seen} == {frozenset({"ort-int8-dynamic", "ort-w8a3"}),
                                                      frozenset({"ort-int8-static"})}
