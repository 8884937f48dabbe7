"""`revalidator plan-rows`: how many rows each slice needs for a suite's tolerances and confidence.

Planned before any run, from stated assumptions: a clean candidate (true difference 0) that
answers `discordance` of the rows differently from the baseline (near-tie flips; int8 typically
1-5%), and for rate checks the rate a clean candidate reaches. Each figure gives 80% power to show
the candidate within tolerance, for one test alone and for every test of a run at once (a release
gate passes only when all pass). Where the suite's data file can be read, each slice's rows are
set beside what it needs.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from runners import catalogue
from runners.decision import plan_rows
from scheduler.config import LoadedConfig
from scheduler.config.schema import Suite


def slice_counts(loaded: LoadedConfig, suite: Suite) -> dict[tuple[str, str], int] | None:
    """Rows per slice value in the suite's data; None where it cannot be read here."""
    if suite.data is None:
        return None
    path = loaded.resolve(suite.data)
    try:
        if suite.task == "generation":
            from runners.families.generation.prompts import load_prompts

            prompts = load_prompts(path, suite.slices)
            columns = {d: prompts.column(d) for d in suite.slices}
        else:
            from runners.families.classification.data import load_eval_data

            columns = {d: v.tolist() for d, v in load_eval_data(path, suite.slices, suite.max_slice_values)
                       .slices.items()}
    except Exception:  # planning does not need the data; the run reports what is wrong with it
        return None
    counts = {("all", "all"): len(next(iter(columns.values()), []))}
    for dimension, values in columns.items():
        counts.update({(dimension, str(v)): n for v, n in sorted(Counter(values).items())})
    return counts


def _assumed_rate(check: str, discordance: float, accuracy: float | None) -> float | None:
    if catalogue.get(check).needs_labels:  # a rate against the labels: the candidate's accuracy
        return accuracy
    return 1.0 - discordance  # agreement-type rates: a clean candidate agrees where it does not flip


def plan(loaded: LoadedConfig, discordance: float, accuracy: float | None,
         suites: list[str] | None = None) -> dict[str, Any]:
    """Per suite: per check, the rows a slice needs; per slice, the rows it has."""
    cfg = loaded.config
    out: dict[str, Any] = {"assumptions": {"discordance": discordance, "accuracy": accuracy, "power": 0.8},
                           "suites": {}}
    for name in suites or sorted(cfg.suites):
        suite = cfg.suites[name]
        counts = slice_counts(loaded, suite)
        slices = len(counts) if counts else None
        checks = []
        for scope, table in (("aggregate", suite.checks), ("slices", {**suite.checks, **(suite.slice_checks or {})})):
            tests = len(table) * (slices or 1)
            for check, limit in table.items():
                bound = catalogue.get(check).bound
                kind = bound if bound in ("paired", "rate") else "magnitude"
                rate = _assumed_rate(check, discordance, accuracy) if kind == "rate" else None
                alone = plan_rows(check, limit, suite.confidence, discordance, rate)
                together = plan_rows(check, limit, suite.confidence, discordance, rate, tests)
                checks.append({"scope": scope, "check": check, "tolerance": limit, "kind": kind,
                               "rows_alone": alone, "rows_all_tests": together, "tests": tests})
        needed = {scope: max((c["rows_alone"] or 0 for c in checks if c["scope"] == scope), default=0)
                  for scope in ("aggregate", "slices")}
        rows = None
        if counts:
            rows = [{"dimension": d, "value": v, "rows": n,
                     "needs": needed["aggregate" if d == "all" else "slices"],
                     "enough": n >= needed["aggregate" if d == "all" else "slices"]}
                    for (d, v), n in counts.items()]
        policy = suite.decision.policy if suite.decision else "point"
        out["suites"][name] = {"confidence": suite.confidence, "policy": policy, "min_slice_size": suite.min_slice_size,
                               "checks": checks, "slices": rows}
    return out


def human(document: dict[str, Any]) -> str:
    a = document["assumptions"]
    lines = [f"rows each slice needs for 80% power to show a clean candidate within tolerance "
             f"(assumed: {a['discordance']:.0%} of rows answered differently"
             + (f", accuracy {a['accuracy']:g}" if a["accuracy"] is not None else "") + ")"]
    for name, s in document["suites"].items():
        lines.append(f"suite {name} (confidence {s['confidence']:g}, policy {s['policy']}):")
        for c in s["checks"]:
            if c["rows_alone"] is None:
                why = ("a magnitude: its spread comes from a run (see rows_needed in `revalidator report`)"
                       if c["kind"] == "magnitude" else "give --accuracy" if catalogue.get(c["check"]).needs_labels
                       else "the assumed rate is not within the tolerance")
                lines.append(f"    {c['scope']:9} {c['check']:24} {c['tolerance']:<8g} cannot plan: {why}")
            else:
                lines.append(f"    {c['scope']:9} {c['check']:24} {c['tolerance']:<8g} {c['rows_alone']:>7} rows"
                             f"   {c['rows_all_tests']:>7} for all {c['tests']} tests at once")
        short = [r for r in s["slices"] or [] if not r["enough"]]
        if s["slices"] is not None:
            lines.append(f"    {len(s['slices']) - len(short)} of {len(s['slices'])} slice(s) have the rows "
                         f"one test needs" + (":" if short else ""))
            for r in short[:20]:
                where = "aggregate" if r["dimension"] == "all" else f"{r['dimension']}={r['value']}"
                lines.append(f"      {where}: {r['rows']} rows, needs {r['needs']}")
    return "\n".join(lines)
