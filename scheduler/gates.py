"""The rollback gate: for each model, candidate and target, which artifact serving should use now.

A candidate is served only when every suite of its model has a result for the job key of
the *current* state: the target's current stack (the part that can affect its runners), the
current artifacts, data and checks. Any change that has not been re-validated yet, a failed
or insufficient verdict, or an error, sends serving back to the baseline; so does an inconclusive
one, unless its suite decides under the `alert` policy.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from runners.contracts import ERROR, FAIL, INCONCLUSIVE, INSUFFICIENT, PASS, check_label, worst_verdict
from scheduler.config import LoadedConfig
from scheduler.ledger import Ledger

UNKNOWN = "unknown"
GATE_STATES = (PASS, FAIL, INCONCLUSIVE, INSUFFICIENT, ERROR, UNKNOWN)

# (target, model, candidate, suite) -> the job key of that work on the current state
CurrentKeys = dict[tuple[str, str, str, str], str]


@dataclass
class Gate:
    target: str
    model: str
    candidate: str
    state: str  # one of GATE_STATES
    use: str  # "candidate" or "baseline"
    artifact: str
    reason: str
    run_ids: list[str]  # the runs that decided it (one per suite), newest known when stale
    last_run_at: float | None
    last_success_at: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def current_keys(planner_jobs: list) -> CurrentKeys:
    return {(j.target, j.model, j.candidate, j.suite.name): j.job_key for j in planner_jobs}


# (target, model, candidate, suite) -> the run that speaks for it, and whether it ran on the current state
SpeakingRuns = dict[tuple[str, str, str, str], tuple[dict, bool]]


@dataclass(frozen=True)
class LatestRuns:
    """One read of the ledger's latest finished runs, resolved against the current job keys.

    A scrape reads this once and hands the same value to every family that needs it (gates, the
    per-slice series, the cross-target agreement), so they all describe one state of the ledger."""

    by_tuple: dict[tuple, dict]  # the newest finished run per (target, model, candidate, suite)
    runs: SpeakingRuns

    @classmethod
    def read(cls, ledger: Ledger, keys: CurrentKeys) -> LatestRuns:
        by_key, by_tuple = ledger.latest_finished()
        return cls(by_tuple=by_tuple, runs=current_runs(keys, by_key, by_tuple))


def current_runs(keys: CurrentKeys, by_key: dict[str, dict], by_tuple: dict[tuple, dict]) -> SpeakingRuns:
    """Per (target, model, candidate, suite): the run that speaks for it, and whether it is current."""
    out = {}
    for work, key in keys.items():
        if key in by_key:
            out[work] = (by_key[key], True)
        elif work in by_tuple:
            out[work] = (by_tuple[work], False)
    return out


def failed_slices(ledger: Ledger, run_ids: list[str]) -> dict[str, list[str]]:
    """Run id -> "check dimension=value" of each slice that failed, for the reason of a failed gate."""
    out: dict[str, list[str]] = {}
    for r in ledger.results_for(run_ids):
        if r.verdict == "fail":
            where = "aggregate" if r.dimension == "all" else f"{r.dimension}={r.value}"
            out.setdefault(r.run_id, []).append(f"{check_label(r.check_name, r.batch_size, r.metric)} {where}")
    return out


def compute_gates(ledger: Ledger, loaded: LoadedConfig, keys: CurrentKeys,
                  latest: LatestRuns | None = None) -> list[Gate]:
    """Every gate, from the ledger; `latest`: the runs already read for this request (read here if None)."""
    latest = latest or LatestRuns.read(ledger, keys)
    failing = [run["run_id"] for run, _ in latest.runs.values() if run["verdict"] == FAIL]
    return decide(loaded, keys, latest.runs, ledger.last_success(), failed_slices(ledger, failing))


def decide(loaded: LoadedConfig, keys: CurrentKeys, runs: SpeakingRuns,
           last_success: dict[tuple[str, str, str], float],
           failed_slices: dict[str, list[str]] | None = None) -> list[Gate]:
    """Every (target, model, candidate) gate. `failed_slices`: run id -> "check dimension=value" that failed."""
    failed_slices = failed_slices or {}
    cfg = loaded.config
    suites_of: dict[tuple[str, str, str], list[tuple[str, str, str, str]]] = {}
    for work in keys:
        suites_of.setdefault(work[:3], []).append(work)
    gates = []
    for (target, model, candidate), works in sorted(suites_of.items()):
        spoken = [runs[w] for w in works if w in runs]
        current = [run for run, is_current in spoken if is_current]
        if len(current) == len(works):
            state = _state([run["verdict"] for run in current])
            reason = {PASS: "passed every check on the current stack and artifacts",
                      FAIL: "failed on the current stack: " + ", ".join(
                          f for r in current for f in failed_slices.get(r["run_id"], [f"suite {r['suite']}"])),
                      INSUFFICIENT: "too few rows to judge on the current stack",
                      INCONCLUSIVE: "the confidence bounds straddle a tolerance on the current stack: more rows "
                                    "would decide",
                      ERROR: "the validation job failed: " + "; ".join(
                          (r["error"] or "").splitlines()[0] for r in current if r["verdict"] == ERROR)}[state]
        else:
            state = UNKNOWN
            reason = ("the stack, artifacts or checks changed since the last validation; re-validation pending"
                      if spoken else "not validated yet")
        serves = state == PASS or (state == INCONCLUSIVE and not inconclusive_blocks(cfg, current))
        use = "candidate" if serves else "baseline"
        model_cfg = cfg.models[model]
        artifact = model_cfg.candidates[candidate].path if use == "candidate" else model_cfg.baseline.path
        decided_by = current if state != UNKNOWN else [run for run, _ in spoken]
        finished = [run["finished_at"] for run, _ in spoken if run["finished_at"]]
        gates.append(Gate(target=target, model=model, candidate=candidate, state=state, use=use,
                          artifact=loaded.resolve(artifact), reason=reason,
                          run_ids=[run["run_id"] for run in decided_by], last_run_at=max(finished, default=None),
                          last_success_at=last_success.get((target, model, candidate))))
    return gates


def inconclusive_blocks(cfg, runs: list[dict]) -> bool:
    """Whether an inconclusive run keeps serving on the baseline: yes unless its suite's policy is `alert`."""
    for run in runs:
        suite = cfg.suites.get(run["suite"])
        if run["verdict"] == INCONCLUSIVE and (suite is None or suite.decision is None
                                               or suite.decision.policy != "alert"):
            return True
    return False


def _state(verdicts: list[str]) -> str:
    return worst_verdict([v if v in GATE_STATES else ERROR for v in verdicts])


def gates_document(gates: list[Gate]) -> dict[str, Any]:
    """The /gates JSON: per model and target, each candidate's decision."""
    models: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for gate in gates:
        models.setdefault(gate.model, {}).setdefault(gate.target, []).append(gate.to_dict())
    return {"version": 1, "generated_at": time.time(), "models": models}
