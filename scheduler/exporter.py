"""Prometheus exposition, read from the ledger on every scrape (a restart resets nothing).

A custom collector on its own registry: no global state, nothing registered at import. The
metric catalogue and the cardinality budget are in the README; a golden test pins names,
types and labels.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from scheduler import __version__
from scheduler.compare import AgreementCache
from scheduler.config import LoadedConfig
from scheduler.gates import GATE_STATES, CurrentKeys, Gate, LatestRuns, SpeakingRuns, compute_gates
from scheduler.ledger import Ledger

log = logging.getLogger("revalidator.exporter")

DURATION_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
STACK_LABELS = ("kernel", "os", "cpu_model", "python", "torch", "onnxruntime", "tensorrt", "nvidia_driver",
                "cuda_driver", "container_image")
RUN_STATUSES = ("queued", "running", "finished", "error", "unschedulable")
GATE_LABELS = ["target", "model", "candidate"]


@dataclass
class Snapshot:
    """What the daemon knows beyond the ledger: the current job keys and its own counters."""

    loaded: LoadedConfig
    keys: CurrentKeys
    last_poll_at: float | None = None
    missed_schedules: int = 0
    ledger_errors: int = 0
    ledger_writable: bool = True  # whether the last ledger write went through
    extra: dict[str, Any] = field(default_factory=dict)


class LedgerCollector:
    """The families read from the ledger (gates, targets, jobs...) and the daemon's own counters."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.read_errors = 0  # failed ledger reads during scrapes
        self.agreement = AgreementCache()

    def collect(self, snap: Snapshot, latest: LatestRuns | None) -> Iterator[Metric]:
        """One scrape's families; `latest` None: the ledger could not be read, only the daemon's own."""
        if latest is not None:
            try:
                yield from self._collect(snap, latest)
            except Exception:  # the scrape still answers with what the daemon itself knows
                self.read_errors += 1
                log.exception("ledger read failed during a scrape")
        yield from self._daemon(snap)

    def _collect(self, snap: Snapshot, latest: LatestRuns) -> Iterator[Metric]:
        yield from self._gates(compute_gates(self.ledger, snap.loaded, snap.keys, latest))
        yield from self._targets(snap)
        yield from self._jobs()
        yield from self._stale_runtimes(snap)
        yield from self._missed(snap)
        yield from self._cross_target(snap, latest.by_tuple)

    def _cross_target(self, snap: Snapshot, by_tuple: dict) -> Iterator[Metric]:
        labels = ["model", "candidate", "target", "other_target"]
        agreement = GaugeMetricFamily("revalidator_cross_target_agreement_ratio",
                                      "Share of rows on which the same candidate file gives the same answer on two "
                                      "targets (their current runs).", labels=labels)
        differing = GaugeMetricFamily("revalidator_cross_target_rows_differing",
                                      "Rows whose candidate outputs are not bit-identical between the two targets.",
                                      labels=labels)
        configured = snap.loaded.config.targets
        for model, candidate, target, other, ratio, rows in self.agreement.series(self.ledger, by_tuple):
            if target in configured and other in configured:
                agreement.add_metric([model, candidate, target, other], ratio)
                differing.add_metric([model, candidate, target, other], rows)
        bound = GaugeMetricFamily("revalidator_cross_target_disagreement_bound",
                                  "The configured share of rows two targets may answer differently "
                                  "(metrics.max_cross_target_disagreement).",
                                  value=snap.loaded.config.metrics.max_cross_target_disagreement)
        yield from (agreement, differing, bound)

    @staticmethod
    def _gates(gates: list[Gate]) -> Iterator[Metric]:
        state = GaugeMetricFamily("revalidator_gate_state", "1 for the gate's current state, 0 for the others.",
                                  labels=GATE_LABELS + ["state"])
        serve = GaugeMetricFamily("revalidator_gate_serve_candidate",
                                  "1 if serving should use the candidate now, 0 to fall back to the baseline.",
                                  labels=GATE_LABELS)
        last_run = GaugeMetricFamily("revalidator_gate_last_run_timestamp_seconds",
                                     "When the candidate was last validated on the target.", labels=GATE_LABELS)
        last_ok = GaugeMetricFamily("revalidator_gate_last_success_timestamp_seconds",
                                    "When the candidate last passed on the target.", labels=GATE_LABELS)
        for gate in gates:
            labels = [gate.target, gate.model, gate.candidate]
            for name in GATE_STATES:
                state.add_metric(labels + [name], 1.0 if gate.state == name else 0.0)
            serve.add_metric(labels, 1.0 if gate.use == "candidate" else 0.0)
            if gate.last_run_at:
                last_run.add_metric(labels, gate.last_run_at)
            if gate.last_success_at:
                last_ok.add_metric(labels, gate.last_success_at)
        yield from (state, serve, last_run, last_ok)

    def _targets(self, snap: Snapshot) -> Iterator[Metric]:
        ledger = self.ledger
        info = GaugeMetricFamily("revalidator_target_stack_info", "The target's stack: component versions as labels.",
                                 labels=["target", *STACK_LABELS, "fingerprint"])
        probe_ok = GaugeMetricFamily("revalidator_probe_success",
                                     "1 if the probe ran (or does not apply here), 0 if it failed.",
                                     labels=["target", "probe"])
        last_probe = GaugeMetricFamily("revalidator_target_last_probe_timestamp_seconds",
                                       "When the target's stack was last probed successfully.", labels=["target"])
        last_change = GaugeMetricFamily("revalidator_target_last_stack_change_timestamp_seconds",
                                        "When a component of the target's stack last changed.", labels=["target"])
        up = GaugeMetricFamily("revalidator_target_up", "1 if the target's probe reached it at the last poll.",
                               labels=["target"])
        unschedulable = GaugeMetricFamily("revalidator_target_unschedulable",
                                          "1 if no Ray node offers the target.", labels=["target"])
        changes = CounterMetricFamily("revalidator_stack_changes", "Stack changes seen, by component.",
                                      labels=["target", "component"])
        configured = snap.loaded.config.targets
        for target, fp in ledger.latest_fingerprints().items():
            if target not in configured:
                continue
            components = fp["components"]
            info.add_metric([target, *(components.get(k, "") for k in STACK_LABELS), fp["hash"]], 1.0)
            for probe, outcome in fp["probes"].items():
                probe_ok.add_metric([target, probe], 0.0 if outcome["status"] == "error" else 1.0)
        states = ledger.target_states()
        for target in configured:
            state = states.get(target)
            if state is None:
                continue
            if state.get("last_probe_at"):
                last_probe.add_metric([target], state["last_probe_at"])
            up.add_metric([target], 0.0 if state["state"] == "unreachable" else 1.0)
            unschedulable.add_metric([target], 1.0 if state["state"] == "unschedulable" else 0.0)
        for target, when in ledger.last_changes().items():
            if target in configured:
                last_change.add_metric([target], when)
        for (target, component), count in ledger.change_counts().items():
            if target in configured:
                changes.add_metric([target, component], count)
        yield from (info, probe_ok, last_probe, last_change, up, unschedulable, changes)

    def _jobs(self) -> Iterator[Metric]:
        ledger = self.ledger
        jobs = GaugeMetricFamily("revalidator_jobs", "Validation runs in the ledger, by target and state.",
                                 labels=["target", "state"])
        for (target, status), count in sorted(ledger.job_counts().items()):
            jobs.add_metric([target, status if status in RUN_STATUSES else "cancelled"], count)
        errors = CounterMetricFamily("revalidator_job_errors", "Runs that ended in an error or unschedulable.",
                                     labels=["target"])
        per_target: dict[str, int] = {}
        for (target, status), count in ledger.job_counts().items():
            if status in ("error", "unschedulable"):
                per_target[target] = per_target.get(target, 0) + count
        for target, count in sorted(per_target.items()):
            errors.add_metric([target], count)
        cumulative, count, total = ledger.job_durations(DURATION_BUCKETS)
        duration = HistogramMetricFamily("revalidator_job_duration_seconds", "Wall time of ended validation runs.",
                                         buckets=[(str(b), c) for b, c in zip(DURATION_BUCKETS, cumulative)]
                                         + [("+Inf", count)], sum_value=total)
        retries = CounterMetricFamily("revalidator_job_retries", "Job attempts repeated after a worker or node failure.",
                                      value=ledger.retries())
        yield from (jobs, errors, duration, retries)

    def _stale_runtimes(self, snap: Snapshot) -> Iterator[Metric]:
        stale = CounterMetricFamily("revalidator_stale_runtime_runs",
                                    "Runs whose worker had loaded another runtime than the installed one "
                                    "(error kind stale_runtime).", labels=["target"])
        counts = self.ledger.error_kind_counts("stale_runtime")
        for target in sorted(snap.loaded.config.targets):  # 0 too, so that the first one is an increase
            stale.add_metric([target], counts.get(target, 0))
        yield stale

    def _missed(self, snap: Snapshot) -> Iterator[Metric]:
        yield CounterMetricFamily("revalidator_missed_schedules",
                                  "Scheduled sweeps missed (caught up at start, or skipped by the scheduler).",
                                  value=snap.missed_schedules + self.ledger.catch_ups())

    def _daemon(self, snap: Snapshot) -> Iterator[Metric]:
        build = GaugeMetricFamily("revalidator_build_info", "The running revalidator.", labels=["version"])
        build.add_metric([__version__], 1.0)
        errors = CounterMetricFamily("revalidator_ledger_errors", "Ledger reads or writes that failed.",
                                     value=snap.ledger_errors + self.read_errors)
        writable = GaugeMetricFamily("revalidator_ledger_writable",
                                     "1 while the last ledger write went through, 0 while writes fail.",
                                     value=1.0 if snap.ledger_writable else 0.0)
        poll = GaugeMetricFamily("revalidator_last_poll_timestamp_seconds", "When the daemon last polled every target.")
        if snap.last_poll_at:
            poll.add_metric([], snap.last_poll_at)
        yield from (build, errors, writable, poll)


