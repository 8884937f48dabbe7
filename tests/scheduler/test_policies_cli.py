"""Decision policies through the CLI: validate under release and alert on the real demo models
(through Ray and the ledger), inconclusive slices with the rows they need, and plan-rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scheduler.cli import main
from tests.scheduler.test_cli import run_cli, write_config

# A slice tolerance of 0.01 on slices of 90-700 rows: a clean int8 candidate cannot be shown within it.
TIGHT = "slice_checks: {max_drop: 0.08, min_agreement: 0.90}"


def policy_config(tmp_path: Path, demo: Path, policy: str,
                  candidates: tuple[str, ...] = ("ort-int8-static", "ort-w8a3")) -> Path:
    path = write_config(tmp_path, demo, candidates=candidates)
    text = path.read_text().replace(TIGHT, "slice_checks: {max_drop: 0.01, min_agreement: 0.90}\n"
                                           f"    decision: {{policy: {policy}, correction: holm}}")
    path.write_text(text)
    return path


@pytest.mark.ray
@pytest.mark.parametrize("policy,exit_code", [("release", 1), ("alert", 1)])
def test_validate_decides_by_policy(tmp_path: Path, demo_dir: Path, ray_local, capsys, policy: str,
                                    exit_code: int) -> None:
    path = policy_config(tmp_path, demo_dir, policy)
    code, out, _ = run_cli(capsys, "validate", "-c", str(path), "--json")
    doc = json.loads(out)
    assert code == exit_code == doc["exit_code"]  # w8a3's planted failure fails under both
    runs = {r["candidate"]: r for r in doc["runs"]}
    assert runs["ort-w8a3"]["verdict"] == "fail"
    clean = runs["ort-int8-static"]
    assert clean["verdict"] == "inconclusive"
    assert clean["provenance"]["suite"]["decision"] == {"name": policy, "correction": "holm", "resamples": 1000,
                                                        "confidence": 0.95}
    unsure = [c for c in clean["checks"] if c["verdict"] == "inconclusive"]
    assert unsure and all(c["check"] == "max_drop" and c["tolerance"] == 0.01 for c in unsure)
    for c in unsure:
        s = c["statistic"]
        assert s["bound_low"] <= 0.01 <= s["bound_high"] and s["rows_needed"] > c["n"]
        assert s["correction"].startswith("holm over ")
    faint = next(c for c in runs["ort-w8a3"]["checks"] if c["check"] == "max_drop"
                 and c["slice"] == {"dimension": "scan", "value": "faint"})
    assert faint["verdict"] == "fail" and faint["statistic"]["p_beyond_adjusted"] < 0.05

    # The human report says what the bounds are and how many rows would decide.
    code, out, _ = run_cli(capsys, "validate", "-c", str(path), "--model", "digits-mlp")
    assert f"decided by policy {policy} at confidence 0.95, holm correction" in out
    line = next(line for line in out.splitlines() if "INCONCLUSIVE max_drop" in line)
    assert "the bounds straddle tolerance 0.01; about" in line and "rows would decide" in line
    assert "least sensitive slice: with " in out

    # The ledger keeps the verdict: the run's report reads it back.
    code, out, _ = run_cli(capsys, "history", "-c", str(path), "--json")
    verdicts = {r["candidate"]: r["verdict"] for r in json.loads(out)["runs"]}
    assert verdicts["ort-int8-static"] == "inconclusive"


@pytest.mark.ray
@pytest.mark.parametrize("policy,exit_code", [("release", 1), ("alert", 0)])
def test_an_inconclusive_candidate_fails_release_but_not_alert(tmp_path: Path, demo_dir: Path, ray_local, capsys,
                                                               policy: str, exit_code: int) -> None:
    path = policy_config(tmp_path, demo_dir, policy, candidates=("ort-int8-static",))
    code, out, _ = run_cli(capsys, "validate", "-c", str(path), "--json")
    assert [r["verdict"] for r in json.loads(out)["runs"]] == ["inconclusive"]
    assert code == exit_code


def test_plan_rows_names_the_short_slices(tmp_path: Path, demo_dir: Path, capsys) -> None:
    path = write_config(tmp_path, demo_dir)
    code, out, _ = run_cli(capsys, "plan-rows", "-c", str(path), "--json")
    assert code == 0
    digits = json.loads(out)["suites"]["digits"]
    agreement = next(c for c in digits["checks"] if c["scope"] == "slices" and c["check"] == "min_agreement")
    assert agreement["rows_alone"] > 88 and agreement["rows_all_tests"] > agreement["rows_alone"]
    short = {(s["dimension"], s["value"]) for s in digits["slices"] if not s["enough"]}
    assert ("scan", "faint") in short  # 88 rows
    assert ("scan", "clean") not in short
    code, out, _ = run_cli(capsys, "plan-rows", "-c", str(path), "--discordance", "0.01")
    assert code == 0 and "rows each slice needs" in out
    code, _, err = run_cli(capsys, "plan-rows", "-c", str(path), "--suite", "nope")
    assert code == 2 and "--suite 'nope'" in err
    assert main(["plan-rows", "-c", str(path), "--accuracy", "1.5"]) == 2


def test_the_policy_and_confidence_are_part_of_the_job_key(tmp_path: Path, demo_dir: Path) -> None:
    from scheduler.config import load_config
    from scheduler.planning import Planner

    def keys(text: str) -> set[str]:
        path = tmp_path / "variant.yaml"
        path.write_text(text)
        return {j.job_key for j in Planner(load_config(path)).jobs("manual")}

    point = write_config(tmp_path, demo_dir).read_text()
    release = point.replace("min_slice_size: 50", "min_slice_size: 50\n    decision: {policy: release}")
    confident = release.replace("min_slice_size: 50", "min_slice_size: 50\n    confidence: 0.99")
    bh = release.replace("{policy: release}", "{policy: release, correction: bh}")
    variants = [keys(t) for t in (point, release, confident, bh)]
    assert all(len(v) == 2 for v in variants)
    assert len(set().union(*variants)) == 8  # a result decided one way never stands for another
