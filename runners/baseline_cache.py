"""Baseline outputs computed once per key on a node and reused by every candidate job there.

A sweep of N candidates of one model on one target runs the baseline on the same rows N times
unless its outputs are kept. They are kept on the node's disk, not in a worker's memory: Ray
runs the jobs of one sweep in several worker processes, and a worker is not reused across a
stack change. The key holds everything that decides the outputs: the job family, the target,
its stack fingerprint, the baseline's sha256 (per file for a folder), its runner and runner
options, the suite data's sha256, the batch size, the family's settings (generation), and the
digest of the runners' own code; a change of any of them is another key, so it recomputes.

Layout: one `<key>.npz` per entry (arrays and a JSON record of who made it), written to a
temporary file and renamed, so a reader sees a whole entry or none; a `<key>.lock` taken with
flock while an entry is computed, so concurrent jobs of one key compute it once and the others
wait for it. After a write, the least recently used entries (by modification time, bumped on
every hit) are removed until the directory holds at most the byte bound.

Configuration (environment, inherited by Ray workers started on this node):
  REVALIDATOR_BASELINE_CACHE        directory (default: $XDG_CACHE_HOME or ~/.cache, then
                                    revalidator/baselines); "off" disables the cache
  REVALIDATOR_BASELINE_CACHE_BYTES  bound on the entries' bytes (default 2 GiB); 0 disables it
Clearing it: remove the directory; nothing else refers to it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from runners.contracts import JobSpec
from runners.hashing import sha256_file

DIRECTORY_ENV = "REVALIDATOR_BASELINE_CACHE"
BYTES_ENV = "REVALIDATOR_BASELINE_CACHE_BYTES"
DEFAULT_BYTES = 2 << 30
FORMAT = 1  # of the entry files; part of every key
_RECORD = "__record__"

_code_digest: str | None = None


def default_directory() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "revalidator" / "baselines"


def code_digest() -> str:
    """sha256 over the runners package's source and compiled files: a code change that could
    change a model's outputs (a backend, the batching) changes every key."""
    global _code_digest
    if _code_digest is None:
        root = Path(__file__).resolve().parent
        digest = hashlib.sha256()
        for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in (".py", ".so", ".c")):
            digest.update(str(path.relative_to(root)).encode() + sha256_file(path).encode())
        _code_digest = digest.hexdigest()
    return _code_digest


def baseline_key(family: str, spec: JobSpec, provenance: dict[str, Any], options: dict[str, Any],
                 batch_size: int, settings: Any = None) -> tuple[str, dict[str, Any]] | None:
    """(key, what it was made of) for the baseline outputs of `spec`; None when a part is unknown
    (a file that could not be hashed, a failed probe): then nothing is cached."""
    baseline = provenance.get("baseline", {})
    fields = {
        "format": FORMAT, "family": family, "target": spec.target,
        "fingerprint": provenance.get("fingerprint", {}).get("hash"),
        "baseline_sha256": baseline.get("sha256"), "baseline_files": baseline.get("files"),
        "runner": spec.baseline.runner, "runner_options": options,
        "data_sha256": provenance.get("suite", {}).get("data_sha256"),
        "batch_size": batch_size, "settings": repr(settings) if settings is not None else None,
        "code": code_digest(),
    }
    if not all(fields[k] for k in ("fingerprint", "baseline_sha256", "data_sha256")):
        return None
    text = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest(), fields


