"""Across the matrix: one candidate file on several targets, and one target before and after a stack change.

Cross-target: the latest finished runs of the same candidate (the same artifact sha256) under the same suite
on two targets, compared row by row from their kept row outputs, per slice, with the two fingerprints side by
side. Stack change: on one target, the last passing run and the first failing run after it; the
difference-in-differences of the candidate-minus-baseline gap says whether the new stack moved both models
equally or the quantized path regressed, and the fingerprint components that changed are named; with several
changes, the jobs that would isolate each are listed (nothing is re-run).
"""

from __future__ import annotations

import itertools
from typing import Any

from runners import catalogue
from scheduler import rowdiff
from scheduler.ledger import Ledger

DOCUMENT_VERSION = 1
# The aggregate quantity the gap is measured on, in order of preference (a rate both models have).
GAP_CHECKS = tuple(c.name for c in (catalogue.MAX_DROP, catalogue.MAX_RELATIVE_DROP, catalogue.MIN_ACCURACY,
                                    catalogue.MAX_EXACT_MATCH_DROP, catalogue.MAX_FORMAT_DROP,
                                    catalogue.MIN_TOKEN_AGREEMENT))
# A difference-in-differences within this share of the larger move (or within one row) is "both moved equally".
EQUAL_SHARE = 0.25


def candidate_sha(run: dict[str, Any]) -> str | None:
    return (run["provenance"].get("candidate") or {}).get("sha256")


def _latest(runs: list[dict[str, Any]]) -> dict[tuple[str, str, str, str], dict[str, Any]]:
    """The latest finished run per (model, candidate, suite, target); `runs` are oldest first."""
    return {(r["model"], r["candidate"], r["suite"], r["target"]): r for r in runs}


def cross_target_pair(first: dict[str, Any], second: dict[str, Any], rows_of: Any, bound: float) -> dict[str, Any]:
    """One candidate's runs on two targets, row by row; `rows_of(run_id)` reads a run's blob."""
    fp = [r["provenance"].get("fingerprint") or {} for r in (first, second)]
    doc: dict[str, Any] = {
        "model": first["model"], "candidate": first["candidate"], "suite": first["suite"],
        "candidate_sha256": candidate_sha(first), "targets": [first["target"], second["target"]],
        "run_ids": [first["run_id"], second["run_id"]], "verdicts": [first["verdict"], second["verdict"]],
        "fingerprints": [{"hash": f.get("hash"), "components": f.get("components", {})} for f in fp],
        "fingerprint_diff": rowdiff.fingerprint_diff(*fp),
        "runner_options_differ": first["provenance"].get("runner_options") != second["provenance"].get(
            "runner_options"),
        "bound": bound, "rows": None}
    try:
        diff = rowdiff.diff_rows(rows_of(first["run_id"]), rows_of(second["run_id"]), tuple(doc["run_ids"]))
    except rowdiff.RowsUnavailable as exc:
        doc["rows_unavailable"] = str(exc)
        return doc
    cand = diff["models"]["candidate"]
    doc.update(rows=diff, agreement=cand["agreement"], disagreement=1.0 - (cand["agreement"] or 0.0),
               identical=diff["identical"], diverging_slices=rowdiff.diverging_slices(diff),
               within_bound=(1.0 - (cand["agreement"] or 0.0)) <= bound)
    return doc


def cross_target(runs: list[dict[str, Any]], rows_of: Any, bound: float,
                 targets: list[str] | None = None) -> list[dict[str, Any]]:
    """Every pair of targets whose latest runs of a (model, candidate, suite) used the same candidate file."""
    groups: dict[tuple[str, str, str, str | None], list[dict[str, Any]]] = {}
    for (model, candidate, suite, target), run in sorted(_latest(runs).items()):
        if targets is None or target in targets:
            groups.setdefault((model, candidate, suite, candidate_sha(run)), []).append(run)
    return [cross_target_pair(a, b, rows_of, bound)
            for key, members in groups.items() if key[3] for a, b in itertools.combinations(members, 2)]


