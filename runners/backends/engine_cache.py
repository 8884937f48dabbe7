"""The TensorRT engine cache: what makes an engine reusable, and how it is written and read.

An engine is specific to the GPU model, the TensorRT version, the model's bytes (external
weight files included) and the build settings, so the key holds all of them. A cache file is
one self-checking record (header with the build's facts and the engine's sha256, then the
engine), written to a temporary file with a name of its own and renamed into place: concurrent
builders never share a temp file, a reader never sees half an engine, and a damaged or
truncated file is evicted and rebuilt instead of being blamed on the model forever.
No TensorRT import here: every function is plain Python, tested without a GPU.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

MAGIC = b"RVENGINE\x01\n"
_LENGTH = struct.Struct("<Q")
# Build settings that change the engine; device index, cache folder and the like do not.
BUILD_KEYS = ("fp16", "tf32", "max_batch_size", "opt_batch_size", "workspace_mb")


def engine_key(onnx_sha256: str, tensorrt_version: str, gpu_name: str, compute_capability: str,
               options: dict[str, Any], external_data: dict[str, str] | None = None) -> str:
    """The model (and every external data file's sha256, by name), TensorRT, the GPU model and
    the build settings, hashed; unset settings take the runner's defaults."""
    defaults = {"fp16": False, "tf32": False, "max_batch_size": 4096, "opt_batch_size": None, "workspace_mb": 1024}
    build = {k: defaults[k] if options.get(k) is None else options[k] for k in BUILD_KEYS}
    text = json.dumps([MAGIC.decode().strip(), onnx_sha256, sorted((external_data or {}).items()), tensorrt_version,
                       gpu_name, compute_capability, build], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class CacheDamaged(ValueError):
    """A cache file that is not a whole record (truncated, overwritten, or another format)."""


def pack(engine: bytes, meta: dict[str, Any]) -> bytes:
    header = json.dumps({**meta, "engine_sha256": hashlib.sha256(engine).hexdigest(),
                         "engine_bytes": len(engine)}, sort_keys=True).encode()
    return MAGIC + _LENGTH.pack(len(header)) + header + engine


def unpack(data: bytes) -> tuple[dict[str, Any], bytes]:
    """The header and the engine of a cache record; CacheDamaged unless it is whole."""
    if not data.startswith(MAGIC):
        raise CacheDamaged("not a revalidator engine record")
    start = len(MAGIC) + _LENGTH.size
    if len(data) < start:
        raise CacheDamaged("truncated header")
    (length,) = _LENGTH.unpack_from(data, len(MAGIC))
    try:
        meta = json.loads(data[start : start + length])
    except ValueError as exc:
        raise CacheDamaged(f"unreadable header ({exc})") from None
    engine = data[start + length :]
    if len(engine) != meta.get("engine_bytes") or hashlib.sha256(engine).hexdigest() != meta.get("engine_sha256"):
        raise CacheDamaged(f"engine is {len(engine)} bytes, the header says {meta.get('engine_bytes')} "
                           f"with another sha256 (truncated or overwritten)")
    return meta, engine


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # A name of its own per writer (mkstemp): two builders of the same engine never write one file.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def evict(path: Path) -> None:
    path.unlink(missing_ok=True)


@dataclass
class Loaded:
    """An engine ready to use and how it came: from the cache or built now, and what was evicted."""

    engine: Any
    meta: dict[str, Any]
    from_cache: bool
    evicted: list[str] = field(default_factory=list)


def load_or_build(path: Path, build: Callable[[], tuple[bytes, dict[str, Any]]],
                  deserialize: Callable[[bytes], Any]) -> Loaded:
    """The cached engine at `path` if it is whole and deserializes; else build, store and load.

    `build` returns (engine bytes, header facts); `deserialize` returns None where the runtime
    refuses the bytes (TensorRT's way of saying "damaged or incompatible")."""
    evicted = []
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        data = None
    if data is not None:
        try:
            meta, engine = unpack(data)
        except CacheDamaged:
            evict(path)
            evicted.append("damaged record")
        else:
            runtime_engine = deserialize(engine)
            if runtime_engine is not None:
                return Loaded(runtime_engine, meta, True)
            evict(path)
            evicted.append("the runtime could not deserialize it")
    engine, meta = build()
    record = pack(engine, meta)
    write_atomic(path, record)
    runtime_engine = deserialize(engine)
    if runtime_engine is None:
        evict(path)
        raise RuntimeError(f"{path}: the engine just built cannot be deserialized by the same TensorRT")
    meta, _ = unpack(record)
    return Loaded(runtime_engine, meta, False, evicted)
