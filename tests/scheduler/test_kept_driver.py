"""The kept driver of a kept local Ray (scheduler/kept_driver.py), through real `revalidator validate`
processes (`python -m scheduler.entry`, the executable's entry): once the first command has started
the kept Ray, the next ones are run by its driver, in its kept workers, with the verdicts, exit codes,
messages and ledger records of a command run in its own process; what it cannot run so (another
config's Ray, changed code) runs the ordinary way."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from scheduler import local_ray
from tests.conftest import REPO, demo_config
from tests.e2e.observability import wait_for
from tests.faults.support import stop_validate

pytestmark = pytest.mark.ray

PLUGIN = '''"""onnxruntime under a plugin's name: a module the kept driver's workers import from elsewhere."""
from runners.backends.onnxruntime_runner import OnnxRuntimeRunner


class PluginOnnxRunner(OnnxRuntimeRunner):
    name = "plugin-onnxruntime"
'''


@dataclass
class Kept:
    root: Path
    env: dict[str, str]
    config: Path
    first: dict  # the command that started the kept Ray (run in its own process)
    first_code: int

    @property
    def driver_log(self) -> str:
        return "".join(p.read_text() for p in (self.root / "instances").glob("*/driver.log"))


def run(kept: Kept, *args: str, module: str = "scheduler.entry") -> tuple[int, str, str, int]:
    """A command in its own process: (exit code, stdout, stderr, pid)."""
    proc = subprocess.Popen([sys.executable, "-m", module, *args], cwd=REPO, env=kept.env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err, proc.pid


def validate(kept: Kept, config: Path, module: str = "scheduler.entry") -> tuple[int, dict, int]:
    code, out, err, pid = run(kept, "validate", "--json", "-c", str(config), module=module)
    assert code in (0, 1), err
    doc = json.loads(out)
    assert all(r["status"] == "finished" for r in doc["runs"]), doc["runs"]
    return code, doc, pid


def driver_state(kept: Kept, not_pid: int | None = None) -> dict:
    """The kept driver's state once it is ready (and is not the driver `not_pid`)."""
    def ready() -> dict | None:
        for path in (kept.root / "instances").glob("driver-*/driver.json"):
            try:
                state = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if state["pid"] != not_pid and not gone(state["pid"]):
                return state
        return None
    return wait_for(ready, 180, "the kept driver to be ready")


def gone(pid: int) -> bool:
    """True once `pid` has exited (a zombie of another parent counts as exited)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][:1] == "Z"
    except (OSError, IndexError):
        return True


def verdicts(doc: dict) -> list[tuple[str, str]]:
    return [(r["candidate"], r["verdict"]) for r in doc["runs"]]


def worker_pids(doc: dict) -> set[int]:
    return {r["provenance"]["loaded"]["pid"] for r in doc["runs"]}


def variant(kept: Kept, name: str, runner: str, ledger: str | None = None) -> Path:
    """The module's config with its candidates run by a plugin runner."""
    text = kept.config.read_text().replace("runners: [onnxruntime, torch]",
                                           f'runners: [onnxruntime, torch, "{runner}"]')
    text = text.replace("        runner: onnxruntime", f'        runner: "{runner}"')
    if ledger:
        text = text.replace(str(kept.root / "ledger.db"), str(kept.root / ledger))
    (kept.root / name).write_text(text)
    return kept.root / name


@pytest.fixture(scope="module")
def kept(tmp_path_factory: pytest.TempPathFactory, demo_dir: Path):
    root = tmp_path_factory.mktemp("kept")  # a short path: the driver's socket must fit in 107 bytes
    (root / "plugins").mkdir()
    (root / "plugins" / "kept_plugin.py").write_text(PLUGIN)
    env = {**os.environ, local_ray.DIRECTORY_ENV: str(root / "instances"),
           "PYTHONPATH": f"{REPO}{os.pathsep}{root / 'plugins'}"}
    env.pop(local_ray.MODE_ENV, None)  # the suite's default is a Ray per command, with no kept driver
    env.pop(local_ray.DRIVER_ENV, None)
    env.pop("RAY_ADDRESS", None)
    text = demo_config(demo_dir, root / "ledger.db", candidates=("ort-int8-dynamic", "ort-w8a3"))
    (root / "targets.yaml").write_text(text.replace("ray: {", "ray: {keep_local_seconds: 600, ", 1))
    kept = Kept(root, env, root / "targets.yaml", {}, -1)
    try:
        kept.first_code, kept.first, _ = validate(kept, kept.config)
        assert kept.first["ray_origin"] == "shared, started"
        yield kept
    finally:
        drivers = [json.loads(p.read_text())["pid"] for p in (root / "instances").glob("driver-*/driver.json")]
        rays = [s["ray_pid"] for _, s in local_ray.instances(root / "instances")]
        code, _, err, _ = run(kept, "local-ray", "--stop", module="scheduler.cli")
        assert code == 0, err
    for pid in drivers + rays:  # the supervisors ended their drivers, then their Rays
        wait_for(lambda: gone(pid), 60, f"process {pid} to end")
    assert not list((root / "instances").glob("driver-*/socket"))


