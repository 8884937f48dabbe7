"""The Grafana dashboard and the alert rules name only metrics the exporter exposes."""

from __future__ import annotations

import json
import re

import yaml

from tests.conftest import REPO

GOLDEN = REPO / "tests" / "fixtures" / "exposition.golden"
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
                "offset", "le", "inf", "nan"}


def exported_series() -> set[str]:
    """Sample names the exporter exposes (the golden exposition), plus Prometheus' own `up`."""
    names = {line.split()[0] for line in GOLDEN.read_text().splitlines() if line.startswith("  ")}
    return names | {"up"}


def metric_names(expr: str) -> set[str]:
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values are not metric names
    expr = re.sub(r"\{[^}]*\}", "{}", expr)  # nor are label names inside matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range durations
    words = re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*(?!\s*\()", expr)
    return {w for w in words if w.lower() not in PROMQL_WORDS and not re.fullmatch(r"\d+\w*", w)
            and (w.startswith("revalidator_") or w == "up")}


def dashboard_expressions() -> list[str]:
    dashboard = json.loads((REPO / "dashboards" / "revalidator.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if v.get("definition")]
    return exprs


def rule_expressions() -> list[str]:
    return [rule["expr"] for f in (REPO / "alerts").glob("*.yaml") for g in yaml.safe_load(f.read_text())["groups"]
            for rule in g["rules"]]


def test_dashboard_and_rules_use_only_exported_metrics() -> None:
    exported = exported_series()
    used = set()
    for expr in dashboard_expressions() + rule_expressions():
        names = metric_names(expr)
        assert names, f"no metric found in {expr!r}"
        unknown = names - exported
        assert not unknown, f"{expr!r} names {unknown}, which the exporter does not expose"
        used |= names
    # the dashboard covers the gate matrix, per-slice deltas against tolerance, and stack changes
    for needed in ("revalidator_gate_serve_candidate", "revalidator_check_delta", "revalidator_check_tolerance",
                   "revalidator_stack_changes_total"):
        assert needed in used


def test_the_name_check_catches_a_rename() -> None:
    assert metric_names('sum by (target) (rate(revalidator_jobs_total{state="x"}[5m]))') == {"revalidator_jobs_total"}
    assert "revalidator_jobs_total" not in exported_series()