def _key(check: dict[str, Any]) -> tuple[str, int | None, str | None]:
    """What tells two results of one slice apart: the check, its batch size, its external metric."""
    return check["check_name"], check.get("batch_size"), check.get("metric")


def _gap_check(run: dict[str, Any]) -> dict[str, Any] | None:
    """The aggregate result the gap is measured on (at the run's first batch size where there are several)."""
    aggregate: dict[str, dict[str, Any]] = {}
    for c in run["checks"]:
        if c["dimension"] == "all" and c["baseline"] is not None and c["candidate"] is not None:
            aggregate.setdefault(c["check_name"], c)
    return next((aggregate[n] for n in GAP_CHECKS if n in aggregate), next(iter(aggregate.values()), None))


def diff_in_diff(before: dict[str, Any], after: dict[str, Any], check: tuple[str, int | None, str | None]
                 ) -> list[dict[str, Any]]:
    """Per slice of `check` (name, batch size, metric): the baseline's and the candidate's moves and the
    change of their gap."""
    old = {(c["dimension"], c["value"]): c for c in before["checks"] if _key(c) == check}
    out = []
    for c in after["checks"]:
        prior = old.get((c["dimension"], c["value"]))
        if _key(c) != check or prior is None or None in (c["baseline"], c["candidate"],
                                                          prior["baseline"], prior["candidate"]):
            continue
        base_move, cand_move = c["baseline"] - prior["baseline"], c["candidate"] - prior["candidate"]
        did = cand_move - base_move
        out.append({"dimension": c["dimension"], "value": c["value"], "n": c["n"],
                    "before": {"baseline": prior["baseline"], "candidate": prior["candidate"]},
                    "after": {"baseline": c["baseline"], "candidate": c["candidate"]},
                    "baseline_move": base_move, "candidate_move": cand_move, "diff_in_diff": did,
                    "reading": reading(base_move, cand_move, c["n"])})
    return out


def reading(base_move: float, cand_move: float, n: int) -> str:
    """What a difference-in-differences says, in words."""
    did = cand_move - base_move
    larger = max(abs(base_move), abs(cand_move))
    if larger == 0:
        return "neither model moved"
    if abs(did) <= max(EQUAL_SHARE * larger, 1.0 / max(n, 1) + 1e-12):
        return "the stack moved both models equally"
    return "the quantized path regressed on the new stack" if did < 0 else "the quantized path improved on the new stack"


def isolating_jobs(changed: list[dict[str, Any]], passing_fp: dict[str, Any],
                   fingerprints: dict[str, dict[str, Any]], run: dict[str, Any]) -> list[dict[str, Any]]:
    """For each changed component, a job that sees it change alone: a target whose current stack is the
    passing one with only that component at its new value, where one exists; else the stack to build."""
    old = passing_fp.get("components", {})
    out = []
    for change in changed:
        wanted = {**old, change["component"]: change["second"]}
        wanted = {k: v for k, v in wanted.items() if v is not None}
        names = [t for t, fp in sorted(fingerprints.items())
                 if {k: v for k, v in fp.get("components", {}).items() if k in set(old) | {change["component"]}}
                 == wanted]
        job = {"component": change["component"], "from": change["first"], "to": change["second"],
               "stack": f"the last passing stack of {run['target']} with only {change['component']} = "
                        f"{change['second']}"}
        if names:
            job["command"] = f"revalidator validate --target {names[0]} --model {run['model']}"
            job["targets"] = names
        out.append(job)
    return out


