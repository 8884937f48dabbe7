"""Baseline reuse through the real path: `revalidator validate` processes on the embedded default
(a kept local Ray, each command its own Ray job whose fresh workers run the jobs), over real
onnxruntime models. The candidates of one
sweep share one baseline run; a stack change, a replaced baseline file or a changed data file
never reuses what an earlier run made."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from scheduler import local_ray
from tests.conftest import REPO, demo_config

pytestmark = pytest.mark.ray

FILES = ("digits-fp32.onnx", "digits-int8-dynamic.onnx", "digits-int8-static.onnx", "digits-w8a3.onnx",
         "digits-eval.npz", "calibration.npz")


@pytest.fixture
def setup(tmp_path: Path, demo_dir: Path) -> Iterator[Path]:
    demo = tmp_path / "demo"
    demo.mkdir()
    for name in FILES:
        shutil.copy(demo_dir / name, demo / name)
    (tmp_path / "firmware").write_text("1.0\n")
    text = demo_config(demo, tmp_path / "ledger.db", candidates=("ort-int8-dynamic", "ort-w8a3"))
    text = text.replace("    options:\n", f"    max_concurrent_jobs: 2\n    probes: {{firmware: {{file: "
                                         f"{tmp_path / 'firmware'}}}}}\n    options:\n", 1)
    (tmp_path / "targets.yaml").write_text(text)
    yield tmp_path
    for directory, _ in local_ray.instances(tmp_path / "instances"):
        local_ray.stop(directory)


def validate(setup: Path) -> list[dict]:
    env = {**os.environ, "REVALIDATOR_BASELINE_CACHE": str(setup / "cache"), "PYTHONPATH": str(REPO),
           local_ray.DIRECTORY_ENV: str(setup / "instances")}
    env.pop(local_ray.MODE_ENV, None)  # the suite's default is a Ray per command
    proc = subprocess.run([sys.executable, "-m", "scheduler.cli", "validate", "--json", "-c",
                           str(setup / "targets.yaml")], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode in (0, 1), proc.stderr
    runs = json.loads(proc.stdout)["runs"]
    assert len(runs) == 2 and all(r["status"] == "finished" for r in runs), runs
    return runs


def reuse(runs: list[dict]) -> tuple[str, str]:
    """(key, producing job) of a sweep, checked: one job made the outputs, the other reused them."""
    records = [r["provenance"]["baseline_outputs"] for r in runs]
    made = [r for r, run in zip(records, runs) if r["generated_by_job"] == run["job_id"]]
    assert len(made) == 1 and made[0]["reused"] is False, records
    other = next(r for r in records if r is not made[0])
    assert other["reused"] is True and other["key"] == made[0]["key"]
    assert other["generated_by_job"] in {run["job_id"] for run in runs}
    return made[0]["key"], made[0]["generated_by_job"]


def baseline_sides(runs: list[dict]) -> dict[str, float]:
    return {r["candidate"]: next(c["baseline"] for c in r["checks"] if c["check"] == "max_drop"
                                 and c["slice"]["dimension"] == "all") for r in runs}


def test_a_sweep_shares_one_baseline_and_no_change_reuses_a_stale_one(setup: Path) -> None:
    first = validate(setup)
    key, producer = reuse(first)
    assert len(list((setup / "cache").glob("*.npz"))) == 1

    again = validate(setup)  # nothing changed: a later sweep reuses the earlier one's outputs
    assert {r["provenance"]["baseline_outputs"]["key"] for r in again} == {key}
    assert all(r["provenance"]["baseline_outputs"]["generated_by_job"] == producer for r in again)

    seen = {key}
    (setup / "firmware").write_text("2.0\n")  # a stack change
    stack = validate(setup)
    assert reuse(stack)[0] not in seen
    seen.add(reuse(stack)[0])

    demo = setup / "demo"
    shutil.copy(demo / "digits-w8a3.onnx", demo / "replacement.onnx")
    os.replace(demo / "replacement.onnx", demo / "digits-fp32.onnx")  # a replaced baseline file
    replaced = validate(setup)
    assert reuse(replaced)[0] not in seen
    seen.add(reuse(replaced)[0])
    assert baseline_sides(replaced) != baseline_sides(stack)

    with np.load(demo / "digits-eval.npz") as data:
        columns = {name: data[name] for name in data.files}
    columns["labels"] = columns["labels"][::-1].copy()
    inputs = next(name for name in columns if name not in ("labels", "digit", "scan"))
    columns[inputs] = columns[inputs][::-1].copy()
    np.savez(demo / "digits-eval.npz", **columns)  # a changed data file
    changed = validate(setup)
    assert reuse(changed)[0] not in seen
