"""Render validation results: the versioned JSON document and the human per-slice table."""

from __future__ import annotations

import time
from typing import Any

from runners import catalogue
from runners.contracts import AGGREGATE_DIMENSION, FAIL, INCONCLUSIVE, INSUFFICIENT, PASS, CheckResult
from scheduler.outcome import RunRecord, ValidationReport

# v2: "check" is the bare catalogue name; "batch_size" and "metric" say the rest (null where not applicable).
DOCUMENT_VERSION = 2

_MARK = {PASS: "ok", FAIL: "FAIL", INSUFFICIENT: "n<min", INCONCLUSIVE: "?"}

# Where each family counts its non-finite outputs (rows, prompts, output elements).
_NONFINITE = ("nonfinite_rows", "nonfinite_prompts", "nonfinite_elements")


def _words(name: str) -> str:
    return catalogue.get(name).words


def check_dict(c: CheckResult) -> dict[str, Any]:
    return {"check": c.check, "batch_size": c.batch_size, "metric": c.metric,
            "slice": {"dimension": c.dimension, "value": c.value}, "n": c.n,
            "baseline": c.baseline, "candidate": c.candidate, "delta": c.delta, "tolerance": c.tolerance,
            "verdict": c.verdict, "statistic": c.statistic}


def run_dict(record: RunRecord) -> dict[str, Any]:
    spec, result = record.spec, record.result
    return {"run_id": record.run_id, "job_id": spec.job_id, "target": spec.target, "model": spec.model,
            "candidate": spec.candidate, "suite": spec.suite.name, "trigger": spec.trigger,
            "status": result.status, "verdict": result.verdict, "error": result.error,
            "error_kind": result.error_kind, "started_at": result.started_at, "finished_at": result.finished_at,
            "checks": [check_dict(c) for c in result.checks], "drift": result.provenance.get("drift"),
            "provenance": result.provenance}


def document(report: ValidationReport) -> dict[str, Any]:
    return {"version": DOCUMENT_VERSION, "generated_at": time.time(), "exit_code": report.exit_code(),
            "ray_startup_seconds": report.ray_startup_seconds, "ray_origin": report.ray_origin,
            "runs": [run_dict(r) for r in report.records]}


def _slice_label(dimension: str, value: str, aggregate: str = "aggregate") -> str:
    return aggregate if dimension == AGGREGATE_DIMENSION else f"{dimension}={value}"


def _measured(c: CheckResult) -> float | None:
    """The quantity the tolerance applies to."""
    measured = catalogue.get(c.check).measured
    if "drop" in c.statistic:  # external metrics: the drop in the metric's better direction
        return c.statistic["drop"]
    if measured == "drop":
        return None if c.delta is None else 0.0 - c.delta  # 0.0 - x keeps "no drop" as +0.0
    if measured == "abs_delta":
        return None if c.delta is None else abs(c.delta)
    if measured == "relative_drop":
        return c.statistic.get("relative_drop")
    return c.candidate


