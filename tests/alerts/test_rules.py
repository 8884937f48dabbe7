"""The alert rules: promtool's lint and the unit tests of every alert, firing and quiet."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.conftest import REPO

ALERTS = REPO / "alerts"


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is not installed (.ci/run installs the Debian package prometheus)")
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    return path


def test_rules_pass_lint() -> None:
    files = sorted(str(p) for p in ALERTS.glob("*.yaml"))
    done = subprocess.run([promtool(), "check", "rules", "--lint=all", "--lint-fatal", *files],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_has_a_unit_test_firing_and_quiet() -> None:
    import yaml

    alerts = {rule["alert"] for f in ALERTS.glob("*.yaml") for group in yaml.safe_load(f.read_text())["groups"]
              for rule in group["rules"] if "alert" in rule}
    firing, quiet = set(), set()
    for f in (ALERTS / "tests").glob("*.yaml"):
        for test in yaml.safe_load(f.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                (firing if case["exp_alerts"] else quiet).add(case["alertname"])
    assert alerts == firing, f"alerts without a firing test: {alerts - firing}"
    assert alerts == quiet, f"alerts without a quiet test: {alerts - quiet}"
    for f in ALERTS.glob("*.yaml"):
        for group in yaml.safe_load(f.read_text())["groups"]:
            for rule in group["rules"]:
                assert rule["labels"]["severity"] in ("critical", "warning", "info")
                assert {"summary", "description", "runbook_url"} <= set(rule["annotations"])
                anchor = rule["annotations"]["runbook_url"].rsplit("#", 1)[1]
                assert f"## {rule['alert']}" in (REPO / "docs" / "runbook.md").read_text(), anchor


def test_promtool_unit_tests_pass() -> None:
    tests = sorted(str(p) for p in (ALERTS / "tests").glob("*.yaml"))
    done = subprocess.run([promtool(), "test", "rules", *tests], capture_output=True, text=True, cwd=ALERTS / "tests")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout
