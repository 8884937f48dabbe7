"""The demo models' trained weights, kept in the repository with their sha256.

Training runs torch kernels that the CPU's instruction set selects (AVX2, AVX-512, AMX, NEON), so
the same seed trains a slightly different model on every kind of machine, and a low-bit candidate
amplifies the difference. The demo therefore trains once, keeps the weights here, and builds every
artifact from them with arithmetic whose result does not depend on the CPU. `python -m
examples.build --retrain` trains anew and rewrites the files and `SHA256SUMS`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
SUMS = WEIGHTS_DIR / "SHA256SUMS"


class WeightsError(RuntimeError):
    """The kept weights are missing or do not match their recorded sha256."""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _recorded() -> dict[str, str]:
    if not SUMS.is_file():
        return {}
    pairs = (line.split() for line in SUMS.read_text().splitlines() if line.strip())
    return {name: digest for digest, name in pairs}


def load(name: str) -> dict[str, np.ndarray]:
    """The arrays of `weights/<name>.npz`, after checking the file against SHA256SUMS."""
    path = WEIGHTS_DIR / f"{name}.npz"
    expected = _recorded().get(path.name)
    if not path.is_file() or expected is None:
        raise WeightsError(f"{path}: missing, or not listed in {SUMS} (run python -m examples.build --retrain)")
    actual = _sha256(path)
    if actual != expected:
        raise WeightsError(f"{path}: sha256 {actual} does not match {expected} recorded in {SUMS}")
    with np.load(path) as archive:
        return {key: archive[key] for key in archive.files}


def save(name: str, arrays: dict[str, np.ndarray]) -> Path:
    """Write `weights/<name>.npz` (float32) and record its sha256."""
    WEIGHTS_DIR.mkdir(parents=True, exist_ok=True)
    path = WEIGHTS_DIR / f"{name}.npz"
    np.savez(path, **{key: np.ascontiguousarray(value, np.float32) for key, value in arrays.items()})
    sums = _recorded()
    sums[path.name] = _sha256(path)
    SUMS.write_text("".join(f"{digest}  {file}\n" for file, digest in sorted(sums.items())))
    return path
