"""Ray as the chart's pods run it: `ray start --head` and two `ray start` workers, each worker
offering one target's resource, as separate processes on 127.0.0.1; the daemon connects by address
and validates on both targets."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.scheduler.daemon_support import DaemonProcess, cluster_config, free_port, runs, wait_for

pytestmark = pytest.mark.ray


def own_ports(worker_range: range) -> list[str]:
    """Ports of one node's own services: several nodes on one host must not share the defaults."""
    flags = ["node-manager-port", "object-manager-port", "metrics-export-port", "dashboard-agent-listen-port",
             "dashboard-agent-grpc-port", "runtime-env-agent-port"]
    return [f"--{flag}={free_port()}" for flag in flags] + [
        f"--min-worker-port={worker_range.start}", f"--max-worker-port={worker_range.stop}"]


def ray_start(*args: str, log: Path) -> subprocess.Popen:
    """`ray start --block`: the process owns its Ray daemons and stops them when terminated."""
    ray = Path(sys.executable).parent / "ray"
    env = dict(os.environ)
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)  # set to 0, `ray start --address` refuses to join
    with open(log, "w") as out:
        return subprocess.Popen([str(ray), "start", "--block", "--disable-usage-stats", "--node-ip-address=127.0.0.1",
                                 "--object-store-memory=100000000", *args], stdout=out, stderr=subprocess.STDOUT,
                                env=env)


def test_daemon_validates_on_two_targets_of_a_ray_start_cluster(tmp_path: Path, demo_dir: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # One token for every node and the daemon, as the chart's pods would get it from a Secret.
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
    port = free_port()
    address = f"127.0.0.1:{port}"
    nodes = [ray_start("--head", f"--port={port}", "--num-cpus=0", "--include-dashboard=false",
                       *own_ports(range(12000, 12999)),
                       log=tmp_path / "head.log")]
    daemon = None
    try:
        def started(log: Path) -> bool:
            return log.exists() and "Ray runtime started" in log.read_text()

        wait_for(lambda: started(tmp_path / "head.log"), 60, "the head node")
        for name, workers in (("cpu-a", range(13000, 13999)), ("cpu-b", range(14000, 14999))):
            # one after the other: two raylets starting at once on one host can race for a port
            nodes.append(ray_start(f"--address={address}", "--num-cpus=1", f'--resources={{"target:{name}": 1}}',
                                   *own_ports(workers), log=tmp_path / f"{name}.log"))
            wait_for(lambda: started(tmp_path / f"{name}.log"), 60, f"worker {name}")
        config = cluster_config(tmp_path, demo_dir, {"a": "target:cpu-a", "b": "target:cpu-b"})
        # workers may register their resources a little after they report started: no tight deadline here
        config.write_text(config.read_text().replace("ray: {", f'ray: {{address: "{address}", ')
                          .replace("unschedulable_after_seconds: 6", "unschedulable_after_seconds: 120"))
        daemon = DaemonProcess(config, ray_address="")
        daemon.wait_ready(timeout=90)
        wait_for(lambda: len([r for r in runs(config) if r["status"] == "finished"]) == 4, 120, "both targets")
        assert Counter(r["target"] for r in runs(config)) == {"a": 2, "b": 2}
        startup = [line for line in daemon.logs() if line["msg"] == "daemon started"][0]
        assert startup["targets"] == ["a", "b"]
        assert daemon.terminate(timeout=30)[0] == 0
    finally:
        if daemon is not None:
            daemon.close()
        for node in reversed(nodes):
            node.terminate()
            try:
                node.wait(timeout=30)
            except subprocess.TimeoutExpired:
                node.kill()
