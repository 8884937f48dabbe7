"""Opening the ledger's database, and knowing whether it can be written.

Kept apart from the ledger's tables and queries because these are the questions a fault
raises: where the file is, whether SQLite still trusts it (its own `quick_check`, run when
the ledger is opened, so that a file damaged in the middle is refused at start rather than
failing the first query that touches the bad page), whether it is opened only to be read
(`status` and `history` on a read-only file or mount), and whether the last write went
through (what `/readyz`, `revalidator_ledger_writable` and the ledger error counter report).
"""

from __future__ import annotations

import shutil
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from scheduler.ledger_errors import LedgerError, LedgerWriteError


# How long one SQLite statement waits for a lock held by another process before it fails.
# Short enough that a stuck holder shows up in /readyz within seconds; writers that fail are
# retried by their callers (the dispatcher keeps computed results until they are written).
BUSY_TIMEOUT_MS = 5000


def sqlite_url(path: str | Path) -> str:
    return f"sqlite:///{Path(path).resolve()}"


def sqlite_path(url: str) -> Path | None:
    """The file behind a SQLite URL, None for other databases and in-memory SQLite."""
    if not url.startswith("sqlite:///") or url == "sqlite:///:memory:":
        return None
    return Path(url.removeprefix("sqlite:///"))


def resolve_url(url: str, base_dir: Path, create_folder: bool = True) -> str:
    """Relative SQLite paths are relative to the config file; their folder is created (writers only)."""
    path = sqlite_path(url)
    if path is None:
        return url
    path = path if path.is_absolute() else base_dir / path
    if create_folder:
        path.parent.mkdir(parents=True, exist_ok=True)
    return sqlite_url(path)


def _writer_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _reader_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cursor.close()


def create_engine(url: str, read_only: bool = False) -> Engine:
    """An engine for `url`; for SQLite read-only, the file is opened with mode=ro (no journal change,
    no folder created), and as immutable when not even the WAL index can be created beside it."""
    path = sqlite_path(url)
    if path is None:
        return sa.create_engine(url)
    if not read_only:
        engine = sa.create_engine(url)
        sa.event.listen(engine, "connect", _writer_pragmas)
        return engine
    if not path.is_file():
        raise LedgerError(f"no ledger at {path}")
    engine = _uri_engine(path, "mode=ro")
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT count(*) FROM sqlite_master").scalar()
    except sa.exc.OperationalError:
        # A WAL database needs its -shm index; on a read-only folder that has none, SQLite can
        # still read the file as immutable (nothing can be writing it there either).
        engine.dispose()
        engine = _uri_engine(path, "immutable=1")
    return engine


def _uri_engine(path: Path, flags: str) -> Engine:
    engine = sa.create_engine(f"sqlite:///file:{path.resolve()}?{flags}&uri=true")
    sa.event.listen(engine, "connect", _reader_pragmas)
    return engine


def check_integrity(engine: Engine, where: str) -> None:
    """SQLite's own quick check of every page and index; a damaged file is refused with its name."""
    if engine.dialect.name != "sqlite":
        return
    try:
        with engine.connect() as conn:
            problems = [row[0] for row in conn.exec_driver_sql("PRAGMA quick_check")]
    except sa.exc.OperationalError as exc:  # locked, unopenable, an I/O error: not a verdict on the file
        raise LedgerError(f"cannot open ledger {where}: {explain(exc, where)}") from exc
    except sa.exc.DatabaseError as exc:
        raise LedgerError(f"ledger {where} is damaged or not a ledger: {_first_line(exc)}") from exc
    if problems != ["ok"]:
        raise LedgerError(f"ledger {where} is damaged ({problems[0]}{' ...' if len(problems) > 1 else ''}); "
                          f"restore it from a backup or move it aside to start a new one")


class WriteHealth:
    """Whether the last ledger write succeeded, since when it has been failing, and how many failed."""

    def __init__(self, where: str) -> None:
        self.where = where
        self._lock = threading.Lock()
        self.errors = 0
        self.failing_since: float | None = None
        self.last_error: str | None = None

    @property
    def writable(self) -> bool:
        return self.failing_since is None

    def failed(self, exc: BaseException) -> None:
        with self._lock:
            self.errors += 1
            self.last_error = _first_line(exc)
            if self.failing_since is None:
                self.failing_since = time.time()

    def succeeded(self) -> None:
        with self._lock:
            self.failing_since = None
            self.last_error = None

    @contextmanager
    def recording(self, engine: Engine) -> Iterator[sa.Connection]:
        """A write transaction whose outcome is recorded; a failure is re-raised as a LedgerError."""
        try:
            with engine.begin() as conn:
                yield conn
        except sa.exc.SQLAlchemyError as exc:
            self.failed(exc)
            raise LedgerWriteError(f"cannot write the ledger {self.where}: {explain(exc, self.where)}") from exc
        self.succeeded()


def explain(exc: BaseException, where: str) -> str:
    """SQLite's first line, plus the likely cause of a bare "disk I/O error": a full filesystem."""
    text = _first_line(exc)
    if "disk I/O error" in text:
        try:
            if shutil.disk_usage(Path(where).parent).free == 0:
                text += f" (no space left on the filesystem of {Path(where).parent})"
        except OSError:
            pass
    return text


def _first_line(exc: BaseException) -> str:
    """SQLAlchemy's message without its SQL and background link: "(sqlite3.OperationalError) database is locked"."""
    original = getattr(exc, "orig", None)
    text = str(original if original is not None else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
