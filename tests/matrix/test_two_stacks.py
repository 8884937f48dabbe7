"""Two real targets of different stacks on one machine: two `ray start` worker nodes, one running its
workers with a Python environment that holds onnxruntime ORT_OLD, the other with this test run's own
(ORT_NEW), validating the same int8 candidate; `compare` reports the rows and slices that differ."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.envs import ORT_NEW, ORT_OLD, layered_env, version_in
from tests.helm.test_ray_processes import own_ports
from tests.scheduler.daemon_support import DaemonProcess, free_port, wait_for

pytestmark = pytest.mark.ray

# `ray start` run by a given interpreter: its raylet starts its workers with that same interpreter.
RAY_MAIN = "from ray.scripts.scripts import main; main()"


def ray_start(python: Path, *args: str, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    environ = {**os.environ, **(env or {}), "PYTHONPATH": str(REPO)}
    environ.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)  # set to 0, `ray start --address` refuses to join
    with open(log, "w") as out:
        return subprocess.Popen([str(python), "-c", RAY_MAIN, "start", "--block", "--disable-usage-stats",
                                 "--node-ip-address=127.0.0.1", "--object-store-memory=100000000", *args],
                                stdout=out, stderr=subprocess.STDOUT, env=environ)


def config(tmp: Path, demo: Path, address: str, isa: dict[str, Path]) -> Path:
    targets = "".join(f"""  {name}:
    where: {{resource: "target:{name}"}}
    runners: [onnxruntime, "tests.plugins:IsaOnnxRunner"]
    options: {{onnxruntime: {{intra_op_threads: 1}}}}
    probes: {{cpu_isa: {{file: {isa[name]}}}}}
""" for name in isa)
    path = tmp / "targets.yaml"
    path.write_text(f"""version: 1
ledger: sqlite:///{tmp / 'ledger.db'}
ray: {{address: "{address}", job_timeout_seconds: 300, unschedulable_after_seconds: 120, max_attempts: 2}}
metrics: {{max_cross_target_disagreement: 0.0}}
daemon: {{listen: "127.0.0.1:{free_port()}", log_format: json, drain_seconds: 3}}
targets:
{targets}models:
  digits-mlp:
    baseline: {{path: {demo / 'digits-fp32.onnx'}, runner: onnxruntime}}
    suites: [digits]
    candidates:
      int8:
        path: {demo / 'digits-int8-static.onnx'}
        runner: onnxruntime
        quantization: {{method: static-qdq, weight_bits: 8, activation_bits: 8}}
      int8-isa:
        path: {demo / 'digits-int8-static.onnx'}
        runner: "tests.plugins:IsaOnnxRunner"
        quantization: {{method: static-qdq, weight_bits: 8, activation_bits: 8}}
suites:
  digits:
    data: {demo / 'digits-eval.npz'}
    task: classification
    slices: [digit, scan]
    min_slice_size: 50
    checks: {{max_drop: 0.03}}
