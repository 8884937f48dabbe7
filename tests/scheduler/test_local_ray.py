"""The local Ray one-shot commands share (scheduler/local_ray.py), through real `revalidator validate`
processes: the first starts it, the next attach to it and run their jobs in fresh workers of their
own, a command with another environment gets an instance of its own, an idle instance stops itself,
and a supervisor that dies takes its Ray with it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scheduler import local_ray
from tests.conftest import REPO, demo_config

pytestmark = pytest.mark.ray


def validate(config: Path, instances: Path, **extra_env: str) -> dict:
    env = {**os.environ, local_ray.DIRECTORY_ENV: str(instances), "PYTHONPATH": str(REPO), **extra_env}
    env.pop(local_ray.MODE_ENV)  # the suite's default is a Ray per command
    proc = subprocess.run([sys.executable, "-m", "scheduler.cli", "validate", "--json", "-c", str(config)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode in (0, 1), proc.stderr
    doc = json.loads(proc.stdout)
    assert all(r["status"] == "finished" for r in doc["runs"]), doc["runs"]
    return doc


def live(instances: Path) -> dict[Path, dict]:
    return dict(local_ray.instances(instances))


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def gone(pid: int) -> bool:
    """True once `pid` has exited (a zombie of another parent counts as exited)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][:1] == "Z"
    except (OSError, IndexError):
        return True


def write_config(tmp_path: Path, demo_dir: Path, keep_seconds: float) -> Path:
    text = demo_config(demo_dir, tmp_path / "ledger.db", candidates=("ort-int8-dynamic", "ort-w8a3"))
    text = text.replace("ray: {", f"ray: {{keep_local_seconds: {keep_seconds}, ", 1)
    (tmp_path / "targets.yaml").write_text(text)
    return tmp_path / "targets.yaml"


def warmed(config: Path) -> list[int]:
    """The pids of the workers warmed so far (scheduler/warmup.py), from the one-shot log beside the config."""
    lines = (config.parent / ".revalidator" / "validate.log").read_text().splitlines()
    return [int(line.rsplit("pid=", 1)[1].split()[0]) for line in lines if "worker warmed" in line]


def worker_pids(doc: dict) -> set[int]:
    return {r["provenance"]["loaded"]["pid"] for r in doc["runs"]}


def test_one_shot_commands_share_a_kept_local_ray(tmp_path: Path, demo_dir: Path) -> None:
    config, instances = write_config(tmp_path, demo_dir, keep_seconds=600), tmp_path / "instances"
    try:
        first = validate(config, instances)
        assert first["ray_origin"] == "shared, started"
        (directory, state), = live(instances).items()
        assert (directory / "state.json").stat().st_mode & 0o077 == 0  # the token is the user's alone

        second = validate(config, instances)
        assert second["ray_origin"] == "shared, reused"
        assert live(instances) == {directory: state}  # the same supervisor, head and token
        # the same verdicts, computed by workers of the second command's own, not the first one's
        assert [(r["candidate"], r["verdict"]) for r in second["runs"]] == \
               [(r["candidate"], r["verdict"]) for r in first["runs"]]
        assert worker_pids(second).isdisjoint(worker_pids(first))
        # the first job ran in the worker warmed while the command planned (scheduler/warmup.py)
        # one per command (its target runs one job at a time), and every job ran in its command's warmed worker
        warmed_pids = warmed(config)
        assert len(warmed_pids) == 2 and [worker_pids(first), worker_pids(second)] == [{pid} for pid in warmed_pids]

        # workers inherit the environment of the command that started their Ray: another one gets its own
        config.write_text(config.read_text().replace("  local-cpu:\n", "  local-cpu:\n    max_concurrent_jobs: 2\n"))
        other = validate(config, instances, OMP_NUM_THREADS="1")
        assert other["ray_origin"] == "shared, started"
        assert len(live(instances)) == 2
        # a target that runs two jobs at once gets two warm-ups, and its jobs ran in their workers
        assert len(warmed(config)[2:]) == 2
        assert worker_pids(other) <= set(warmed(config)[2:])
    finally:
        kept = live(instances)
        for directory in kept:
            assert local_ray.stop(directory)
    for state in kept.values():
        wait_until(lambda: gone(state["ray_pid"]), 60, "ray start to exit with its supervisor")
    assert live(instances) == {}


def kept_drivers(directory: Path) -> list[int]:
    """The pids of the kept drivers (scheduler/kept_driver.py) of the instance in `directory`."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"scheduler.kept_driver" in argv and str(directory).encode() in argv and not gone(int(proc.name)):
            found.append(int(proc.name))
    return found


def test_an_idle_local_ray_stops_itself(tmp_path: Path, demo_dir: Path) -> None:
    config, instances = write_config(tmp_path, demo_dir, keep_seconds=1), tmp_path / "instances"
    validate(config, instances, **{local_ray.DRIVER_ENV: "on"})
    directory = next(d for d in instances.iterdir() if d.is_dir() and not d.name.startswith("driver-"))
    state = json.loads((directory / "state.json").read_text())
    try:
        wait_until(lambda: gone(state["supervisor_pid"]) and gone(state["ray_pid"]), 90, "the idle Ray to stop")
        assert not (directory / "state.json").exists()
        assert "stopped (idle)" in (directory / "supervisor.log").read_text()
        # it had started its kept driver once the command let go, and ended it first
        assert (directory / "driver.log").exists() and kept_drivers(directory) == []
    finally:
        local_ray.stop(directory)


def test_a_killed_supervisor_takes_its_ray_along_and_is_replaced(tmp_path: Path, demo_dir: Path) -> None:
    config, instances = write_config(tmp_path, demo_dir, keep_seconds=600), tmp_path / "instances"
    validate(config, instances, **{local_ray.DRIVER_ENV: "on"})
    (directory, state), = live(instances).items()
    try:
        wait_until(lambda: kept_drivers(directory), 60, "the supervisor to start its kept driver")
        os.kill(state["supervisor_pid"], signal.SIGKILL)
        wait_until(lambda: gone(state["ray_pid"]), 60, "ray start to stop with its supervisor")
        wait_until(lambda: not kept_drivers(directory), 60, "the kept driver to stop with its supervisor")
        again = validate(config, instances, **{local_ray.DRIVER_ENV: "on"})
        assert again["ray_origin"] == "shared, started"
        (_, replaced), = live(instances).items()
        assert replaced["supervisor_pid"] != state["supervisor_pid"] and alive(replaced["supervisor_pid"])
    finally:
        for directory in live(instances):
            local_ray.stop(directory)
