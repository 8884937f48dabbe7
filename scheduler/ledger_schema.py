"""The ledger's tables and their migrations: the schema is versioned, each version one function,
applied in order on open (scheduler/ledger.py)."""

from __future__ import annotations

import re
from typing import Any, Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from runners.contracts import CheckResult

QUEUED, RUNNING, FINISHED, ERROR_STATUS = "queued", "running", "finished", "error"
UNSCHEDULABLE, CANCELLED = "unschedulable", "cancelled"
UNFINISHED = (QUEUED, RUNNING)

metadata = sa.MetaData()

_V2_RUN_COLUMNS = {"job_key", "spec", "attempts"}
_V3_RUN_COLUMNS = {"retries"}
_V5_RESULT_COLUMNS = {"batch_size", "metric"}

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
    sa.Column("job_key", sa.String(64)),  # added in v2
    sa.Column("spec", sa.Text),  # v2: the JobSpec as JSON, to resume after a restart
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),  # v2: times it was started
    sa.Column("retries", sa.Integer, nullable=False, server_default="0"),  # v3: restarts after a failure only
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
    sa.Column("batch_size", sa.Integer),  # v5: the production batch size judged at; NULL: the suite's one size
    sa.Column("metric", sa.String(128)),  # v5: an external harness's metric; NULL for the other tasks
)

provenance = sa.Table(
    "provenance", metadata,
    sa.Column("run_id", sa.String(36), sa.ForeignKey("runs.run_id"), primary_key=True),
    sa.Column("document", sa.Text, nullable=False),
)

row_outputs = sa.Table(
    "row_outputs", metadata,  # v4: per run, its row-level outputs as one compressed blob (runners/rowoutputs.py)
    sa.Column("run_id", sa.String(36), sa.ForeignKey("runs.run_id"), primary_key=True),
    sa.Column("blob", sa.LargeBinary, nullable=False),
)

fingerprints = sa.Table(
    "fingerprints", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("target", sa.String(64), nullable=False, index=True),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Column("components", sa.Text, nullable=False),
    sa.Column("probes", sa.Text, nullable=False),
    sa.Column("observed_at", sa.Float, nullable=False),
)

component_changes = sa.Table(
    "component_changes", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("target", sa.String(64), nullable=False, index=True),
    sa.Column("component", sa.String(64), nullable=False),
    sa.Column("old_value", sa.Text),
    sa.Column("new_value", sa.Text),
    sa.Column("observed_at", sa.Float, nullable=False),
)

sweeps = sa.Table(
    "sweeps", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String(16), nullable=False),  # scheduled | catch-up | manual
    sa.Column("scheduled_for", sa.Float),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("finished_at", sa.Float),
)

target_status = sa.Table(
    "target_status", metadata,
    sa.Column("target", sa.String(64), primary_key=True),
    sa.Column("state", sa.String(16), nullable=False),  # ok | unreachable | unschedulable
    sa.Column("detail", sa.Text),
    sa.Column("last_probe_at", sa.Float),
    sa.Column("updated_at", sa.Float, nullable=False),
)


def _v1(conn: Connection) -> None:
    """The first schema: runs without the v2 queue columns, results, provenance."""
    v1 = sa.MetaData()
    sa.Table("runs", v1, *[sa.Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable, index=c.index)
                           for c in runs.columns if c.name not in _V2_RUN_COLUMNS | _V3_RUN_COLUMNS],
             sa.Index("ix_runs_gate", "target", "model", "candidate", "finished_at"))
    sa.Table("results", v1, *[sa.Column(c.name, c.type, *[sa.ForeignKey(f.target_fullname) for f in c.foreign_keys],
                                        nullable=c.nullable, index=c.index)
                              for c in results.columns if c.name not in _V5_RESULT_COLUMNS])
    provenance.to_metadata(v1)
    v1.create_all(conn)


def _v2(conn: Connection) -> None:
    """The daemon's state: queued jobs with their spec, stack history, sweeps, target states."""
    for column in ("job_key VARCHAR(64)", "spec TEXT", "attempts INTEGER NOT NULL DEFAULT 0"):
        conn.execute(sa.text(f"ALTER TABLE runs ADD COLUMN {column}"))
    conn.execute(sa.text("CREATE INDEX ix_runs_job_key ON runs (job_key, status)"))
    conn.execute(sa.text("CREATE INDEX ix_runs_status ON runs (status)"))
    metadata.create_all(conn, tables=[fingerprints, component_changes, sweeps, target_status])


def _v3(conn: Connection) -> None:
    """Retries counted on their own: a start after a restart or a shutdown is a resume, not a retry."""
    conn.execute(sa.text("ALTER TABLE runs ADD COLUMN retries INTEGER NOT NULL DEFAULT 0"))


def _v4(conn: Connection) -> None:
    """Row-level outputs per run, so that runs are compared row by row without a re-run."""
    metadata.create_all(conn, tables=[row_outputs])


# How contract v1 (schema v4 and before) named a result judged at a batch size or on an external metric.
_QUALIFIED = re.compile(r"(?P<check>[^@:]+)(?:@batch=(?P<batch>\d+))?(?::(?P<metric>.+))?")


def split_qualified(name: str) -> tuple[str, int | None, str | None]:
    """A v1 result name as (check, batch size, metric): CHECK@batch=64 -> (CHECK, 64, None),
    CHECK:acc -> (CHECK, None, "acc"); a bare name stays as it is. Only old rows and old
    workers' results are read this way: since v2 the fields travel as fields."""
    match = _QUALIFIED.fullmatch(name)
    if match is None:
        return name, None, None
    batch = match["batch"]
    return match["check"], int(batch) if batch is not None else None, match["metric"]


def _v5(conn: Connection) -> None:
    """Batch size and external metric as columns of a result (contract v2); the names written before
    (CHECK@batch=64, CHECK:acc) are split into them."""
    conn.execute(sa.text("ALTER TABLE results ADD COLUMN batch_size INTEGER"))
    conn.execute(sa.text("ALTER TABLE results ADD COLUMN metric VARCHAR(128)"))
    for name in conn.execute(sa.select(results.c.check_name).distinct()).scalars().all():
        check, batch_size, metric = split_qualified(name)
        if (check, batch_size, metric) != (name, None, None):
            conn.execute(results.update().where(results.c.check_name == name).values(
                check_name=check, batch_size=batch_size, metric=metric))


# Ordered migrations; the index + 1 is the schema version each one produces. Append only.
MIGRATIONS: list[Callable[[Connection], None]] = [_v1, _v2, _v3, _v4, _v5]
SCHEMA_VERSION = len(MIGRATIONS)


def result_columns(c: CheckResult, version: int) -> dict[str, Any]:
    """A result's check columns; a worker on contract v1 still wrote batch size and metric into the name."""
    if version < 2:
        check, batch_size, metric = split_qualified(c.check)
    else:
        check, batch_size, metric = c.check, c.batch_size, c.metric
    return {"check_name": check, "batch_size": batch_size, "metric": metric}
