"""End to end on 127.0.0.1: the daemon, a Prometheus server scraping it with the project's rules,
Alertmanager delivering to a webhook receiver in this test. A bad upgrade (a stack change seen by
the firmware probe, and the candidate replaced by a broken build) must reach the receiver as a
slice-regression alert and switch /gates to the baseline; rolling it back must resolve both."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.e2e.observability import Stack, wait_for

pytestmark = pytest.mark.ray


@pytest.fixture
def stack(tmp_path: Path, demo_dir: Path):
    missing = [t for t in ("prometheus", "prometheus-alertmanager") if shutil.which(t) is None]
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"{missing} not installed (.ci/run installs them)")
        pytest.skip(f"{missing} not installed (apt-get install prometheus prometheus-alertmanager)")
    stack = Stack(tmp_path, demo_dir)
    stack.start()
    yield stack
    stack.stop()


def test_bad_upgrade_alerts_and_falls_back_then_rollback_resolves(stack: Stack) -> None:
    labels = {"model": "digits-mlp", "candidate": "int8", "target": "edge-cpu"}
    # A passing start: the first sweep validates the candidate; serving uses it.
    wait_for(lambda: (stack.gate() or {}).get("state") == "pass", 60, "the first validation to pass")
    assert stack.gate()["use"] == "candidate"
    wait_for(lambda: stack.query("revalidator_gate_serve_candidate") == [1.0], 30,
             "Prometheus to scrape the gate as 'serve the candidate'")
    alerts = stack.prometheus_alerts()  # (DaemonAbsent may be pending from before the first scrape)
    assert [a for a in alerts if a["state"] == "firing" or a["labels"]["alertname"] == "RevalidatorGateFailed"] == []

    stack.upgrade()
    firing = wait_for(lambda: stack.receiver.find("RevalidatorGateFailed", "firing", **labels), 60,
                      "the slice-regression alert at the receiver")
    alert = firing[0].alert
    assert alert["labels"]["slice"] == "faint" and alert["labels"]["dimension"] == "scan"
    assert alert["labels"]["severity"] == "critical"
    assert alert["annotations"]["description"].startswith(
        f"digits-mlp candidate int8 on target edge-cpu failed {alert['labels']['check']} on slice scan=faint")
    gate = stack.gate()
    assert (gate["state"], gate["use"]) == ("fail", "baseline")
    wait_for(lambda: stack.query("revalidator_gate_serve_candidate") == [0.0], 30, "the gate metric to fall back")
    assert gate["artifact"].endswith("digits-fp32.onnx") and "scan=faint" in gate["reason"]
    triggers = {line.get("trigger") for line in stack.daemon_log() if line["msg"] == "job finished"}
    assert triggers & {"stack-change", "config-change"}

    stack.roll_back()
    wait_for(lambda: stack.receiver.find("RevalidatorGateFailed", "resolved", **labels), 60,
             "the alert to resolve at the receiver")
    gate = stack.gate()
    assert (gate["state"], gate["use"]) == ("pass", "candidate")
    assert gate["artifact"].endswith("candidate.onnx")
    wait_for(lambda: stack.query("revalidator_gate_serve_candidate") == [1.0], 30, "the gate metric to recover")
