"""The catalogue: one declaration and one judge make a check, everywhere, with no other edit."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from runners import catalogue as cat
from runners.harness import run_job
from scheduler import report
from scheduler.config import ConfigError, load_config
from scheduler.exporter import Exporter, Snapshot
from scheduler.gates import current_keys
from scheduler.ledger import Ledger
from scheduler.planning import Planner
from scheduler.validate import RunRecord, ValidationReport
from tests.conftest import REPO, demo_config


@pytest.fixture
def toy_check():
    """A check declared from a test: the share of rows whose top-1 class changed."""
    declared = cat.declare(cat.Check("max_toy_flip_rate", "rows", (cat.CLASSIFICATION,), "toy flip rate", True))

    @cat.judge_for(declared)
    def _flips(s, limit: float, confidence: float):
        flips = 1 - s.agree / max(s.n, 1)
        return 0.0, flips, flips > limit, {"flipped_rows": s.n - s.agree}

    yield declared
    cat.forget(declared.name)


def test_a_toy_check_appears_in_schema_json_report_and_metrics(toy_check, tmp_path: Path, demo_dir: Path) -> None:
    path = tmp_path / "targets.yaml"
    path.write_text(demo_config(demo_dir, tmp_path / "ledger.db", candidates=("ort-w8a3",)).replace(
        "slice_checks: {max_drop: 0.08, min_agreement: 0.90}", "slice_checks: {max_toy_flip_rate: 0.15}"))
    loaded = load_config(path)  # the schema knows it
    assert loaded.config.suites["digits"].slice_checks == {"max_toy_flip_rate": 0.15}
    with pytest.raises(ConfigError) as bad:
        path.write_text(path.read_text().replace("max_toy_flip_rate", "max_toy_flop_rate"))
        load_config(path)
    assert "unknown check 'max_toy_flop_rate'" in str(bad.value.errors)

    ledger = Ledger(loaded.config.ledger, loaded.base_dir)
    spec = Planner(loaded).jobs("manual")[0]
    result = run_job(spec)
    faint = next(c for c in result.checks if c.check == "max_toy_flip_rate" and c.value == "faint")
    assert faint.verdict == "fail" and faint.statistic["flipped_rows"] > 0  # w8a3 flips faint scans
    record = RunRecord(ledger.start_run(spec), spec, result)
    ledger.finish_run(record.run_id, result)

    document = report.document(ValidationReport([record]))  # the JSON
    assert any(c["check"] == "max_toy_flip_rate" for c in document["runs"][0]["checks"])
    text = report.human(ValidationReport([record]))  # the human report, in the check's own words
    assert "FAILED max_toy_flip_rate: scan=faint: toy flip rate" in text and "> tolerance 0.15" in text

    snapshot = Snapshot(loaded=loaded, keys=current_keys(Planner(loaded).jobs("current", {})),
                        last_poll_at=time.time())
    metrics = Exporter(ledger, lambda: snapshot).render().decode()
    assert 'check="max_toy_flip_rate"' in metrics
    assert f'revalidator_check_tolerance{{target="local-cpu",model="digits-mlp",candidate="ort-w8a3",' \
           f'suite="digits",dimension="scan",slice="faint",check="max_toy_flip_rate"}} 0.15' in metrics


def test_every_check_name_is_declared_once_outside_tests_and_docs() -> None:
    tracked = subprocess.run(["git", "ls-files", "*.py"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.split()
    sources = {name: (REPO / name).read_text() for name in tracked
               if not name.startswith(("tests/", "docs/", "benchmarks/"))}
    for name in cat.names():
        quoted = [f for f, text in sources.items() for q in ('"', "'") if f"{q}{name}{q}" in text]
        assert quoted == ["runners/catalogue.py"], f"{name} is spelled out in {quoted}"


def test_declarations_say_their_direction_and_are_unique() -> None:
    with pytest.raises(ValueError, match="already declared"):
        cat.declare(cat.Check("max_drop", "rows", (cat.CLASSIFICATION,), "again", True))
    with pytest.raises(ValueError, match="says its direction"):
        cat.declare(cat.Check("toy", "rows", (cat.CLASSIFICATION,), "toy", True))
    assert cat.get("max_drop") is cat.MAX_DROP
    with pytest.raises(KeyError):  # a qualified name is not a check: batch size and metric are result fields
        cat.get("max_drop (batch 64)")