def stack_changes(runs: list[dict[str, Any]], fingerprints: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (target, model, candidate, suite): the last passing run followed by the first failing one."""
    series: dict[tuple[str, str, str, str], list[dict[str, Any]]] = {}
    for run in runs:
        series.setdefault((run["target"], run["model"], run["candidate"], run["suite"]), []).append(run)
    out = []
    for history in (series[key] for key in sorted(series)):
        latest, last_pass = None, None
        for run in history:  # the latest pass-then-fail transition wins
            if run["verdict"] == "pass":
                last_pass = run
            elif run["verdict"] == "fail" and last_pass is not None:
                latest, last_pass = (last_pass, run), None
        if latest is not None:
            out.append(stack_change(*latest, fingerprints))
    return out


def stack_change(passing: dict[str, Any], failing: dict[str, Any],
                 fingerprints: dict[str, dict[str, Any]]) -> dict[str, Any]:
    fp = [r["provenance"].get("fingerprint") or {} for r in (passing, failing)]
    changed = rowdiff.fingerprint_diff(*fp)
    check = _gap_check(failing)
    slices = diff_in_diff(passing, failing, _key(check)) if check else []
    aggregate = next((s for s in slices if s["dimension"] == "all"), None)
    regressed = [f"{s['dimension']}={s['value']}" for s in slices if s["dimension"] != "all"
                 and s["reading"] == "the quantized path regressed on the new stack"]
    doc = {"target": failing["target"], "model": failing["model"], "candidate": failing["candidate"],
           "suite": failing["suite"], "last_pass": passing["run_id"], "first_fail": failing["run_id"],
           "same_candidate": candidate_sha(passing) == candidate_sha(failing),
           "check": check["check_name"] if check else None, "batch_size": check.get("batch_size") if check else None,
           "metric": check.get("metric") if check else None, "aggregate": aggregate, "slices": slices,
           "regressed_slices": regressed, "changed": changed,
           "reading": aggregate["reading"] if aggregate else "nothing to compare (no shared aggregate check)",
           "isolate": isolating_jobs(changed, fp[0], fingerprints, failing) if len(changed) > 1 else []}
    if not changed:
        doc["reading"] += " (no fingerprint component changed: the change is elsewhere)"
    return doc


def compare(ledger: Ledger, bound: float, model: str | None = None, candidate: str | None = None,
            targets: list[str] | None = None) -> dict[str, Any]:
    """The whole `compare` document."""
    runs = ledger.finished_runs(model, candidate)
    changes = [c for c in stack_changes(runs, ledger.latest_fingerprints()) if targets is None or c["target"] in targets]
    return {"version": DOCUMENT_VERSION, "bound": bound, "cross_target": cross_target(runs, ledger.row_outputs, bound,
                                                                                        targets),
            "stack_changes": changes}


def exit_code(doc: dict[str, Any]) -> int:
    """1 where two targets disagree beyond the bound, else 0."""
    return 1 if any(p.get("within_bound") is False for p in doc["cross_target"]) else 0


def human(doc: dict[str, Any]) -> str:
    lines: list[str] = []
    for pair in doc["cross_target"]:
        a, b = pair["targets"]
        lines.append(f"{pair['model']} / {pair['candidate']} (suite {pair['suite']}, candidate sha256 "
                     f"{(pair['candidate_sha256'] or '')[:12]}) on {a} vs {b}")
        if pair.get("rows_unavailable"):
            lines.append(f"  rows not compared: {pair['rows_unavailable']}")
        elif pair["identical"]:
            lines.append(f"  the two targets agree on every row ({pair['rows']['rows']} rows, bit-identical outputs)")
        else:
            lines += rowdiff.describe(pair["rows"], (a, b))
            verdict = "within" if pair["within_bound"] else "BEYOND"
            lines.append(f"  cross-target disagreement {pair['disagreement']:.4f}: {verdict} the bound {pair['bound']:g}")
        lines.append(f"  fingerprints: {a} {pair['fingerprints'][0]['hash']}, {b} {pair['fingerprints'][1]['hash']}")
        width = max([len(d["component"]) for d in pair["fingerprint_diff"]] + [9])
        for d in pair["fingerprint_diff"]:
            lines.append(f"    {d['component']:{width}}  {a}: {d['first']}   {b}: {d['second']}")
        if not pair["fingerprint_diff"]:
            lines.append("    identical stacks")
        if pair["runner_options_differ"]:
            lines.append("    the targets' runner options differ too (see --json)")
    for change in doc["stack_changes"]:
        lines.append(f"{change['model']} / {change['candidate']} on {change['target']}: last pass "
                     f"{change['last_pass'][:8]}, first fail {change['first_fail'][:8]}: {change['reading']}")
        agg = change["aggregate"]
        if agg:
            lines.append(f"  {change['check']}: baseline {agg['before']['baseline']:.4f} -> {agg['after']['baseline']:.4f}"
                         f" ({agg['baseline_move']:+.4f}), candidate {agg['before']['candidate']:.4f} -> "
                         f"{agg['after']['candidate']:.4f} ({agg['candidate_move']:+.4f}), "
                         f"difference-in-differences {agg['diff_in_diff']:+.4f}")
        if change["regressed_slices"]:
            lines.append(f"  regressed on the new stack: {', '.join(change['regressed_slices'])}")
        lines += [f"  changed: {d['component']}: {d['first']} -> {d['second']}" for d in change["changed"]]
        for job in change["isolate"]:
            lines.append(f"  to isolate {job['component']}: " + (job.get("command") or f"a run on {job['stack']}"))
    if not lines:
        lines.append("nothing to compare: no candidate file finished on two targets, and no pass followed by a fail")
    return "\n".join(lines)


class AgreementCache:
    """Cross-target agreement of the current runs, for the exporter: each run's candidate sha256 is read
    once, each pair of runs is compared once (a finished run never changes)."""

    def __init__(self) -> None:
        self._sha: dict[str, str | None] = {}
        self._pairs: dict[tuple[str, str], tuple[float, int] | None] = {}

    def series(self, ledger: Ledger, latest: dict[tuple[str, str, str, str], dict[str, Any]]
               ) -> list[tuple[str, str, str, str, float, int]]:
        """(model, candidate, target, other target, agreement, rows differing) per pair of targets whose
        current runs of the same (model, candidate, suite) used the same candidate file."""
        groups: dict[tuple[str, str, str, str], list[tuple[str, str]]] = {}
        for (target, model, candidate, suite), run in sorted(latest.items()):
            if run["status"] != "finished":
                continue
            if run["run_id"] not in self._sha:
                recorded = ledger.run(run["run_id"]) or {"provenance": {}}
                self._sha[run["run_id"]] = candidate_sha(recorded)
            sha = self._sha[run["run_id"]]
            if sha:
                groups.setdefault((model, candidate, suite, sha), []).append((target, run["run_id"]))
        out = []
        wanted = set()
        for (model, candidate, _suite, _sha), members in groups.items():
            for (a, run_a), (b, run_b) in itertools.combinations(members, 2):
                wanted.add((run_a, run_b))
                if (run_a, run_b) not in self._pairs:
                    try:
                        diff = rowdiff.diff_rows(ledger.row_outputs(run_a), ledger.row_outputs(run_b), (run_a, run_b))
                        cand = diff["models"]["candidate"]
                        self._pairs[(run_a, run_b)] = (cand["agreement"], cand["differ"])
                    except rowdiff.RowsUnavailable:
                        self._pairs[(run_a, run_b)] = None
                if self._pairs[(run_a, run_b)] is not None:
                    out.append((model, candidate, a, b, *self._pairs[(run_a, run_b)]))
        for stale in set(self._pairs) - wanted:
            del self._pairs[stale]
        current = {run["run_id"] for run in latest.values()}
        for stale in set(self._sha) - current:
            del self._sha[stale]
        return out


def route(ledger: Ledger, bound: Any) -> Any:
    """The daemon's GET /compare?model=&candidate=&targets=a,b: the `compare --json` document.
    `bound()` gives the current metrics.max_cross_target_disagreement."""
    from scheduler.http import json_response

    def answer(query: dict[str, str]) -> tuple[int, str, bytes]:
        targets = query["targets"].split(",") if query.get("targets") else None
        return json_response(200, compare(ledger, bound(), query.get("model"), query.get("candidate"), targets))

    return answer