def test_the_next_validate_is_served_by_the_kept_driver_in_its_kept_workers(kept: Kept) -> None:
    state = driver_state(kept)
    code, served, pid = validate(kept, kept.config)
    assert served["ray_origin"] == "shared, kept driver"
    assert f"served pid {pid}: validate --json" in kept.driver_log
    assert (code, verdicts(served)) == (kept.first_code, verdicts(kept.first))
    code, again, _ = validate(kept, kept.config)
    assert again["ray_origin"] == "shared, kept driver" and code == kept.first_code
    # both ran in the worker the driver warmed when it started, not in the first command's
    assert worker_pids(served) == worker_pids(again) == set(state["warmed"])
    assert worker_pids(served).isdisjoint(worker_pids(kept.first))


@pytest.mark.parametrize("ray_settings, why", [
    ("keep_local_seconds: 0", "the config does not use a kept local Ray"),
    ("keep_local_seconds: 600, num_cpus: 1", "the config's CPU count is another instance's"),
])
def test_a_config_the_driver_cannot_serve_runs_the_ordinary_way(kept: Kept, ray_settings: str, why: str) -> None:
    """Declined, the command runs in its own process: here it stops at its bad --model before it
    reaches Ray (a declined command that runs its jobs: test_changed_plugin_code_restarts...)."""
    driver_state(kept)
    other = kept.root / "other-ray.yaml"
    other.write_text(kept.config.read_text().replace("keep_local_seconds: 600", ray_settings))
    code, _, err, pid = run(kept, "validate", "-c", str(other), "--model", "nope")
    assert code == 2 and err.startswith("error: --model 'nope': no such model"), err
    assert f"declined pid {pid}: {why}" in kept.driver_log


def test_changed_plugin_code_restarts_the_driver_and_its_workers(kept: Kept) -> None:
    config = variant(kept, "plugin.yaml", "kept_plugin:PluginOnnxRunner")
    state = driver_state(kept)
    _, before, _ = validate(kept, config)
    assert before["ray_origin"] == "shared, kept driver"
    plugin = kept.root / "plugins" / "kept_plugin.py"
    os.utime(plugin, (plugin.stat().st_atime, plugin.stat().st_mtime + 10))
    _, declined, pid = validate(kept, config)
    assert declined["ray_origin"] == "shared, reused"  # run in its own process, on the kept Ray
    assert f"declined pid {pid}: a plugin runner's code changed" in kept.driver_log
    replaced = driver_state(kept, not_pid=state["pid"])
    _, after, _ = validate(kept, config)
    assert after["ray_origin"] == "shared, kept driver"
    assert worker_pids(after) == set(replaced["warmed"]) and worker_pids(after).isdisjoint(worker_pids(before))
    assert verdicts(before) == verdicts(declined) == verdicts(after)


def recorded(ledger: Path) -> list[tuple[str, str | None]]:
    """(status, error) of every run in the ledger."""
    try:
        with sqlite3.connect(ledger) as conn:
            return list(conn.execute("SELECT status, error FROM runs"))
    except sqlite3.Error:
        return []


def slow_command(kept: Kept, name: str) -> tuple[subprocess.Popen, Path]:
    """A served `validate` whose jobs take seconds to load their models, once one of them runs."""
    config = variant(kept, f"{name}.yaml", "tests.plugins:SlowOnnxRunner", ledger=f"{name}.db")
    proc = subprocess.Popen([sys.executable, "-m", "scheduler.entry", "validate", "-c", str(config)], cwd=REPO,
                            env=kept.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: "running" in {s for s, _ in recorded(kept.root / f"{name}.db")}, 120, "a job to start")
    except BaseException:
        proc.kill()
        raise
    return proc, kept.root / f"{name}.db"


def test_sigint_stops_a_served_command_as_it_stops_its_own(kept: Kept) -> None:
    driver_state(kept)
    proc, ledger = slow_command(kept, "interrupted")
    stop_validate(proc, signal.SIGINT, ledger)
    statuses = {s for s, _ in recorded(ledger)}
    assert "cancelled" in statuses and not {"queued", "running"} & statuses
    assert f"served pid {proc.pid}: validate -c" in kept.driver_log


def test_a_killed_client_stops_its_command(kept: Kept) -> None:
    driver_state(kept)
    proc, ledger = slow_command(kept, "client-killed")
    proc.kill()
    proc.communicate(timeout=60)
    wait_for(lambda: recorded(ledger) and all(s == "cancelled" for s, _ in recorded(ledger)), 60,
             "the driver to record the command's jobs as cancelled")
    assert {e for _, e in recorded(ledger)} == {"validate stopped by client gone"}


def test_a_driver_that_dies_during_a_command_exits_3_and_is_replaced(kept: Kept) -> None:
    state = driver_state(kept)
    proc, _ = slow_command(kept, "driver-killed")
    try:
        os.kill(state["pid"], signal.SIGKILL)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 3 and stderr.startswith("error: the kept Ray driver ended before the command did"), \
        stderr
    replaced = driver_state(kept, not_pid=state["pid"])  # the supervisor starts another
    _, doc, _ = validate(kept, kept.config)
    assert doc["ray_origin"] == "shared, kept driver" and worker_pids(doc) == set(replaced["warmed"])


def test_a_bad_argument_exits_2_with_the_same_message(kept: Kept) -> None:
    driver_state(kept)
    served = run(kept, "validate", "--bogus", "-c", str(kept.config))
    own = run(kept, "validate", "--bogus", "-c", str(kept.config), module="scheduler.cli")
    assert served[0] == own[0] == 2
    assert served[1:3] == own[1:3] and "unrecognized arguments: --bogus" in served[2]
    assert f"served pid {served[3]}: validate --bogus" in kept.driver_log
