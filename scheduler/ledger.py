"""The ledger: every run, its results per check and slice, its provenance, and the history
of every target's stack.

SQLite (WAL) by default, any SQLAlchemy URL otherwise. The schema is versioned and
migrated forward on open. A job is in the ledger (queued, with its full JobSpec) before it
is dispatched, marked running when it starts, and finished in one transaction (status,
results and provenance together) exactly once, so a reader never sees half a result and a
re-dispatched job is never recorded twice.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from runners.contracts import CONTRACT_VERSION, JobResult, JobSpec, job_spec_from_dict, job_spec_to_dict
from scheduler.ledger_schema import (ERROR_STATUS, FINISHED, MIGRATIONS, QUEUED, RUNNING, SCHEMA_VERSION,
                                     UNFINISHED, UNSCHEDULABLE, component_changes, fingerprints, metadata,
                                     provenance, result_columns, results, row_outputs, runs, schema_version, sweeps,
                                     target_status)
from scheduler.storage import (LedgerError, LedgerWriteError, WriteHealth, check_integrity, create_engine,
                               resolve_url, sqlite_path, sqlite_url)

__all__ = ["Ledger", "LedgerError", "LedgerWriteError", "SCHEMA_VERSION", "sqlite_url"]

class Ledger:
    def __init__(self, url: str, base_dir: str | Path = ".", read_only: bool = False) -> None:
        """Open (and migrate) the ledger; `read_only` opens an existing one only to read it, unmigrated."""
        self.read_only = read_only
        try:
            self.url = resolve_url(url, Path(base_dir), create_folder=not read_only)
            path = sqlite_path(self.url)
            self.where = str(path) if path is not None else self.url.split("@")[-1]
            self.health = WriteHealth(self.where)
            self.engine: Engine = create_engine(self.url, read_only=read_only)
            check_integrity(self.engine, self.where)
            if read_only:
                self._check_readable_schema()
            else:
                self.migrate()
        except LedgerError:
            raise
        except (sa.exc.SQLAlchemyError, OSError, ValueError) as exc:
            raise LedgerError(f"cannot open ledger {url}: {exc}") from exc

    @classmethod
    def for_reading(cls, url: str, base_dir: str | Path = ".") -> "Ledger":
        """An existing SQLite ledger opened read-only (reading needs no write: a read-only file or
        mount works); a missing one is created empty, as a writer would."""
        path = sqlite_path(resolve_url(url, Path(base_dir), create_folder=False))
        return cls(url, base_dir, read_only=path is not None and path.is_file())

    def _write(self):
        """A write transaction; its failure is counted in `health` and raised as LedgerWriteError."""
        return self.health.recording(self.engine)

    def _check_readable_schema(self) -> None:
        current = self.schema_version()
        if current != SCHEMA_VERSION:
            raise LedgerError(f"ledger {self.where} has schema v{current}, this revalidator reads v{SCHEMA_VERSION}; "
                              "it is migrated when a revalidator opens it writable (the daemon, validate)")

    def migrate(self) -> None:
        with self.engine.begin() as conn:
            metadata.create_all(conn, tables=[schema_version])
            current = conn.execute(sa.select(sa.func.max(schema_version.c.version))).scalar() or 0
            if current > SCHEMA_VERSION:
                raise LedgerError(f"ledger schema v{current} is newer than this revalidator (v{SCHEMA_VERSION})")
            for version in range(current + 1, SCHEMA_VERSION + 1):
                MIGRATIONS[version - 1](conn)
                conn.execute(schema_version.insert().values(version=version))

    def schema_version(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.max(schema_version.c.version))).scalar() or 0

    # -- runs -------------------------------------------------------------------------------
    def enqueue(self, spec: JobSpec) -> str:
        """Record a job as queued, with its full spec, before it is dispatched; returns the run id."""
        run_id = str(uuid.uuid4())
        with self._write() as conn:
            conn.execute(runs.insert().values(
                run_id=run_id, job_id=spec.job_id, job_key=spec.job_key or spec.job_id, trigger=spec.trigger,
                target=spec.target, model=spec.model, candidate=spec.candidate, suite=spec.suite.name,
                status=QUEUED, config_hash=spec.config_hash, created_at=time.time(),
                spec=json.dumps(job_spec_to_dict(spec))))
        return run_id

    def mark_running(self, run_id: str) -> None:
        """Queued to running; a run that has already ended stays ended (a late, retried write)."""
        with self._write() as conn:
            conn.execute(runs.update().where(runs.c.run_id == run_id).where(runs.c.status.in_(UNFINISHED)).values(
                status=RUNNING, started_at=time.time(), attempts=runs.c.attempts + 1))

    def start_run(self, spec: JobSpec) -> str:
        """Record a run as running, before its work starts; returns the run id."""
        run_id = self.enqueue(spec)
        self.mark_running(run_id)
        return run_id

    def requeue(self, run_id: str, reason: str, retry: bool = False) -> None:
        """Back to queued: a retry after a failure (`retry`, counted) or work handed back by a
        shutdown (resumed later, not counted); the reason is kept as its error."""
        values: dict[str, Any] = {"status": QUEUED, "error": reason}
        if retry:
            values["retries"] = runs.c.retries + 1
        with self._write() as conn:
            conn.execute(runs.update().where(runs.c.run_id == run_id).where(runs.c.status.in_(UNFINISHED))
                         .values(**values))

    def close_unfinished(self, run_id: str, status: str, error: str) -> bool:
        """End a run without results (unschedulable, cancelled); False if it had already ended."""
        with self._write() as conn:
            done = conn.execute(runs.update().where(runs.c.run_id == run_id).where(runs.c.status.in_(UNFINISHED))
                                .values(status=status, verdict=ERROR_STATUS, error=error, error_kind="internal",
                                        finished_at=time.time()))
            return done.rowcount == 1

    def unfinished(self) -> list[tuple[str, JobSpec]]:
        """Queued or running runs (what a previous process left), oldest first, with their specs."""
        query = (sa.select(runs.c.run_id, runs.c.spec).where(runs.c.status.in_(UNFINISHED))
                 .where(runs.c.spec.is_not(None)).order_by(runs.c.created_at))
        with self.engine.connect() as conn:
            return [(r.run_id, job_spec_from_dict(json.loads(r.spec))) for r in conn.execute(query)]

    def known_job_keys(self, keys: list[str], include_finished: bool = True) -> set[str]:
        """Of `keys`, those already queued or running, and (unless told otherwise) those with a result."""
        statuses = (FINISHED, *UNFINISHED) if include_finished else UNFINISHED
        found: set[str] = set()
        with self.engine.connect() as conn:
            for start in range(0, len(keys), 500):
                chunk = keys[start:start + 500]
                found.update(conn.execute(sa.select(runs.c.job_key).where(runs.c.job_key.in_(chunk)).where(
                    runs.c.status.in_(statuses))).scalars())
        return found

    def finish_run(self, run_id: str, result: JobResult) -> bool:
        """Status, results and provenance in one transaction, once: False if the run had already ended."""
        fingerprint = result.provenance.get("fingerprint", {}).get("hash")
        with self._write() as conn:
            updated = conn.execute(runs.update().where(runs.c.run_id == run_id).where(
                runs.c.status.in_(UNFINISHED)).values(
                status=result.status, verdict=result.verdict, error=result.error, error_kind=result.error_kind,
                fingerprint_hash=fingerprint, finished_at=result.finished_at or time.time()))
            if updated.rowcount != 1:
                return False
            if result.checks:
                conn.execute(results.insert(), [{
                    "run_id": run_id, **result_columns(c, getattr(result, "version", CONTRACT_VERSION)),
                    "dimension": c.dimension, "value": c.value, "n": c.n,
                    "baseline": c.baseline, "candidate": c.candidate, "delta": c.delta, "tolerance": c.tolerance,
                    "verdict": c.verdict, "statistic": json.dumps(c.statistic)} for c in result.checks])
            if result.provenance:
                conn.execute(provenance.insert().values(run_id=run_id, document=json.dumps(result.provenance)))
            if getattr(result, "row_outputs", b""):  # a result from an older worker has none
                conn.execute(row_outputs.insert().values(run_id=run_id, blob=result.row_outputs))
        return True

    # -- state for the exporter and the gates ----------------------------------------------------
    _RUN_COLUMNS = ("run_id", "job_key", "target", "model", "candidate", "suite", "status", "verdict", "error",
                    "created_at", "finished_at", "fingerprint_hash")

    def latest_finished(self) -> tuple[dict[str, dict[str, Any]], dict[tuple[str, str, str, str], dict[str, Any]]]:
        """The latest ended run per job key, and per (target, model, candidate, suite).

        Per key, a finished run outranks a later error: an infrastructure failure of the same work
        on the same stack does not undo what is known about it.
        """
        columns = [runs.c[name] for name in self._RUN_COLUMNS]
        query = sa.select(*columns).where(runs.c.status.in_((FINISHED, ERROR_STATUS, UNSCHEDULABLE))).order_by(
            runs.c.finished_at)
        by_key: dict[str, dict[str, Any]] = {}
        by_tuple: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        with self.engine.connect() as conn:
            for row in conn.execute(query).mappings():
                row = dict(row)
                key = row["job_key"]
                if key and (row["status"] == FINISHED or by_key.get(key, {}).get("status") != FINISHED):
                    by_key[key] = row
                by_tuple[(row["target"], row["model"], row["candidate"], row["suite"])] = row
        return by_key, by_tuple

    def last_success(self) -> dict[tuple[str, str, str], float]:
        query = sa.select(runs.c.target, runs.c.model, runs.c.candidate, sa.func.max(runs.c.finished_at)).where(
            runs.c.verdict == "pass").group_by(runs.c.target, runs.c.model, runs.c.candidate)
        with self.engine.connect() as conn:
            return {(t, m, c): ts for t, m, c, ts in conn.execute(query)}

    def results_for(self, run_ids: list[str], with_statistic: bool = False) -> list[sa.Row]:
        """The results of the runs, as rows read by name: run_id, check_name, batch_size, metric, dimension,
        value, n, baseline, candidate, delta, tolerance, verdict, and statistic (its JSON text) when asked."""
        columns = (results.c.run_id, results.c.check_name, results.c.batch_size, results.c.metric,
                   results.c.dimension, results.c.value, results.c.n, results.c.baseline, results.c.candidate,
                   results.c.delta, results.c.tolerance, results.c.verdict)
        columns += (results.c.statistic,) if with_statistic else ()
        out: list[sa.Row] = []
        with self.engine.connect() as conn:
            for start in range(0, len(run_ids), 500):
                out += conn.execute(sa.select(*columns).where(results.c.run_id.in_(run_ids[start:start + 500]))).all()
        return out

    def job_counts(self) -> dict[tuple[str, str], int]:
        """Runs per (target, status)."""
        query = sa.select(runs.c.target, runs.c.status, sa.func.count()).group_by(runs.c.target, runs.c.status)
        with self.engine.connect() as conn:
            return {(t, s): n for t, s, n in conn.execute(query)}

    def error_kind_counts(self, kind: str) -> dict[str, int]:
        """Runs per target that ended in an error of `kind` ("stale_runtime", say)."""
        query = sa.select(runs.c.target, sa.func.count()).where(runs.c.error_kind == kind).group_by(runs.c.target)
        with self.engine.connect() as conn:
            return {t: n for t, n in conn.execute(query)}

    def job_durations(self, buckets: tuple[float, ...]) -> tuple[list[int], int, float]:
        """Cumulative counts of ended runs per duration bucket, their count and their duration sum."""
        duration = runs.c.finished_at - runs.c.started_at
        ended = runs.c.status.in_((FINISHED, ERROR_STATUS)) & runs.c.started_at.is_not(None)
        columns = [sa.func.sum(sa.case((duration <= b, 1), else_=0)) for b in buckets]
        query = sa.select(*columns, sa.func.count(), sa.func.coalesce(sa.func.sum(duration), 0.0)).where(ended)
        with self.engine.connect() as conn:
            row = conn.execute(query).one()
        return [int(v or 0) for v in row[:len(buckets)]], int(row[-2]), float(row[-1])

    def retries(self) -> int:
        """Restarts after a worker or node failure; resumes after a restart are not retries."""
        query = sa.select(sa.func.coalesce(sa.func.sum(runs.c.retries), 0))
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar())

    def catch_ups(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).where(sweeps.c.kind == "catch-up")).scalar())

    def last_changes(self) -> dict[str, float]:
        query = sa.select(component_changes.c.target, sa.func.max(component_changes.c.observed_at)).group_by(
            component_changes.c.target)
        with self.engine.connect() as conn:
            return dict(conn.execute(query).all())

    # -- stacks ------------------------------------------------------------------------------
    def record_fingerprint(self, target: str, stack: dict[str, Any]) -> dict[str, tuple[str | None, str | None]]:
        """Store a target's probed stack; returns the component diff (old, new) against the last one.

        The first observation of a target has no diff. Identical stacks add no history row.
        """
        now = time.time()
        with self._write() as conn:
            last = conn.execute(sa.select(fingerprints.c.hash, fingerprints.c.components)
                                .where(fingerprints.c.target == target)
                                .order_by(fingerprints.c.id.desc()).limit(1)).first()
            diff: dict[str, tuple[str | None, str | None]] = {}
            if last is None or last.hash != stack["hash"]:
                conn.execute(fingerprints.insert().values(
                    target=target, hash=stack["hash"], components=json.dumps(stack["components"]),
                    probes=json.dumps(stack.get("probes", {})), observed_at=now))
            if last is not None and last.hash != stack["hash"]:
                old, new = json.loads(last.components), stack["components"]
                diff = {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}
                if diff:
                    conn.execute(component_changes.insert(), [
                        {"target": target, "component": k, "old_value": a, "new_value": b, "observed_at": now}
                        for k, (a, b) in diff.items()])
            self._set_target(conn, target, "ok", None, last_probe_at=now)
        return diff

    def latest_fingerprints(self) -> dict[str, dict[str, Any]]:
        latest = sa.select(sa.func.max(fingerprints.c.id)).group_by(fingerprints.c.target)
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(fingerprints).where(fingerprints.c.id.in_(latest))).mappings()
            return {r["target"]: {"hash": r["hash"], "components": json.loads(r["components"]),
                                  "probes": json.loads(r["probes"]), "observed_at": r["observed_at"]} for r in rows}

    def change_counts(self) -> dict[tuple[str, str], int]:
        query = sa.select(component_changes.c.target, component_changes.c.component, sa.func.count()).group_by(
            component_changes.c.target, component_changes.c.component)
        with self.engine.connect() as conn:
            return {(t, c): n for t, c, n in conn.execute(query)}

    def changes(self, target: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        query = sa.select(component_changes).order_by(component_changes.c.id.desc()).limit(limit)
        if target:
            query = query.where(component_changes.c.target == target)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def last_good_fingerprint(self, target: str, model: str, candidate: str) -> str | None:
        """The fingerprint hash under which this candidate last passed on this target."""
        query = (sa.select(runs.c.fingerprint_hash).where(runs.c.target == target).where(runs.c.model == model)
                 .where(runs.c.candidate == candidate).where(runs.c.verdict == "pass")
                 .order_by(runs.c.finished_at.desc()).limit(1))
        with self.engine.connect() as conn:
            return conn.execute(query).scalar()

    # -- targets and sweeps --------------------------------------------------------------------
    @staticmethod
    def _set_target(conn: Connection, target: str, state: str, detail: str | None,
                    last_probe_at: float | None = None) -> None:
        now = time.time()
        values = {"state": state, "detail": detail, "updated_at": now}
        if last_probe_at is not None:
            values["last_probe_at"] = last_probe_at
        if conn.execute(target_status.update().where(target_status.c.target == target).values(**values)).rowcount == 0:
            conn.execute(target_status.insert().values(target=target, **values))

    def set_target_state(self, target: str, state: str, detail: str | None = None) -> None:
        with self._write() as conn:
            self._set_target(conn, target, state, detail)

    def target_states(self) -> dict[str, dict[str, Any]]:
        with self.engine.connect() as conn:
            return {r["target"]: dict(r) for r in conn.execute(sa.select(target_status)).mappings()}

    def start_sweep(self, kind: str, scheduled_for: float | None = None) -> int:
        with self._write() as conn:
            return conn.execute(sweeps.insert().values(kind=kind, scheduled_for=scheduled_for,
                                                       started_at=time.time())).inserted_primary_key[0]

    def finish_sweep(self, sweep_id: int) -> None:
        with self._write() as conn:
            conn.execute(sweeps.update().where(sweeps.c.id == sweep_id).values(finished_at=time.time()))

    def last_scheduled_sweep(self) -> float | None:
        """When the last scheduled (or catch-up) sweep was due; None if there never was one."""
        query = sa.select(sa.func.max(sa.func.coalesce(sweeps.c.scheduled_for, sweeps.c.started_at))).where(
            sweeps.c.kind.in_(("scheduled", "catch-up")))
        with self.engine.connect() as conn:
            return conn.execute(query).scalar()

    def sweeps(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(sa.select(sweeps).order_by(sweeps.c.id)).mappings()]

    # -- reading ------------------------------------------------------------------------------
    def run(self, run_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(runs).where(runs.c.run_id == run_id)).mappings().first()
            if row is None:
                return None
            out = dict(row)
            out["checks"] = [dict(r, statistic=json.loads(r["statistic"])) for r in conn.execute(
                sa.select(results).where(results.c.run_id == run_id)).mappings()]
            doc = conn.execute(sa.select(provenance.c.document).where(provenance.c.run_id == run_id)).scalar()
            out["provenance"] = json.loads(doc) if doc else {}
            return out

    def row_outputs(self, run_id: str) -> bytes | None:
        """The run's row-level outputs blob; None where the run kept none."""
        with self.engine.connect() as conn:
            return conn.execute(sa.select(row_outputs.c.blob).where(row_outputs.c.run_id == run_id)).scalar()

    def spec(self, run_id: str) -> JobSpec | None:
        """The JobSpec the run was dispatched with; None for a run recorded without one."""
        with self.engine.connect() as conn:
            text = conn.execute(sa.select(runs.c.spec).where(runs.c.run_id == run_id)).scalar()
        return job_spec_from_dict(json.loads(text)) if text else None

    def finished_runs(self, model: str | None = None, candidate: str | None = None,
                      target: str | None = None) -> list[dict[str, Any]]:
        """Finished runs, oldest first, each with its aggregate checks and its provenance."""
        query = (sa.select(runs.c.run_id, runs.c.target, runs.c.model, runs.c.candidate, runs.c.suite,
                           runs.c.verdict, runs.c.finished_at, runs.c.fingerprint_hash, provenance.c.document)
                 .join(provenance, provenance.c.run_id == runs.c.run_id).where(runs.c.status == FINISHED)
                 .order_by(runs.c.finished_at))
        for column, value in ((runs.c.model, model), (runs.c.candidate, candidate), (runs.c.target, target)):
            if value is not None:
                query = query.where(column == value)
        with self.engine.connect() as conn:
            out = [dict(r, provenance=json.loads(r["document"])) for r in conn.execute(query).mappings()]
            for run in out:
                del run["document"]
                run["checks"] = [dict(r) for r in conn.execute(
                    sa.select(results.c.check_name, results.c.batch_size, results.c.metric, results.c.dimension,
                              results.c.value, results.c.n,
                              results.c.baseline, results.c.candidate, results.c.delta, results.c.verdict)
                    .where(results.c.run_id == run["run_id"])).mappings()]
        return out

    def delete_run(self, run_id: str) -> bool:
        """Prune one run and everything recorded with it (results, provenance, row outputs)."""
        with self._write() as conn:
            for table in (row_outputs, results, provenance):
                conn.execute(table.delete().where(table.c.run_id == run_id))
            return conn.execute(runs.delete().where(runs.c.run_id == run_id)).rowcount == 1

    def history(self, limit: int = 50, model: str | None = None, target: str | None = None) -> list[dict[str, Any]]:
        query = sa.select(*[c for c in runs.c if c.name != "spec"]).order_by(runs.c.created_at.desc()).limit(limit)
        if model:
            query = query.where(runs.c.model == model)
        if target:
            query = query.where(runs.c.target == target)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def gates(self) -> list[dict[str, Any]]:
        """The latest ended run per (target, model, candidate)."""
        done = runs.c.status.not_in(UNFINISHED)
        latest = (sa.select(runs.c.target, runs.c.model, runs.c.candidate,
                            sa.func.max(runs.c.finished_at).label("finished_at"))
                  .where(done).group_by(runs.c.target, runs.c.model, runs.c.candidate).subquery())
        query = (sa.select(*[c for c in runs.c if c.name != "spec"]).join(latest, sa.and_(
            runs.c.target == latest.c.target, runs.c.model == latest.c.model,
            runs.c.candidate == latest.c.candidate, runs.c.finished_at == latest.c.finished_at))
            .where(done).order_by(runs.c.model, runs.c.candidate, runs.c.target))
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def close(self) -> None:
        self.engine.dispose()