""")
    return path


def cli(*argv: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    return subprocess.run([sys.executable, "-m", "scheduler.cli", *argv], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def worker_interpreters(address: str) -> dict[str, list[str]]:
    """What a task pinned to each node runs with: (sys.executable, onnxruntime's version)."""
    code = f"""
import json, ray, sys
ray.init(address="{address}", log_to_driver=False)
def where():
    import onnxruntime
    return [sys.executable, onnxruntime.__version__]
task = ray.remote(where)
print(json.dumps({{n: ray.get(task.options(resources={{"target:" + n: 0.001}}).remote(), timeout=120)
                  for n in ("old", "new")}}))
"""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_one_int8_file_on_two_onnxruntime_releases(tmp_path: Path, demo_dir: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # One token for every node and every driver, as a cluster's pods get it from a Secret.
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
    old_python = layered_env(tmp_path / "env-old", {"onnxruntime": ORT_OLD})
    assert version_in(old_python, "onnxruntime") == ORT_OLD
    assert version_in(Path(sys.executable), "onnxruntime") == ORT_NEW
    isa = {"old": tmp_path / "isa-old", "new": tmp_path / "isa-new"}
    isa["old"].write_text("avx512-vnni\n")
    isa["new"].write_text("avx2\n")
    port = free_port()
    address = f"127.0.0.1:{port}"
    nodes = [ray_start(Path(sys.executable), "--head", f"--port={port}", "--num-cpus=0", "--include-dashboard=false",
                       *own_ports(range(12000, 12999)), log=tmp_path / "head.log")]
    try:
        def started(log: Path) -> bool:
            return log.exists() and "Ray runtime started" in log.read_text()

        wait_for(lambda: started(tmp_path / "head.log"), 90, "the head node")
        for name, python, workers in (("old", old_python, range(13000, 13999)),
                                      ("new", Path(sys.executable), range(14000, 14999))):
            nodes.append(ray_start(python, f"--address={address}", "--num-cpus=1",
                                   f'--resources={{"target:{name}": 1}}', *own_ports(workers),
                                   log=tmp_path / f"{name}.log",
                                   env={"REVALIDATOR_TEST_CPU_ISA_FILE": str(isa[name])}))
            wait_for(lambda: started(tmp_path / f"{name}.log"), 90, f"worker {name}")
        # each node's workers run with the interpreter its `ray start` ran with
        seen = worker_interpreters(address)
        assert seen == {"old": [str(old_python), ORT_OLD], "new": [sys.executable, ORT_NEW]}

        path = config(tmp_path, demo_dir, address, isa)
        done = cli("validate", "-c", str(path), "--json")
        assert done.returncode in (0, 1), done.stderr[-3000:]
        runs = json.loads(done.stdout)["runs"]
        assert sorted((r["target"], r["candidate"], r["status"]) for r in runs) == [
            ("new", "int8", "finished"), ("new", "int8-isa", "finished"),
            ("old", "int8", "finished"), ("old", "int8-isa", "finished")]
        versions = {r["target"]: r["provenance"]["fingerprint"]["components"]["onnxruntime"] for r in runs}
        assert versions == {"old": ORT_OLD, "new": ORT_NEW}

        done = cli("compare", "-c", str(path), "--json")
        doc = json.loads(done.stdout)
        pairs = {p["candidate"]: p for p in doc["cross_target"]}
        assert set(pairs) == {"int8", "int8-isa"}
        for pair in pairs.values():
            assert pair["targets"] == ["new", "old"]
            changed = {d["component"]: (d["first"], d["second"]) for d in pair["fingerprint_diff"]}
            assert changed["onnxruntime"] == (ORT_NEW, ORT_OLD)
        # The two releases answer every row of the int8 file bit for bit alike: compare says so.
        same = pairs["int8"]
        assert same["identical"] and same["rows"]["models"]["candidate"]["differ"] == 0
        assert same["diverging_slices"] == [] and same["agreement"] == 1.0
        # On the stand-in AVX2 host the same file runs another kernel path: rows and slices differ.
        isa_pair = pairs["int8-isa"]
        rows = isa_pair["rows"]["models"]["candidate"]
        assert not isa_pair["identical"] and rows["differ"] > 0 and rows["rows"]
        assert isa_pair["rows"]["models"]["baseline"]["differ"] == 0  # the fp32 baseline is identical on both
        assert isa_pair["diverging_slices"] and all(s.split("=")[0] in ("digit", "scan")
                                                    for s in isa_pair["diverging_slices"])
        assert changed_components(isa_pair) >= {"onnxruntime", "cpu_isa"}
        assert done.returncode == (1 if not isa_pair["within_bound"] else 0)

        # the audit report of the diverging run shows the same cross-target view
        page = tmp_path / "int8-isa.html"
        isa_run = next(r for r in runs if (r["target"], r["candidate"]) == ("new", "int8-isa"))
        assert cli("report", isa_run["run_id"], "-c", str(path), "--html", str(page)).returncode == 0
        html = page.read_text()
        assert "<h3>new vs old</h3>" in html and f"<td class=\"l\">{ORT_OLD}</td>" in html
        assert f"candidate: {rows['differ']} of 1482 rows differ between new and old" in html

        human = cli("compare", "-c", str(path))
        assert "the two targets agree on every row (1482 rows, bit-identical outputs)" in human.stdout
        assert f"onnxruntime  new: {ORT_NEW}   old: {ORT_OLD}" in human.stdout
        assert f"candidate: {rows['differ']} of 1482 rows differ between new and old" in human.stdout

        # the daemon serves the same document at /compare, and the agreement series on /metrics
        daemon = DaemonProcess(path, ray_address="")
        try:
            daemon.wait_ready(timeout=120)
            status, served = daemon.get("/compare?model=digits-mlp")
            assert status == 200
            assert {(p["candidate"], p["identical"]) for p in served["cross_target"]} == {("int8", True),
                                                                                        ("int8-isa", False)}
            with urllib.request.urlopen(f"http://{daemon.listen}/metrics", timeout=10) as answer:
                metrics = answer.read().decode()
            assert ('revalidator_cross_target_agreement_ratio{candidate="int8-isa",model="digits-mlp",'
                    'other_target="old",target="new"} 1.0') in metrics
            assert daemon.terminate(timeout=60)[0] == 0
        finally:
            daemon.close()
    finally:
        for node in reversed(nodes):
            node.terminate()
            try:
                node.wait(timeout=30)
            except subprocess.TimeoutExpired:
                node.kill()


def changed_components(pair: dict) -> set[str]:
    return {d["component"] for d in pair["fingerprint_diff"]}