# The per-slice families: (name, help, the result column holding the value, or None for pass). Labels: the
# run's target, model, candidate, suite, the slice's dimension and value, the check (its bare name), and
# `batch_size` / `metric` only on results that have one (judged at a production batch size, an external metric).
CHECK_FAMILIES = (
    ("revalidator_check_candidate_value", "The candidate's value of the checked quantity on a slice.", "candidate"),
    ("revalidator_check_baseline_value", "The baseline's value of the checked quantity on the same slice.",
     "baseline"),
    ("revalidator_check_delta", "Candidate minus baseline on a slice.", "delta"),
    ("revalidator_check_tolerance", "The check's tolerance, fixed in the config.", "tolerance"),
    ("revalidator_check_pass", "1 if the check passed on the slice, 0 if it failed (judged slices only).", None),
    ("revalidator_check_rows", "Rows in the slice.", "n"),
    ("revalidator_check_bound", "The confidence bound nearest the tolerance on a slice (upper for a quantity judged "
                                "above its limit, lower for one judged below); only where the check has one.", "bound"),
    ("revalidator_check_inconclusive", "1 if the check's confidence bounds straddle its tolerance on the slice, 0 if "
                                       "it was decided (judged slices only).", "inconclusive"),
)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


class CheckSeries:
    """The per-slice families, rendered straight to text and cached per run.

    A finished run's results never change, so each run's lines are rendered once; a scrape
    joins the blocks of the runs that currently speak for each (target, model, candidate,
    suite). With 10^5 series this is the difference between seconds and milliseconds.
    """

    def __init__(self) -> None:
        self._blocks: dict[tuple[str, tuple[str, str, str, str], int], tuple[str, ...]] = {}
        # the label text of a (check, batch size, metric): a few distinct ones per suite, reused by every slice
        self._checks: dict[tuple[str, int | None, str | None], str] = {}

    def render(self, ledger: Ledger, runs: SpeakingRuns, limit: int) -> str:
        wanted = {(run["run_id"], work, limit) for work, (run, _) in runs.items()}
        missing = [entry for entry in wanted if entry not in self._blocks]
        if missing:
            rows_by_run: dict[str, list[Any]] = {}
            for row in ledger.results_for([run_id for run_id, _, _ in missing], with_statistic=True):
                rows_by_run.setdefault(row.run_id, []).append(row)
            for entry in missing:
                self._blocks[entry] = self._block(entry[1], _within_budget(rows_by_run.get(entry[0], []), limit))
        for stale in set(self._blocks) - wanted:
            del self._blocks[stale]
        ordered = [self._blocks[entry] for entry in sorted(wanted)]
        parts = []
        for index, (name, help_text, _) in enumerate(CHECK_FAMILIES):
            parts.append(f"# HELP {name} {help_text}\n# TYPE {name} gauge\n")
            parts.extend(block[index] for block in ordered)
        return "".join(parts)

    def _check_labels(self, check: str, batch_size: int | None, metric: str | None) -> str:
        key = (check, batch_size, metric)
        text = self._checks.get(key)
        if text is None:
            text = f'check="{_escape(check)}"'
            text += f',batch_size="{batch_size}"' if batch_size is not None else ""
            text += f',metric="{_escape(metric)}"' if metric is not None else ""
            self._checks[key] = text
        return text

    def _block(self, work: tuple[str, str, str, str], rows: list[Any]) -> tuple[str, ...]:
        target, model, candidate, suite = (_escape(v) for v in work)
        prefix = f'target="{target}",model="{model}",candidate="{candidate}",suite="{suite}"'
        lines: list[list[str]] = [[] for _ in CHECK_FAMILIES]
        for row in rows:
            verdict, statistic = row.verdict, row.statistic
            check = self._check_labels(row.check_name, row.batch_size, row.metric)
            labels = f'{{{prefix},dimension="{_escape(row.dimension)}",slice="{_escape(row.value)}",{check}}}'
            for index, (name, _, column) in enumerate(CHECK_FAMILIES):
                if column is None:
                    if verdict in ("pass", "fail"):
                        lines[index].append(f"{name}{labels} {'1.0' if verdict == 'pass' else '0.0'}\n")
                elif column == "bound":
                    bound = _nearest_bound(statistic)
                    if bound is not None:
                        lines[index].append(f"{name}{labels} {_number(bound)}\n")
                elif column == "inconclusive":
                    if verdict in ("pass", "fail", "inconclusive"):
                        lines[index].append(f"{name}{labels} {'1.0' if verdict == 'inconclusive' else '0.0'}\n")
                elif getattr(row, column) is not None:
                    lines[index].append(f"{name}{labels} {_number(getattr(row, column))}\n")
        return tuple("".join(family) for family in lines)


