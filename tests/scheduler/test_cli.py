"""The CLI contract: commands, the JSON document, and every exit code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from scheduler.cli import main
from tests.conftest import REPO, demo_config


def write_config(tmp_path: Path, demo: Path, **kwargs) -> Path:
    path = tmp_path / "targets.yaml"
    path.write_text(demo_config(demo, tmp_path / "ledger.db", **kwargs))
    return path


def run_cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_check_config_ok(tmp_path: Path, demo_dir: Path, capsys) -> None:
    code, out, _ = run_cli(capsys, "check-config", "-c", str(write_config(tmp_path, demo_dir)))
    assert code == 0
    assert out.strip().endswith("ok: 1 target(s), 1 model(s) with 2 candidate(s), 1 suite(s)")


def test_check_config_bad_exits_2_with_every_error(tmp_path: Path, demo_dir: Path, capsys) -> None:
    path = write_config(tmp_path, demo_dir)
    path.write_text(path.read_text().replace("version: 1", "version: 7").replace("task: classification", "task: x"))
    code, out, err = run_cli(capsys, "check-config", "-c", str(path))
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"error: {path}:1: version:")
    assert "suites.digits.task" in lines[1]


def test_bad_arguments_exit_2(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["validate", "--no-such-flag"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2


def test_fingerprint_json(capsys) -> None:
    code, out, _ = run_cli(capsys, "fingerprint", "--json")
    stack = json.loads(out)
    assert code == 0 and stack["components"]["python"].endswith(f"{sys.version_info.major}."
                                                                 f"{sys.version_info.minor}.{sys.version_info.micro}")
    assert len(stack["hash"]) == 16 and stack["probes"]["kernel"]["status"] == "ok"


@pytest.mark.ray
class TestValidate:
    def test_all_pass_exits_0(self, tmp_path: Path, demo_dir: Path, ray_local, capsys) -> None:
        path = write_config(tmp_path, demo_dir, candidates=("ort-int8-dynamic", "torch-int8-dynamic"))
        code, out, _ = run_cli(capsys, "validate", "-c", str(path))
        assert code == 0
        assert "digits-mlp / torch-int8-dynamic on local-cpu (suite digits): PASS" in out
        assert out.strip().endswith("2 run(s): 2 pass  (exit 0)")

    def test_planted_failure_exits_1_and_names_the_slice(self, tmp_path: Path, demo_dir: Path, ray_local,
                                                         capsys) -> None:
        path = write_config(tmp_path, demo_dir)
        code, out, _ = run_cli(capsys, "validate", "-c", str(path))
        assert code == 1
        assert "digits-mlp / ort-w8a3 on local-cpu (suite digits): FAIL" in out
        assert "FAILED max_drop: scan=faint: accuracy drop" in out
        assert "> tolerance 0.08" in out
        assert "aggregate within tolerance; regressed slice(s): scan=faint" in out
        table_row = [line for line in out.splitlines() if line.strip().startswith("scan=faint")][1]
        assert "FAIL" in table_row
        # the ledger now answers status and history
        code, out, _ = run_cli(capsys, "status", "-c", str(path), "--json")
        gates = {g["candidate"]: g["state"] for g in json.loads(out)["gates"]}
        assert code == 1 and gates == {"ort-int8-dynamic": "pass", "ort-w8a3": "fail"}
        code, out, _ = run_cli(capsys, "history", "-c", str(path))
        assert code == 0 and len(out.strip().splitlines()) == 2
        run_id = out.split()[2]
        code, out, _ = run_cli(capsys, "report", "-c", str(path), run_id)
        assert code == 0 and json.loads(out)["provenance"]["fingerprint"]["hash"]

    def test_json_document(self, tmp_path: Path, demo_dir: Path, ray_local, capsys) -> None:
        path = write_config(tmp_path, demo_dir)
        code, out, _ = run_cli(capsys, "validate", "-c", str(path), "--json", "--model", "digits-mlp")
        doc = json.loads(out)
        assert code == 1 and doc["version"] == 2 and doc["exit_code"] == 1
        assert [r["candidate"] for r in doc["runs"]] == ["ort-int8-dynamic", "ort-w8a3"]
        run = doc["runs"][1]
        for key in ("run_id", "target", "model", "candidate", "suite", "verdict", "checks", "provenance"):
            assert key in run
        assert run["verdict"] == "fail" and run["target"] == "local-cpu"
        check = next(c for c in run["checks"] if c["slice"] == {"dimension": "scan", "value": "faint"}
                     and c["check"] == "max_drop")
        assert check["verdict"] == "fail" and check["tolerance"] == 0.08 and check["n"] > 50
        assert check["batch_size"] is None and check["metric"] is None  # one batch size, not an external suite
        assert check["delta"] == pytest.approx(check["candidate"] - check["baseline"])
        aggregate = [c for c in run["checks"] if c["slice"]["dimension"] == "all"]
        assert {c["verdict"] for c in aggregate} == {"pass"}
        assert run["provenance"]["quantization"]["weight_bits"] == 8

    def test_unknown_target_exits_2(self, tmp_path: Path, demo_dir: Path, capsys) -> None:
        code, _, err = run_cli(capsys, "validate", "-c", str(write_config(tmp_path, demo_dir)), "--target", "tpu")
        assert code == 2 and "--target 'tpu': no such target" in err

    def test_missing_artifact_exits_2(self, tmp_path: Path, demo_dir: Path, capsys) -> None:
        path = write_config(tmp_path, demo_dir)
        path.write_text(path.read_text().replace("digits-w8a3.onnx", "digits-w3.onnx"))
        code, _, err = run_cli(capsys, "validate", "-c", str(path))
        assert code == 2 and "models.digits-mlp.candidates.ort-w8a3.path: file not found" in err

    def test_corrupt_artifact_exits_2_and_keeps_other_results(self, tmp_path: Path, demo_dir: Path, ray_local,
                                                              capsys) -> None:
        broken = tmp_path / "broken.onnx"
        broken.write_bytes(b"not onnx")
        path = write_config(tmp_path, demo_dir)
        path.write_text(path.read_text().replace(str(demo_dir / "digits-w8a3.onnx"), str(broken)))
        code, out, _ = run_cli(capsys, "validate", "-c", str(path))
        assert code == 2
        assert f"bad input: {broken}: onnxruntime cannot load the model" in out
        code, out, _ = run_cli(capsys, "history", "-c", str(path), "--json")
        runs = {r["candidate"]: r for r in json.loads(out)["runs"]}
        assert runs["ort-int8-dynamic"]["verdict"] == "pass"
        assert runs["ort-w8a3"]["status"] == "error" and runs["ort-w8a3"]["error_kind"] == "input"

    def test_unopenable_ledger_exits_3(self, tmp_path: Path, demo_dir: Path, capsys) -> None:
        (tmp_path / "occupied").write_text("a file, not a folder")
        path = write_config(tmp_path, demo_dir)
        path.write_text(path.read_text().replace(str(tmp_path / "ledger.db"), str(tmp_path / "occupied/x/l.db")))
        code, _, err = run_cli(capsys, "validate", "-c", str(path))
        assert code == 3 and "cannot open ledger" in err


def test_unreachable_ray_cluster_exits_3(tmp_path: Path, demo_dir: Path) -> None:
    path = write_config(tmp_path, demo_dir)
    env = {"PATH": "/usr/bin:/bin", "RAY_ADDRESS": "127.0.0.1:1", "HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "scheduler.cli", "validate", "-c", str(path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    assert "cannot start or reach 127.0.0.1:1" in proc.stderr


@pytest.mark.ray
def test_sweep_without_a_daemon_runs_once_here_and_dedupes(tmp_path: Path, demo_dir: Path, ray_local, capsys) -> None:
    from tests.scheduler.daemon_support import free_port

    path = write_config(tmp_path, demo_dir)
    path.write_text(path.read_text() + f"daemon: {{listen: '127.0.0.1:{free_port()}'}}\n")
    code, out, err = run_cli(capsys, "sweep", "-c", str(path))
    assert code == 1 and "sweeping once here" in err and "ort-w8a3 on local-cpu (suite digits): FAIL" in out
    code, out, _ = run_cli(capsys, "sweep", "-c", str(path))
    assert code == 0 and "2 job(s) already validated on the current stack" in out
    code, out, _ = run_cli(capsys, "sweep", "-c", str(path), "--force", "--target", "local-cpu")
    assert code == 1 and out.count("(suite digits)") == 2
    code, _, err = run_cli(capsys, "sweep", "-c", str(path), "--target", "nope")
    assert code == 2 and "no such target" in err


def test_a_stale_runtime_is_an_infrastructure_error_not_bad_input(tmp_path: Path, demo_dir: Path) -> None:
    from runners.contracts import JobResult
    from scheduler.config import load_config
    from scheduler.planning import plan
    from scheduler.report import human
    from scheduler.validate import RunRecord, ValidationReport

    spec = plan(load_config(write_config(tmp_path, demo_dir)))[0]
    message = "stale runtime in the worker: loaded onnxruntime 1.31.1, installed 1.32.0"
    stale = JobResult(job_id=spec.job_id, status="error", verdict="error", error=message, error_kind="stale_runtime")
    bad = JobResult(job_id=spec.job_id, status="error", verdict="error", error="x.npz: no labels", error_kind="input")
    assert ValidationReport([RunRecord("r1", spec, stale)]).exit_code() == 3
    assert ValidationReport([RunRecord("r2", spec, bad)]).exit_code() == 2
    assert ValidationReport([RunRecord("r2", spec, bad), RunRecord("r1", spec, stale)]).exit_code() == 3
    assert f"    infrastructure error: {message}" in human(ValidationReport([RunRecord("r1", spec, stale)]))
