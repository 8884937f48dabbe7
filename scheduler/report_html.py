"""`revalidator report RUN_ID --html FILE`: one run as a self-contained HTML audit report.

No network and no external file: styles inline, charts as plain inline SVG (intervals, drift curves), the
run's JSON embedded in a <script type="application/json">. Sections: the verdict and why, the cross-target
view, the fingerprint with its difference from the last passing run, the per-slice table with each interval
drawn, the drift curves (generation), the batch-size spread, and the provenance.
"""

from __future__ import annotations

import json
import time
from html import escape
from typing import Any

from runners.contracts import CheckResult, check_label
from scheduler import compare, rowdiff
from scheduler.ledger import Ledger
from scheduler.plots import drift_svg
from scheduler.report import explain_failure, explain_inconclusive

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1200px}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:.9em}td,th{padding:.2em .6em;border-bottom:1px solid #eee;text-align:right}
th{background:#f4f4f4}td.l,th.l{text-align:left}.pass{color:#17702a}.fail{color:#b00020;font-weight:bold}
.insufficient,.error,.inconclusive{color:#a35a00}.verdict{font-size:1.2em;padding:.4em .8em;display:inline-block;border:2px solid}
pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:.8em;white-space:pre-wrap}code{font-size:.9em}
"""


def _check(row: dict[str, Any]) -> CheckResult:
    return CheckResult(row["check_name"], row["dimension"], row["value"], row["n"], row["baseline"],
                       row["candidate"], row["delta"], row["tolerance"], row["verdict"], row.get("statistic") or {},
                       batch_size=row.get("batch_size"), metric=row.get("metric"))


def _label(row: dict[str, Any]) -> str:
    return check_label(row["check_name"], row.get("batch_size"), row.get("metric"))


def _num(value: Any, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else escape(str(value))


def _intervals(statistic: dict[str, Any]) -> list[tuple[str, float, float]]:
    """Every (name, low, high) pair the statistic carries ("wilson_low"/"wilson_high", ...)."""
    out = []
    for key, low in statistic.items():
        if key.endswith("_low") and isinstance(low, (int, float)):
            high = statistic.get(key[:-4] + "_high")
            if isinstance(high, (int, float)):
                out.append((key[:-4], float(low), float(high)))
    return out


def interval_svg(low: float, high: float, point: float | None, limit: float | None) -> str:
    """An interval on a 0..1 axis (its own range when outside it), the point, and the limit as a red tick."""
    lo, hi = min(0.0, low), max(1.0, high)
    width, pad = 180, 6

    def x(v: float) -> float:
        return pad + (width - 2 * pad) * (v - lo) / ((hi - lo) or 1.0)

    parts = [f'<svg class="interval" xmlns="http://www.w3.org/2000/svg" width="{width}" height="16">',
             f'<line x1="{pad}" y1="8" x2="{width - pad}" y2="8" stroke="#ccc"/>',
             f'<rect x="{x(low):.1f}" y="4" width="{max(x(high) - x(low), 1):.1f}" height="8" fill="#7aa6d8">'
             f'<title>{low:.4f} .. {high:.4f}</title></rect>']
    if point is not None:
        parts.append(f'<circle cx="{x(point):.1f}" cy="8" r="3" fill="#123"/>')
    if limit is not None and lo <= limit <= hi:
        parts.append(f'<line x1="{x(limit):.1f}" y1="1" x2="{x(limit):.1f}" y2="15" stroke="#b00020"/>')
    return "".join(parts) + "</svg>"


def _slice_table(checks: list[dict[str, Any]]) -> str:
    rows = ['<table id="slices"><tr><th class="l">check</th><th class="l">slice</th><th>n</th><th>baseline</th>'
            '<th>candidate</th><th>delta</th><th>tolerance</th><th class="l">verdict</th><th class="l">interval</th></tr>']
    for c in checks:
        where = "aggregate" if c["dimension"] == "all" else f"{c['dimension']}={c['value']}"
        drawn = ""
        for name, low, high in _intervals(c.get("statistic") or {}):
            limit = c["tolerance"] if c["check_name"].startswith("min_") else None
            drawn += f'{escape(name)} {interval_svg(low, high, c["candidate"], limit)} '
        rows.append(f'<tr><td class="l">{escape(_label(c))}</td><td class="l">{escape(where)}</td>'
                    f'<td>{c["n"]}</td><td>{_num(c["baseline"])}</td><td>{_num(c["candidate"])}</td>'
                    f'<td>{_num(c["delta"])}</td><td>{c["tolerance"]:g}</td>'
                    f'<td class="l {escape(c["verdict"])}">{escape(c["verdict"])}</td><td class="l">{drawn}</td></tr>')
    return "".join(rows) + "</table>"


def _why(run: dict[str, Any]) -> str:
    if run.get("error"):
        return f'<p id="why">The run ended in an error: <code>{escape(run["error"].strip().splitlines()[0])}</code></p>'
    items = [f"<li>FAILED {escape(_label(c))}: {escape(explain_failure(_check(c)))}</li>"
             for c in run["checks"] if c["verdict"] == "fail"]
    items += [f"<li>INCONCLUSIVE {escape(_label(c))}: {escape(explain_inconclusive(_check(c)))}</li>"
              for c in run["checks"] if c["verdict"] == "inconclusive"]
    thin = [f"{c['dimension']}={c['value']}" for c in run["checks"] if c["verdict"] == "insufficient"]
    if thin:
        items.append(f"<li>too few rows to judge (insufficient): {escape(', '.join(sorted(set(thin))))}</li>")
    if not items:
        items.append(f"<li>every one of {len(run['checks'])} checks passed on every slice</li>")
    return '<ul id="why">' + "".join(items) + "</ul>"


def _table(rows: list[list[Any]], head: list[str], ident: str) -> str:
    out = [f'<table id="{ident}"><tr>' + "".join(f'<th class="l">{escape(h)}</th>' for h in head) + "</tr>"]
    for row in rows:
        out.append("<tr>" + "".join(f'<td class="l">{_num(v)}</td>' for v in row) + "</tr>")
    return "".join(out) + "</table>"


def _batch_spread(spread: list[dict[str, Any]] | None) -> str:
    if not spread:
        return '<p id="batch-spread">This run was judged at one batch size.</p>'
    return _table([[s["check"], "aggregate" if s["dimension"] == "all" else f"{s['dimension']}={s['value']}",
                    s["min"], s["max"], s["spread"]] for s in spread],
                  ["check", "slice", "min", "max", "spread"], "batch-spread")


def _cross_target(pairs: list[dict[str, Any]]) -> str:
    if not pairs:
        return '<p id="cross-target">No other target has finished this candidate file yet.</p>'
    parts = ['<div id="cross-target">']
    for p in pairs:
        a, b = p["targets"]
        parts.append(f"<h3>{escape(a)} vs {escape(b)}</h3>")
        if p.get("rows_unavailable"):
            parts.append(f"<p>{escape(p['rows_unavailable'])}</p>")
        elif p["identical"]:
            parts.append(f"<p>The two targets agree on every row ({p['rows']['rows']} rows, bit-identical).</p>")
        else:
            parts.append("<pre>" + escape("\n".join(rowdiff.describe(p["rows"], (a, b)))) + "</pre>")
        parts.append(_table([[d["component"], d["first"], d["second"]] for d in p["fingerprint_diff"]],
                            ["component", a, b], f"cross-fingerprint-{escape(a)}-{escape(b)}"))
    return "".join(parts) + "</div>"


def _fingerprint(fp: dict[str, Any], passing: dict[str, Any] | None) -> str:
    components = fp.get("components", {})
    table = _table([[k, v] for k, v in sorted(components.items())], ["component", "value"], "fingerprint")
    if passing is None:
        return table + '<p id="fingerprint-diff">No earlier passing run of this candidate on this target.</p>'
    diff = rowdiff.fingerprint_diff(passing["provenance"].get("fingerprint"), fp)
    head = f"Against the last passing run {escape(passing['run_id'][:8])}: "
    if not diff:
        return table + f'<p id="fingerprint-diff">{head}the same stack.</p>'
    return table + f"<p>{head}</p>" + _table([[d["component"], d["first"], d["second"]] for d in diff],
                                             ["component", "last pass", "this run"], "fingerprint-diff")


def context(ledger: Ledger, run: dict[str, Any], bound: float) -> dict[str, Any]:
    """What the report shows beyond the run itself: the cross-target pairs and the last passing run."""
    runs = ledger.finished_runs(run["model"], run["candidate"])
    pairs = [p for p in compare.cross_target(runs, ledger.row_outputs, bound) if run["run_id"] in p["run_ids"]]
    earlier = [r for r in runs if r["target"] == run["target"] and r["verdict"] == "pass"
               and r["run_id"] != run["run_id"] and (r["finished_at"] or 0) <= (run["finished_at"] or 0)]
    return {"cross_target": pairs, "last_pass": earlier[-1] if earlier else None}


def render(run: dict[str, Any], extra: dict[str, Any]) -> str:
    """The whole page for one run (as Ledger.run returns it) and its context()."""
    prov = run.get("provenance") or {}
    verdict = run.get("verdict") or run.get("status")
    title = f"{run['model']} / {run['candidate']} on {run['target']} (suite {run['suite']})"
    drift = prov.get("drift")
    curves = drift_svg(title, drift) if drift else '<p>Not a generation run: no drift curves.</p>'
    shown = {k: v for k, v in prov.items() if k not in ("drift", "fingerprint", "batch_spread")}
    document = {"version": 1, "run": run, "cross_target": extra["cross_target"],
                "last_pass": (extra["last_pass"] or {}).get("run_id")}
    embedded = json.dumps(document, default=str).replace("</", "<\\/")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}: {escape(str(verdict))}</title>
<style>{_STYLE}</style></head><body>
<h1>{escape(title)}</h1>
<p>run <code>{escape(run['run_id'])}</code>, trigger {escape(str(run.get('trigger')))}, finished
{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(run.get('finished_at') or 0))}</p>
<h2>Verdict</h2><p id="verdict" class="verdict {escape(str(verdict))}">{escape(str(verdict).upper())}</p>{_why(run)}
<h2>Across targets</h2>{_cross_target(extra['cross_target'])}
<h2>Fingerprint</h2>{_fingerprint(prov.get('fingerprint') or {}, extra['last_pass'])}
<h2>Per slice</h2>{_slice_table(run.get('checks') or [])}
<h2>Drift curves</h2><div id="drift">{curves}</div>
<h2>Batch-size spread</h2>{_batch_spread(prov.get('batch_spread'))}
<h2>Provenance</h2><pre id="provenance">{escape(json.dumps(shown, indent=2, default=str))}</pre>
<script type="application/json" id="run-json">{embedded}</script>
</body></html>
"""
