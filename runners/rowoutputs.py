"""Row-level outputs of a run, kept compactly so that later comparisons need no re-run.

Classification: per row, the baseline's and the candidate's top-1 class and a 32-bit digest of
each model's raw output row; generation: the generated token ids and lengths. Each slice column
travels as small integer codes with its values, so that a reader can group rows by slice without
the data file. The whole is one zlib-compressed .npz (no pickle): a few bytes per row (docs/rows.md).
"""

from __future__ import annotations

import hashlib
import io
import json
import zlib
from typing import Any

import numpy as np

FORMAT = "npz+zlib/1"
_META = "__meta__"
# Odd 64-bit multipliers of the per-element mix (splitmix64 constants).
_MIX = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))


def row_digests(outputs: np.ndarray) -> np.ndarray:
    """A 32-bit digest of every row's exact bytes; `outputs` is class-major (values, rows).

    Vectorised: each 32-bit word is mixed with its position, then the mixed words are summed per
    row, so a change in any bit of a row changes its digest (up to a 2^-32 chance)."""
    raw = np.ascontiguousarray(outputs.T).view(np.uint8).reshape(outputs.shape[1], -1)
    if raw.shape[1] % 4:  # float16 and other odd widths: pad each row to whole 32-bit words
        raw = np.pad(raw, ((0, 0), (0, 4 - raw.shape[1] % 4)))
    words = np.ascontiguousarray(raw).view(np.uint32).astype(np.uint64)
    position = np.arange(words.shape[1], dtype=np.uint64)[None, :] * _MIX[0]
    with np.errstate(over="ignore"):
        x = (words + position) * _MIX[1]
        x ^= x >> np.uint64(31)
        x *= _MIX[2]
        x ^= x >> np.uint64(29)
        total = x.sum(axis=1, dtype=np.uint64)
    return ((total ^ (total >> np.uint64(32))) & np.uint64(0xFFFFFFFF)).astype(np.uint32)


def _small(classes: np.ndarray, count: int) -> np.ndarray:
    return classes.astype(np.uint8 if count <= 256 else np.uint16 if count <= 65536 else np.int32)


def _slice_codes(slices: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    arrays, values = {}, {}
    for dimension, column in slices.items():
        unique, inverse = np.unique(np.asarray(column), return_inverse=True)
        arrays[f"slice:{dimension}"] = _small(inverse.ravel(), len(unique))
        values[dimension] = [str(v) for v in unique]
    return arrays, values


def classification(baseline: np.ndarray, candidate: np.ndarray, slices: dict[str, Any],
                   **meta: Any) -> bytes:
    """The blob of one classification run; `baseline`/`candidate` are class-major outputs."""
    classes = baseline.shape[0]
    arrays = {"baseline_top1": _small(baseline.argmax(axis=0), classes),
              "candidate_top1": _small(candidate.argmax(axis=0), classes),
              "baseline_digest": row_digests(baseline), "candidate_digest": row_digests(candidate)}
    codes, values = _slice_codes(slices)
    info = {"kind": "classification", "rows": int(baseline.shape[1]), "classes": int(classes), "slices": values,
            "baseline_sha256": hashlib.sha256(np.ascontiguousarray(baseline).tobytes()).hexdigest(),
            "candidate_sha256": hashlib.sha256(np.ascontiguousarray(candidate).tobytes()).hexdigest(), **meta}
    return encode({**arrays, **codes}, info)


def generation(baseline_tokens: np.ndarray, baseline_lengths: np.ndarray, candidate_tokens: np.ndarray,
               candidate_lengths: np.ndarray, slices: dict[str, Any]) -> bytes:
    """The blob of one generation run: every prompt's generated token ids (stop-padded) and lengths."""
    codes, values = _slice_codes(slices)
    arrays = {"baseline_tokens": baseline_tokens.astype(np.int32), "baseline_lengths": baseline_lengths.astype(np.int32),
              "candidate_tokens": candidate_tokens.astype(np.int32),
              "candidate_lengths": candidate_lengths.astype(np.int32), **codes}
    return encode(arrays, {"kind": "generation", "rows": int(len(baseline_lengths)), "slices": values})


def encode(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays, **{_META: np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)})
    return zlib.compress(buffer.getvalue(), 1)  # the digests do not compress: level 1 is as small, faster


class RowOutputsError(ValueError):
    """A stored blob that cannot be read back."""


def decode(blob: bytes) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(arrays, meta) of a blob written by `encode`."""
    try:
        with np.load(io.BytesIO(zlib.decompress(blob)), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
        meta = json.loads(arrays.pop(_META).tobytes().decode())
    except (zlib.error, ValueError, KeyError, OSError) as exc:
        raise RowOutputsError(f"row outputs cannot be decoded ({exc})") from exc
    return arrays, meta


def row_keys(arrays: dict[str, np.ndarray], meta: dict[str, Any], model: str) -> np.ndarray:
    """What two runs must share row by row for `model` ("baseline" or "candidate"): one int64 per row."""
    if meta["kind"] == "classification":
        return (arrays[f"{model}_top1"].astype(np.int64) << 32) | arrays[f"{model}_digest"].astype(np.int64)
    tokens = np.ascontiguousarray(arrays[f"{model}_tokens"])
    return row_digests(tokens.view(np.float32).T).astype(np.int64) if tokens.size else np.zeros(len(tokens), np.int64)


def slice_rows(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> dict[tuple[str, str], np.ndarray]:
    """Row indices of every slice value, keyed (dimension, value); ("all", "all") first."""
    out = {("all", "all"): np.arange(meta["rows"])}
    for dimension, values in meta.get("slices", {}).items():
        codes = arrays[f"slice:{dimension}"]
        for code, value in enumerate(values):
            out[(dimension, value)] = np.flatnonzero(codes == code)
    return out