@dataclass
class BaselineCache:
    """A node-local directory of baseline outputs; `None` directory: caching off."""

    directory: Path | None
    max_bytes: int = DEFAULT_BYTES

    @classmethod
    def from_env(cls) -> "BaselineCache":
        where = os.environ.get(DIRECTORY_ENV, "").strip()
        try:
            bound = int(os.environ.get(BYTES_ENV, DEFAULT_BYTES))
        except ValueError:
            bound = DEFAULT_BYTES
        if where.lower() == "off" or bound <= 0:
            return cls(None, 0)
        return cls(Path(where).expanduser() if where else default_directory(), bound)

    def fetch(self, made_of: tuple[str, dict[str, Any]] | None, job_id: str,
              compute: Callable[[], dict[str, np.ndarray]]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The outputs under the key (computed by `compute` when absent) and the provenance record:
        the key, the job that generated them, whether this job reused them. Never fails a job on
        account of the cache: an unusable directory means computing, and the record says why."""
        if made_of is None or self.directory is None:
            why = "off" if self.directory is None else "key incomplete (a file or the stack could not be hashed)"
            return compute(), {"key": None, "generated_by_job": job_id, "reused": False, "cache": why}
        key = made_of[0]
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            found = self._read(key)
            if found is None:
                with self._locked(key):
                    found = self._read(key)  # another job may have made it while this one waited
                    if found is None:
                        arrays = compute()
                        self._write(key, arrays, {"generated_by_job": job_id, "made_of": made_of[1],
                                                  "created_at": time.time()})
                        return arrays, {"key": key, "generated_by_job": job_id, "reused": False}
        except OSError as exc:
            return compute(), {"key": key, "generated_by_job": job_id, "reused": False,
                               "cache": f"unusable ({self.directory}: {exc.strerror or exc})"}
        arrays, record = found
        return arrays, {"key": key, "generated_by_job": record["generated_by_job"],
                        "reused": record["generated_by_job"] != job_id}

    def entries(self) -> list[Path]:
        return sorted(self.directory.glob("*.npz")) if self.directory and self.directory.is_dir() else []

    # -- internals ------------------------------------------------------------------------------
    def _path(self, key: str) -> Path:
        return self.directory / f"{key}.npz"

    def _read(self, key: str) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
        path = self._path(key)
        try:
            with np.load(path, allow_pickle=False) as entry:
                arrays = {name: entry[name] for name in entry.files if name != _RECORD}
                record = json.loads(str(entry[_RECORD]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError):  # a truncated or foreign file: made again
            return None
        if record.get("made_of", {}).get("format") != FORMAT:
            return None
        try:
            os.utime(path)  # the recency that eviction goes by
        except OSError:
            pass
        return arrays, record

    def _write(self, key: str, arrays: dict[str, np.ndarray], record: dict[str, Any]) -> None:
        size = sum(a.nbytes for a in arrays.values())
        if size > self.max_bytes:
            return  # larger than the whole bound: not kept
        handle, temporary = tempfile.mkstemp(dir=self.directory, prefix=f".{key}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as out:
                np.savez(out, **arrays, **{_RECORD: np.array(json.dumps(record, default=str))})
            os.replace(temporary, self._path(key))
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        self._evict(keep=key)

    @contextmanager
    def _locked(self, key: str) -> Iterator[None]:
        with open(self.directory / f"{key}.lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released by the kernel if this process dies
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _evict(self, keep: str) -> None:
        """Least recently used entries out until the bound holds. Two jobs evicting at once may
        both remove a file (the second finds it gone); removing the lock of an evicted entry at
        worst lets two later jobs compute that entry twice, never read a partial one."""
        stale = time.time() - 3600  # a temporary file a killed writer left behind
        for path in self.directory.glob(".*.tmp"):
            try:
                if path.stat().st_mtime < stale:
                    path.unlink()
            except FileNotFoundError:
                continue
        stats = []
        for path in self.directory.glob("*.npz"):
            try:
                stats.append((path.stat().st_mtime_ns, path.stat().st_size, path))
            except FileNotFoundError:
                continue
        total = sum(size for _, size, _ in stats)
        for _, size, path in sorted(stats):
            if total <= self.max_bytes:
                break
            if path.stem == keep:
                continue
            path.unlink(missing_ok=True)
            path.with_suffix(".lock").unlink(missing_ok=True)
            total -= size
