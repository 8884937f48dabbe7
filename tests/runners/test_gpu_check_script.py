"""scripts/gpu-check on this machine: it runs the GPU tests, writes its files and ends with one JSON
line; where no GPU test can run it says so and does not pass."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_gpu_check_writes_its_summary_and_never_passes_on_nothing(tmp_path: Path) -> None:
    out = tmp_path / "results"  # given relative to the caller's folder
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run([str(REPO / "scripts" / "gpu-check"), "results"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary == json.loads((out / "summary.json").read_text())
    assert (out / "junit.xml").is_file() and (out / "pytest.log").is_file()
    assert len(summary["tests"]) == summary["passed"] + summary["failed"] + summary["skipped"] + summary["errors"] > 10
    assert "torch" in summary["versions"]
    if summary["passed"] == 0:  # no GPU here: nothing measured is not a pass
        assert (summary["ok"], run.returncode) == (False, 1) and "no GPU test ran" in summary["why"]
        assert all(t["detail"] for t in summary["tests"])  # every skip says why
    else:
        assert summary["ok"] == (run.returncode == 0)
