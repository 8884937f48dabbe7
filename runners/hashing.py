"""sha256 of artifacts, data files and calibration sets (files, or folders of files).

File digests are memoised per process by (path, size, mtime, ctime, inode), so the jobs of one
worker hash a shared baseline or data file once. A file whose change time is too recent to be
told apart from a rewrite within the same timestamp tick is hashed again each time (the "racy"
case git handles the same way)."""

from __future__ import annotations

import hashlib
import os
import time
from collections import OrderedDict
from pathlib import Path

# A file changed less than this long before it was hashed is not memoised: filesystem timestamps
# move in ticks of a few milliseconds, so a same-size rewrite inside one tick keeps its stat.
_RACY_SECONDS = 2.0
_MEMO: OrderedDict[tuple[str, int, int, int, int, int], str] = OrderedDict()
_MEMO_ENTRIES = 4096


def _hash_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_file(path: str | Path) -> str:
    """sha256 of one file, memoised while its stat stays the same."""
    stat = os.stat(path)
    key = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, stat.st_dev)
    known = _MEMO.get(key)
    if known is not None:
        _MEMO.move_to_end(key)
        return known
    value = _hash_file(path)
    if time.time_ns() - max(stat.st_mtime_ns, stat.st_ctime_ns) > _RACY_SECONDS * 1e9:
        _MEMO[key] = value
        while len(_MEMO) > _MEMO_ENTRIES:
            _MEMO.popitem(last=False)
    return value


def sha256_path(path: str | Path) -> str | None:
    """sha256 of a file, or of a folder's files in name order; None if the path does not exist."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    if path.is_dir():
        return artifact_digests(path)["sha256"]  # type: ignore[return-value]
    return None


def artifact_digests(path: str | Path) -> dict[str, object]:
    """{"sha256": ...} for a file; for a folder also "files": every file's own sha256 (the folder's
    digest is the one sha256_path gives, computed from these)."""
    path = Path(path)
    if not path.is_dir():
        return {"sha256": sha256_path(path)}
    files = {str(p.relative_to(path)): sha256_file(p) for p in sorted(q for q in path.rglob("*") if q.is_file())}
    digest = hashlib.sha256()
    for name, file_digest in files.items():
        digest.update(name.encode() + file_digest.encode())
    return {"sha256": digest.hexdigest(), "files": files}
