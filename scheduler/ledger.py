"""The ledger: every run, its results per check and slice, and its provenance.

SQLite (WAL) by default, any SQLAlchemy URL otherwise. The schema is versioned and
migrated forward on open. A run is written as `running` before its work starts and
finished in one transaction (status, results and provenance together), so a reader never
sees half a result.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from runners.contracts import JobResult, JobSpec

metadata = sa.MetaData()

schema_version = sa.Table("schema_version", metadata, sa.Column("version", sa.Integer, nullable=False))

runs = sa.Table(
    "runs", metadata,
    sa.Column("run_id", sa.String(36), primary_key=True),
    sa.Column("job_id", sa.String(64), nullable=False, index=True),
    sa.Column("trigger", sa.String(32), nullable=False),
    sa.Column("target", sa.String(64), nullable=False),
    sa.Column("model", sa.String(64), nullable=False),
    sa.Column("candidate", sa.String(64), nullable=False),
    sa.Column("suite", sa.String(64), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # running | finished | error
    sa.Column("verdict", sa.String(16)),
    sa.Column("error", sa.Text),
    sa.Column("error_kind", sa.String(16)),
    sa.Column("config_hash", sa.String(64)),
    sa.Column("fingerprint_hash", sa.String(64)),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("started_at", sa.Float),
    sa.Column("finished_at", sa.Float),
    sa.Index("ix_runs_gate", "target", "model", "candidate", "finished_at"),
)

results = sa.Table(
    "results", metadata,
    sa.Column("run_id", sa.String(36), sa.ForeignKey("runs.run_id"), nullable=False, index=True),
    sa.Column("check_name", sa.String(32), nullable=False),
    sa.Column("dimension", sa.String(64), nullable=False),
    sa.Column("value", sa.String(128), nullable=False),
    sa.Column("n", sa.Integer, nullable=False),
    sa.Column("baseline", sa.Float),
    sa.Column("candidate", sa.Float),
    sa.Column("delta", sa.Float),
    sa.Column("tolerance", sa.Float, nullable=False),
    sa.Column("verdict", sa.String(16), nullable=False),
    sa.Column("statistic", sa.Text, nullable=False),
)

provenance = sa.Table(
    "provenance", metadata,
    sa.Column("run_id", sa.String(36), sa.ForeignKey("runs.run_id"), primary_key=True),
    sa.Column("document", sa.Text, nullable=False),
)


def _v1(conn: Connection) -> None:
    metadata.create_all(conn, tables=[runs, results, provenance])


# Ordered migrations; the index + 1 is the schema version each one produces. Append only.
MIGRATIONS: list[Callable[[Connection], None]] = [_v1]
SCHEMA_VERSION = len(MIGRATIONS)


class LedgerError(Exception):
    """The ledger cannot be opened or written."""


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def sqlite_url(path: str | Path) -> str:
    return f"sqlite:///{Path(path).resolve()}"


class Ledger:
    def __init__(self, url: str, base_dir: str | Path = ".") -> None:
        try:
            self.url = self._resolve(url, Path(base_dir))
            self.engine: Engine = sa.create_engine(self.url)
            if self.engine.dialect.name == "sqlite":
                sa.event.listen(self.engine, "connect", _sqlite_pragmas)
            self.migrate()
        except (sa.exc.SQLAlchemyError, OSError, ValueError) as exc:
            raise LedgerError(f"cannot open ledger {url}: {exc}") from exc

    @staticmethod
    def _resolve(url: str, base_dir: Path) -> str:
        """Relative SQLite paths are relative to the config file; their folder is created."""
        if not url.startswith("sqlite:///") or url == "sqlite:///:memory:":
            return url
        path = Path(url.removeprefix("sqlite:///"))
        path = path if path.is_absolute() else base_dir / path
        path.parent.mkdir(parents=True, exist_ok=True)
        return sqlite_url(path)

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

    # -- writing ------------------------------------------------------------------------------
    def start_run(self, spec: JobSpec) -> str:
        """Record a run as running, before its work starts; returns the run id."""
        run_id = str(uuid.uuid4())
        now = time.time()
        with self.engine.begin() as conn:
            conn.execute(runs.insert().values(
                run_id=run_id, job_id=spec.job_id, trigger=spec.trigger, target=spec.target, model=spec.model,
                candidate=spec.candidate, suite=spec.suite.name, status="running", config_hash=spec.config_hash,
                created_at=now, started_at=now))
        return run_id

    def finish_run(self, run_id: str, result: JobResult) -> None:
        """Status, results and provenance in one transaction."""
        fingerprint = result.provenance.get("fingerprint", {}).get("hash")
        with self.engine.begin() as conn:
            conn.execute(runs.update().where(runs.c.run_id == run_id).values(
                status=result.status, verdict=result.verdict, error=result.error, error_kind=result.error_kind,
                fingerprint_hash=fingerprint, finished_at=result.finished_at or time.time()))
            if result.checks:
                conn.execute(results.insert(), [{
                    "run_id": run_id, "check_name": c.check, "dimension": c.dimension, "value": c.value, "n": c.n,
                    "baseline": c.baseline, "candidate": c.candidate, "delta": c.delta, "tolerance": c.tolerance,
                    "verdict": c.verdict, "statistic": json.dumps(c.statistic)} for c in result.checks])
            if result.provenance:
                conn.execute(provenance.insert().values(run_id=run_id, document=json.dumps(result.provenance)))

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

    def history(self, limit: int = 50, model: str | None = None, target: str | None = None) -> list[dict[str, Any]]:
        query = sa.select(runs).order_by(runs.c.created_at.desc()).limit(limit)
        if model:
            query = query.where(runs.c.model == model)
        if target:
            query = query.where(runs.c.target == target)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def gates(self) -> list[dict[str, Any]]:
        """The latest finished or errored run per (target, model, candidate)."""
        done = runs.c.status != "running"
        latest = (sa.select(runs.c.target, runs.c.model, runs.c.candidate,
                            sa.func.max(runs.c.finished_at).label("finished_at"))
                  .where(done).group_by(runs.c.target, runs.c.model, runs.c.candidate).subquery())
        query = (sa.select(runs).join(latest, sa.and_(
            runs.c.target == latest.c.target, runs.c.model == latest.c.model,
            runs.c.candidate == latest.c.candidate, runs.c.finished_at == latest.c.finished_at))
            .where(done).order_by(runs.c.model, runs.c.candidate, runs.c.target))
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def close(self) -> None:
        self.engine.dispose()
