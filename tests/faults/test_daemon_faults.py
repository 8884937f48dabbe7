"""Faults 5 (`/sweep` is open) and 9 (two meanings of "gate"): the daemon as a real process on a real
one-node Ray cluster, real HTTP, the CLI as a real process.

The candidates run through a runner that waits while "<artifact>.hold" exists, so that the
first sweep's jobs are certainly queued or running while the forced sweeps arrive.
"""

from __future__ import annotations

import http.client
import shutil
import subprocess
import json
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.scheduler.daemon_support import DaemonProcess, cluster_config, free_port, runs, wait_for

pytestmark = pytest.mark.ray

DEMO_FILES = ("digits-fp32.onnx", "digits-int8-dynamic.onnx", "digits-w8a3.onnx", "digits-eval.npz")
HELD = ("digits-int8-dynamic.onnx", "digits-w8a3.onnx")


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "resources": {"target:a": 2}, "include_dashboard": False, "gcs_server_port": free_port()})
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


@pytest.fixture
def daemon(cluster, demo_dir: Path, tmp_path: Path):
    demo = tmp_path / "demo"
    demo.mkdir()
    for name in DEMO_FILES:
        shutil.copy(demo_dir / name, demo / name)
    for name in HELD:
        (demo / f"{name}.hold").touch()
    config = cluster_config(tmp_path, demo, {"a": "target:a"}, runner="tests.plugins:HeldOnnxRunner")
    process = DaemonProcess(config, cluster.address)
    yield process, demo
    for name in HELD:
        (demo / f"{name}.hold").unlink(missing_ok=True)
    process.close()


def raw(listen: str, method: str, path: str, headers: dict[str, str]) -> int:
    """A request with exactly these headers (urllib always adds its own Host)."""
    host, port = listen.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    conn.putrequest(method, path, skip_host=True)
    for key, value in headers.items():
        conn.putheader(key, value)
    conn.endheaders()
    status = conn.getresponse().status
    conn.close()
    return status


