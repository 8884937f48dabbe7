"""`revalidator reproduce` on real runs: identical rows on a finished demo run, refusal when an artifact moved."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from scheduler.cli import main
from tests.conftest import demo_config

pytestmark = pytest.mark.ray


def cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def validated(tmp_path: Path, demo_dir: Path, ray_local, capsys) -> tuple[Path, Path, dict]:
    """A private copy of the demo (its files are replaced below), validated once: config, demo, the run."""
    demo = tmp_path / "demo"
    shutil.copytree(demo_dir, demo)
    config = tmp_path / "targets.yaml"
    config.write_text(demo_config(demo, tmp_path / "ledger.db", candidates=("ort-int8-static",)))
    code, out, err = cli(capsys, "validate", "-c", str(config), "--json")
    assert code in (0, 1), err
    return config, demo, json.loads(out)["runs"][0]


def test_reproduce_a_finished_run_is_identical(validated, capsys) -> None:
    config, _, run = validated
    code, out, err = cli(capsys, "reproduce", run["run_id"][:8], "-c", str(config), "--json")
    doc = json.loads(out)
    assert code == 0, (out, err)
    assert doc["identical"] and doc["rows"]["identical"] and doc["fingerprint_diff"] == []
    assert doc["rows"]["models"]["candidate"]["differ"] == 0 and doc["rows"]["rows"] == 1482
    assert doc["rerun_id"] != run["run_id"]
    # the re-run is a run of its own in the ledger, with the recorded spec
    code, out, _ = cli(capsys, "history", "-c", str(config), "--json")
    assert sorted(r["trigger"] for r in json.loads(out)["runs"]) == ["manual", "reproduce"]
    code, out, _ = cli(capsys, "reproduce", run["run_id"], "-c", str(config))
    assert code == 0 and "fingerprint: identical to the recorded one" in out
    assert "candidate: all 1482 rows identical" in out


def test_reproduce_refuses_a_replaced_candidate_naming_both_sha256(validated, capsys) -> None:
    config, demo, run = validated
    recorded = run["provenance"]["candidate"]["sha256"]
    candidate = demo / "digits-int8-static.onnx"
    shutil.copyfile(demo / "digits-int8-dynamic.onnx", candidate)
    from runners.hashing import sha256_file

    now = sha256_file(candidate)
    code, out, err = cli(capsys, "reproduce", run["run_id"], "-c", str(config))
    assert code == 2 and out == ""
    assert str(candidate) in err and recorded in err and now in err, err
    code, out, _ = cli(capsys, "history", "-c", str(config), "--json")
    assert len(json.loads(out)["runs"]) == 1  # nothing ran


def test_reproduce_of_an_unknown_run_is_bad_input(validated, capsys) -> None:
    config, _, _ = validated
    code, _, err = cli(capsys, "reproduce", "zzzz", "-c", str(config))
    assert code == 2 and "matches 0 runs" in err


def test_reproduce_on_another_target(validated, capsys) -> None:
    config, _, run = validated
    text = config.read_text()
    config.write_text(text.replace("targets:\n", "targets:\n  second-cpu:\n    runners: [onnxruntime]\n", 1))
    code, out, err = cli(capsys, "reproduce", run["run_id"], "--target", "second-cpu", "-c", str(config), "--json")
    doc = json.loads(out)
    assert code == 0, err
    assert (doc["target"], doc["recorded_target"]) == ("second-cpu", "local-cpu") and doc["identical"]
    code, _, err = cli(capsys, "reproduce", run["run_id"], "--target", "nowhere", "-c", str(config))
    assert code == 2 and "--target 'nowhere': no such target" in err
