"""sha256 of artifacts, data files and calibration sets (files, or folders of files)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_path(path: str | Path) -> str | None:
    """sha256 of a file, or of a folder's files in name order; None if the path does not exist."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    if path.is_dir():
        digest = hashlib.sha256()
        for child in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(str(child.relative_to(path)).encode() + sha256_file(child).encode())
        return digest.hexdigest()
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