def test_sweep_needs_the_token_and_this_host_and_a_forced_sweep_never_queues_work_twice(daemon) -> None:
    process, demo = daemon
    process.wait_ready()
    config = process.config
    # The catch-up sweep at start queues both candidates; they are held running.
    wait_for(lambda: len(runs(config)) == 2, 60, "the catch-up sweep's two jobs")
    token = process.token()
    assert (config.parent / ".revalidator" / "sweep-token").stat().st_mode & 0o077 == 0  # the owner's only

    # No token, a wrong one, another scheme, or a rebound host name: refused, nothing queued.
    assert process.post("/sweep?force=1", token=None) == 401
    assert process.post("/sweep?force=1", token="x" * 43) == 401
    assert process.post("/sweep?force=1", token=None, headers={"Authorization": f"Basic {token}"}) == 401
    port = process.listen.rsplit(":", 1)[1]
    bearer = {"Authorization": f"Bearer {token}"}
    assert raw(process.listen, "POST", "/sweep?force=1", {"Host": f"evil.example:{port}", **bearer}) == 421
    assert raw(process.listen, "GET", "/status", {"Host": f"evil.example:{port}"}) == 421
    assert raw(process.listen, "POST", "/sweep?force=1", bearer) == 421  # no Host at all
    # Read-only endpoints stay open on loopback, by IP literal or localhost.
    assert raw(process.listen, "GET", "/healthz", {"Host": f"localhost:{port}"}) == 200
    assert raw(process.listen, "GET", "/metrics", {"Host": process.listen}) == 200

    # Ten forced sweeps while both jobs are held: each one plans them and queues nothing.
    for _ in range(10):
        assert process.post("/sweep?force=1") == 202
    wait_for(lambda: sum(1 for e in process.logs() if e.get("msg") == "planned"
                         and e.get("trigger") == "manual") == 10, 60, "the ten forced sweeps to be planned")
    forced = [e for e in process.logs() if e.get("msg") == "planned" and e.get("trigger") == "manual"]
    assert [(e["jobs"], e["already_done"]) for e in forced] == [(0, 2)] * 10
    assert len(runs(config)) == 2

    # Let them finish: each ran once. A forced sweep now re-runs both (finished work is forced again).
    for name in HELD:
        (demo / f"{name}.hold").unlink()
    wait_for(lambda: [r["status"] for r in runs(config)] == ["finished"] * 2, 90, "the held jobs")
    cli = subprocess.run([sys.executable, "-m", "scheduler.cli", "sweep", "-c", str(config), "--force"],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0 and "sweep queued by the daemon" in cli.stdout, cli.stderr
    wait_for(lambda: len([r for r in runs(config) if r["status"] == "finished"]) == 4, 90, "the forced re-runs")
    assert sorted(r["trigger"] for r in runs(config)) == ["catch-up", "catch-up", "manual", "manual"]
    assert process.get("/healthz")[0] == 200 and process.get("/readyz")[0] == 200
    assert process.terminate(timeout=30)[0] == 0


def states(gates: list[dict]) -> dict[tuple[str, str, str], tuple[str, str]]:
    return {(g["target"], g["model"], g["candidate"]): (g["state"], g["use"]) for g in gates}


def from_gates_document(document: dict) -> list[dict]:
    return [g for targets in document["models"].values() for gates in targets.values() for g in gates]


def cli_status(config: Path) -> tuple[int, list[dict]]:
    done = subprocess.run([sys.executable, "-m", "scheduler.cli", "status", "-c", str(config), "--json"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(done.stdout)["gates"]


def test_status_cli_status_endpoint_and_gates_give_one_answer_before_and_after_a_stack_change(daemon) -> None:
    process, demo = daemon
    config = process.config
    for name in HELD:
        (demo / f"{name}.hold").unlink()
    process.wait_ready()
    wait_for(lambda: [r["status"] for r in runs(config)] == ["finished"] * 2, 90, "the catch-up sweep")

    def answers() -> tuple[dict, dict, dict, int]:
        code, cli = cli_status(config)
        return (states(cli), states(process.get("/status")[1]["gates"]),
                states(from_gates_document(process.get("/gates")[1])), code)
    wait_for(lambda: answers()[0][("a", "digits-mlp", "int8")] == ("pass", "candidate"), 30, "the first gates")
    cli, endpoint, gates, code = answers()
    assert cli == endpoint == gates == {("a", "digits-mlp", "int8"): ("pass", "candidate"),
                                        ("a", "digits-mlp", "w8a3"): ("fail", "baseline")}
    assert code == 1  # one gate serves the baseline

    # A stack change whose re-validation is held running: every source says unknown, baseline.
    for name in HELD:
        (demo / f"{name}.hold").touch()
    (config.parent / "firmware-a").write_text("2.0\n")
    wait_for(lambda: len(runs(config)) == 4, 60, "the stack change to be planned")
    wait_for(lambda: answers()[0][("a", "digits-mlp", "int8")][0] == "unknown", 30, "the gate to go stale")
    cli, endpoint, gates, code = answers()
    assert cli == endpoint == gates == {("a", "digits-mlp", "int8"): ("unknown", "baseline"),
                                        ("a", "digits-mlp", "w8a3"): ("unknown", "baseline")}
    assert code == 1
    # The ledger's latest run per (target, model, candidate) still says pass: the old meaning of status.
    assert {r["candidate"]: r["verdict"] for r in runs(config) if r["status"] == "finished"}["int8"] == "pass"

    for name in HELD:
        (demo / f"{name}.hold").unlink()
    wait_for(lambda: answers()[0][("a", "digits-mlp", "int8")] == ("pass", "candidate"), 90, "the re-validation")
    cli, endpoint, gates, _ = answers()
    assert cli == endpoint == gates
    assert process.terminate(timeout=30)[0] == 0


def test_a_target_first_seen_after_start_up_is_validated_on_its_stack_not_left_unknown(cluster, demo_dir: Path,
                                                                                      tmp_path: Path) -> None:
    hold = tmp_path / "probe.hold"
    hold.touch()
    config = cluster_config(tmp_path, demo_dir, {"a": "target:a"})
    # A command probe that hangs while the hold file exists: the start-up look at the target times out.
    probe = f'probes: {{firmware: {{command: [sh, -c, "while [ -e {hold} ]; do sleep 0.1; done; echo 1.0"], ' \
            'timeout_seconds: 120}}'
    text = config.read_text()
    text = text.replace(text[text.index("probes: {firmware: {file:"):].split("\n")[0], probe)
    # the start-up look gives up after 5 s (schedule.startup_probe_seconds), not the default 30
    config.write_text(text.replace("schedule: {", "schedule: {startup_probe_seconds: 5, ", 1))
    process = DaemonProcess(config, cluster.address)
    try:
        process.wait_ready(timeout=120)
        unreachable = [e for e in process.logs() if e.get("msg") == "target unreachable"]
        assert unreachable and unreachable[0]["target"] == "a"
        wait_for(lambda: len(runs(config)) == 2, 60, "the catch-up sweep, planned without a's stack")
        hold.unlink()
        # The first successful probe plans a's jobs on its stack; every gate ends decided, none unknown.
        wait_for(lambda: [r["trigger"] for r in runs(config) if r["status"] == "finished"].count("stack-change") == 2,
                 120, "a's jobs on its probed stack")
        gates = states(from_gates_document(process.get("/gates")[1]))
        assert gates == {("a", "digits-mlp", "int8"): ("pass", "candidate"),
                         ("a", "digits-mlp", "w8a3"): ("fail", "baseline")}
        assert any(e.get("msg") == "first look at a target" for e in process.logs())
        assert process.terminate(timeout=30)[0] == 0
    finally:
        hold.unlink(missing_ok=True)
        process.close()