def explain_failure(c: CheckResult) -> str:
    """One line: on which slice, by how much, against which tolerance (the caller names the check by its
    label, which carries the batch size)."""
    where = _slice_label(c.dimension, c.value)
    value = _measured(c)
    declared = catalogue.get(c.check)
    relation = ">" if declared.upper else "<"
    metric = c.metric  # an external harness's metric
    described = f"{metric} drop" if metric else declared.words
    shown = "not finite" if value is None or value != value else f"{value:.4f}"
    text = f"{where}: {described} {shown} {relation} tolerance {c.tolerance:g}"
    nonfinite = next((c.statistic[k] for k in _NONFINITE if c.statistic.get(k)), None)
    if nonfinite:
        return text + f" (non-finite outputs: {nonfinite:g}), n={c.n}"
    if declared.measured == "abs_delta" and c.statistic.get("judged") in ("rise", "drop"):
        text += (f" (refusal rate {c.baseline:.3f} -> {c.candidate:.3f}; only a {c.statistic['judged']} can be "
                 f"measured here)")
    elif declared.rate is not None:
        text += f" ({metric or declared.rate} {c.baseline:.3f} -> {c.candidate:.3f}"
        text += f", McNemar p={c.statistic['mcnemar_p']:.2g})" if "mcnemar_p" in c.statistic else ")"
    elif "first_divergence_p50" in c.statistic:
        text += (f" (outputs identical to the baseline: {c.statistic['identical_outputs']:.0%}, median first "
                 f"divergence at token {c.statistic['first_divergence_p50']:.0f})")
    elif "wilson_low" in c.statistic:
        text += f" ({c.statistic['wilson_low']:.3f}-{c.statistic['wilson_high']:.3f} interval)"
    if "bound_low" in c.statistic:
        text += f"; {_bounds(c)}"
    return text + f", n={c.n}"


def _bounds(c: CheckResult) -> str:
    """The confidence bounds and the adjusted evidence, in words."""
    s = c.statistic
    text = f"{s['confidence']:.0%} bounds {s['bound_low']:.4f}..{s['bound_high']:.4f} ({s['method']})"
    if "p_beyond_adjusted" in s:
        text += f", p beyond tolerance {s['p_beyond_adjusted']:.2g} after {s['correction']}"
    return text


def explain_inconclusive(c: CheckResult) -> str:
    """One line: what could not be decided, why, and how many rows would decide it."""
    s = c.statistic
    where = _slice_label(c.dimension, c.value)
    text = (f"{where}: {_words(c.check)} {s['estimate']:.4f}, {_bounds(c)}: the bounds straddle "
            f"tolerance {c.tolerance:g}")
    needed = s.get("rows_needed")
    text += f"; about {needed} rows would decide (n={c.n})" if needed else f"; the estimate sits on it (n={c.n})"
    return text


def detectable(c: CheckResult) -> str | None:
    """The smallest change a slice can show: "with 88 rows this slice only shows drops above 0.18"."""
    s = c.statistic
    if "detectable_beyond" not in s:
        return None
    relation = "above" if s["direction"] == "above" else "below"
    return (f"with {c.n} rows, {_slice_label(c.dimension, c.value)} only shows {_words(c.check)} "
            f"{relation} {s['detectable_beyond']:.3f} as beyond tolerance {c.tolerance:g}")


def _slice_table(checks: list[CheckResult]) -> list[str]:
    columns = list(dict.fromkeys(c.key for c in checks))  # one per (check, batch size, metric)
    names = {c.key: c.label for c in checks}
    rows: dict[tuple[str, str], dict[tuple, CheckResult]] = {}
    for c in checks:
        rows.setdefault((c.dimension, c.value), {})[c.key] = c
    label = {key: _slice_label(*key, aggregate="all") for key in rows}
    width = max(len(v) for v in label.values()) + 2
    lines = ["    " + "slice".ljust(width) + "n".rjust(7) + "".join(f"  {names[k]:>22}" for k in columns)]
    for key, by_check in rows.items():
        n = next(iter(by_check.values())).n
        cells = ""
        for column in columns:
            c = by_check.get(column)
            value = _measured(c) if c is not None else None
            cell = f"{value:.4f} {_MARK[c.verdict]}" if c is not None and value is not None else "-"
            cells += f"  {cell:>22}"
        lines.append("    " + label[key].ljust(width) + f"{n:>7}" + cells)
    return lines