class _Scrape:
    """One scrape's collector: the collector called with this scrape's snapshot and ledger read."""

    def __init__(self, collector: LedgerCollector, snap: Snapshot, latest: LatestRuns | None) -> None:
        self.collector, self.snap, self.latest = collector, snap, latest

    def collect(self) -> Iterator[Metric]:
        return self.collector.collect(self.snap, self.latest)


class Exporter:
    """What /metrics serves: the cached per-slice families, then the collector's.

    Each scrape takes one snapshot of the daemon and one read of the ledger's latest runs, and
    passes both to every family, so the gates and the per-slice series describe the same runs."""

    def __init__(self, ledger: Ledger, snapshot: Callable[[], Snapshot]) -> None:
        self.ledger = ledger
        self.snapshot = snapshot
        self.checks = CheckSeries()
        self.collector = LedgerCollector(ledger)
        self._lock = threading.Lock()  # concurrent scrapes share the render cache

    def render(self) -> bytes:
        snap = self.snapshot()
        with self._lock:
            latest: LatestRuns | None = None
            checks = ""
            try:
                latest = LatestRuns.read(self.ledger, snap.keys)
                checks = self.checks.render(self.ledger, latest.runs, snap.loaded.config.metrics.max_slices_per_run)
            except Exception:  # the scrape still answers with the other families
                self.collector.read_errors += 1
                log.exception("ledger read failed during a scrape")
            registry = CollectorRegistry(auto_describe=False)  # per scrape: it only holds this scrape's collector
            registry.register(_Scrape(self.collector, snap, latest))
            return checks.encode() + generate_latest(registry)


def _nearest_bound(statistic: str) -> float | None:
    """The bound a tolerance is compared with, from a result's statistic JSON; None where there is none."""
    if '"bound_low"' not in statistic:  # most results under the point rule: skip the parse
        return None
    parsed = json.loads(statistic)
    return parsed["bound_high"] if parsed.get("direction") == "above" else parsed["bound_low"]


def _within_budget(rows: list[Any], limit: int) -> list[Any]:
    """The aggregate and then failing slices first, at most `limit` slice values per run."""
    slices = {(r.dimension, r.value) for r in rows}
    if len(slices) <= limit:
        return rows
    failing = {(r.dimension, r.value) for r in rows if r.verdict == "fail"}
    keep = set(sorted(slices, key=lambda s: (s[0] != "all", s not in failing, s))[:limit])
    return [r for r in rows if (r.dimension, r.value) in keep]



