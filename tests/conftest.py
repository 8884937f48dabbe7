"""Shared fixtures: the demo models built once per session, a real local Ray, config writers."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
# One-shot commands start their own Ray, as before the shared one: tests that would each key a shared
# instance of their own (their environments differ) would leave one running per test.
# tests/scheduler/test_local_ray.py tests the shared one.
os.environ.setdefault("REVALIDATOR_LOCAL_RAY", "fresh")
# Nor does a kept one keep a driver (tests/scheduler/test_kept_driver.py tests it), which would
# compete for the CPUs with the commands these tests time their workers' start by.
os.environ.setdefault("REVALIDATOR_KEPT_DRIVER", "off")
# Baseline outputs cached by the tests' jobs (and Ray workers, which inherit this) stay out of the
# user's cache directory; one directory per session, removed at exit.
_BASELINES = tempfile.mkdtemp(prefix="revalidator-baselines-")
os.environ["REVALIDATOR_BASELINE_CACHE"] = _BASELINES
atexit.register(shutil.rmtree, _BASELINES, True)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled demo (digits MLP, fp32 + quantized candidates, eval and calibration sets)."""
    from examples.build import build

    out = tmp_path_factory.mktemp("demo")
    build(out, llm=False)
    return out


@pytest.fixture(scope="session")
def ray_local():
    """One real local Ray for the session; dispatchers reuse it instead of starting their own."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def demo_config(demo: Path, ledger: Path, candidates: tuple[str, ...] = ("ort-int8-dynamic", "ort-w8a3"),
                extra_suite: str = "") -> str:
    """A config over the demo artifacts (absolute paths), with a chosen subset of candidates."""
    known = {
        "ort-int8-dynamic": ("digits-int8-dynamic.onnx", "onnxruntime", "dynamic", 8, 8),
        "ort-int8-static": ("digits-int8-static.onnx", "onnxruntime", "static-qdq", 8, 8),
        "ort-w8a3": ("digits-w8a3.onnx", "onnxruntime", "static-per-tensor-truncating", 8, 3),
        "torch-int8-dynamic": ("digits-int8-dynamic.ts", "torch", "dynamic", 8, 8),
    }
    lines = []
    for name in candidates:
        file, runner, method, wbits, abits = known[name]
        lines.append(f"""      {name}:
        path: {demo / file}
        runner: {runner}
        quantization: {{method: {method}, weight_bits: {wbits}, activation_bits: {abits},
                       calibration_set: {demo / 'calibration.npz'}, tool: examples.digits}}""")
    cands = "\n".join(lines)
    return f"""version: 1
ledger: sqlite:///{ledger}
ray: {{job_timeout_seconds: 300, retry_backoff_seconds: 0.2, max_attempts: 2}}
targets:
  local-cpu:
    runners: [onnxruntime, torch]
    options:
      onnxruntime: {{intra_op_threads: 1}}
models:
  digits-mlp:
    baseline: {{path: {demo / 'digits-fp32.onnx'}, runner: onnxruntime}}
    suites: [digits]
    candidates:
{cands}
suites:
  digits:
    data: {demo / 'digits-eval.npz'}
    task: classification
    slices: [digit, scan]
    min_slice_size: 50
    checks: {{max_drop: 0.03, min_agreement: 0.95}}
    slice_checks: {{max_drop: 0.08, min_agreement: 0.90}}
{extra_suite}"""


def old_ledger(path: Path, version: int, verdict: str = "fail"):
    """A SQLite ledger built by the real migrations up to schema `version` only, holding one finished
    run 'old': what an older release left behind, for the migration tests. Returns its engine."""
    import sqlalchemy as sa

    from scheduler import ledger_schema
    from scheduler.storage import sqlite_url

    engine = sa.create_engine(sqlite_url(path))
    with engine.begin() as conn:
        ledger_schema.metadata.create_all(conn, tables=[ledger_schema.schema_version])
        for number, migration in enumerate(ledger_schema.MIGRATIONS[:version], start=1):
            migration(conn)
            conn.execute(ledger_schema.schema_version.insert().values(version=number))
        conn.execute(sa.text("INSERT INTO runs (run_id, job_id, trigger, target, model, candidate, suite, status, "
                             "verdict, created_at, finished_at) VALUES ('old', 'j', 'manual', 'cpu', 'm', 'w4', 's', "
                             "'finished', :verdict, 1.0, 2.0)"), {"verdict": verdict})
    return engine