def drift_table(drift: dict[str, Any]) -> list[str]:
    """Token agreement with the baseline up to each position, per slice: the long-output drift curve."""
    positions = drift["positions"]
    labels = [_slice_label(d["dimension"], d["value"], aggregate="all") for d in drift["slices"]]
    width = max(len(label) for label in labels) + 2
    lines = ["    drift from the baseline (token agreement up to position; identical outputs; median first divergence)",
             "    " + "slice".ljust(width) + "".join(f"{'@' + str(p):>8}" for p in positions)
             + f"{'identical':>11}{'diverge@':>10}"]
    for label, d in zip(labels, drift["slices"]):
        first = d["first_divergence"]
        lines.append("    " + label.ljust(width) + "".join(f"{a:>8.3f}" for a in d["agreement"])
                     + f"{d['identical']:>11.0%}" + (f"{first['p50']:>10.0f}" if first else f"{'-':>10}"))
    return lines


def human(report: ValidationReport, verbose: bool = True) -> str:
    out: list[str] = []
    for record in report.records:
        spec, result = record.spec, record.result
        head = f"{spec.model} / {spec.candidate} on {spec.target} (suite {spec.suite.name}): {result.verdict.upper()}"
        out.append(f"{head}   run {record.run_id[:8]}")
        if result.error:
            kind = {"input": "bad input", "stale_runtime": "infrastructure error"}.get(result.error_kind or "",
                                                                                    "internal error")
            out.append(f"    {kind}: {result.error.strip().splitlines()[0]}")
            out.append("")
            continue
        if verbose:
            out += _slice_table(result.checks)
            if result.provenance.get("drift"):
                out += drift_table(result.provenance["drift"])
        failures = [c for c in result.checks if c.verdict == FAIL]
        for c in failures:
            out.append(f"    FAILED {c.label}: {explain_failure(c)}")
        judged_aggregate = any(c.dimension == AGGREGATE_DIMENSION for c in result.checks)
        if failures and judged_aggregate and not any(c.dimension == AGGREGATE_DIMENSION for c in failures):
            regressed = sorted({f"{c.dimension}={c.value}" for c in failures})
            out.append(f"    aggregate within tolerance; regressed slice(s): {', '.join(regressed)}")
        moved = [s for s in result.provenance.get("batch_spread") or () if s["spread"] > 0]
        if moved:
            sizes = ", ".join(map(str, spec.suite.batch_sizes or ()))
            out.append(f"    results that change with the batch size ({sizes}):")
            for s in moved[:5]:
                out.append(f"      {_words(s['check'])} on {_slice_label(s['dimension'], s['value'])}: "
                           f"{s['min']:.4f} .. {s['max']:.4f}")
        for c in [c for c in result.checks if c.verdict == INCONCLUSIVE][:8]:
            out.append(f"    INCONCLUSIVE {c.label}: {explain_inconclusive(c)}")
        hidden = sum(c.verdict == INCONCLUSIVE for c in result.checks) - 8
        if hidden > 0:
            out.append(f"    ... and {hidden} more inconclusive (see --json)")
        decision = result.provenance.get("suite", {}).get("decision")
        if decision and decision.get("name") != "point" and verbose:
            out.append(f"    decided by policy {decision['name']} at confidence {decision['confidence']:g}, "
                       f"{decision['correction']} correction across the run's tests")
            weakest = max((c for c in result.checks if c.dimension != AGGREGATE_DIMENSION and "detectable_beyond"
                           in c.statistic and c.verdict != INSUFFICIENT), default=None,
                          key=lambda c: abs(c.statistic["detectable_beyond"] - c.tolerance))
            if weakest is not None:
                out.append(f"    least sensitive slice: {detectable(weakest)}")
        thin = sorted({f"{c.dimension}={c.value}" for c in result.checks if c.verdict == INSUFFICIENT})
        if thin:
            out.append(f"    insufficient (n < {spec.suite.min_slice_size}, not judged): {', '.join(thin)}")
        out.append("")
    counts: dict[str, int] = {}
    for r in report.records:
        counts[r.result.verdict] = counts.get(r.result.verdict, 0) + 1
    summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    out.append(f"{len(report.records)} run(s): {summary or 'none'}  (exit {report.exit_code()})")
    return "\n".join(out)
