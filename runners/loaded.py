"""What the job's own process runs: each runtime it has imported, its version and its native libraries as mapped.

The stack probes read what is installed on disk. A long-lived worker keeps running what it imported
before an in-place upgrade: pip moves the old package folder aside (`onnxruntime` -> `~nnxruntime`) and
deletes it, and the process keeps the old library mapped, shown in /proc/self/maps as "(deleted)". A job
in such a process would record one stack and run another. Here the process compares what it has loaded
(`sys.modules[...]`, `__version__`, the mapped files) with what is installed, and a difference is a
stale runtime: a job error of its own kind, never a pass. Nothing is imported here; only modules the
process already holds are looked at.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from runners.probes.base import PROBES, ProbeContext, run_probe

# Module name -> the fingerprint component holding its installed version (the same names, by the probes'
# design). Only modules already imported by this process are looked at.
RUNTIME_MODULES = ("onnxruntime", "torch", "tensorrt", "transformers", "tokenizers", "safetensors", "torchao",
                   "accelerate", "gguf")
# The probes that report those components, re-run at the end of a job (metadata reads, milliseconds).
RUNTIME_PROBES = ("onnxruntime", "torch", "tensorrt", "transformers")
# pip's AdjacentTempDirectory: the folder being replaced is renamed to "~" + leading chars + the rest of its name.
_PIP_LEADING = set("-~.=%0123456789")
_LIBRARY = re.compile(r"\.so(\.\d+)*$")
_DELETED = " (deleted)"


class StaleRuntime(Exception):
    """The process runs a runtime other than the installed one; `loaded` is what it holds."""

    def __init__(self, message: str, loaded: dict[str, Any]) -> None:
        super().__init__(message)
        self.loaded = loaded


@dataclass(frozen=True)
class Mapping:
    """One file mapped into the process (one entry per distinct file)."""

    path: str
    device: str  # "major:minor" in hex, as the kernel prints it
    inode: int
    deleted: bool


def parse_maps(text: str) -> list[Mapping]:
    """The file-backed shared libraries of a /proc/<pid>/maps text, each file once, in order."""
    seen: dict[tuple[str, int], Mapping] = {}
    for line in text.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) < 6 or not fields[5].startswith("/"):
            continue
        path, deleted = fields[5], fields[5].endswith(_DELETED)
        if deleted:
            path = path[: -len(_DELETED)]
        if not _LIBRARY.search(path.rsplit("/", 1)[-1]):
            continue
        seen.setdefault((path, int(fields[4])), Mapping(path, fields[3], int(fields[4]), deleted))
    return list(seen.values())


def _stashed(folder: str, name: str) -> bool:
    """Whether `folder` is the name pip gives `name` while replacing it (same length, leading "~")."""
    if len(folder) != len(name) or not folder.startswith("~"):
        return False
    return any(folder[i:] == name[i:] and set(folder[1:i]) <= _PIP_LEADING for i in range(1, len(name)))


def in_package(path: str, package_dir: str) -> str | None:
    """Where a mapped file lies: "package" in the package folder, "moved" in the folder pip moves it to
    while replacing it (until pip deletes it), None elsewhere."""
    site, name = os.path.split(package_dir.rstrip("/"))
    if not path.startswith(site + "/"):
        return None
    folder = path[len(site) + 1:].split("/", 1)[0]
    return "package" if folder == name else "moved" if _stashed(folder, name) else None


def identify(mapping: Mapping, stat: Callable[[str], os.stat_result] = os.stat) -> dict[str, Any]:
    """The mapped file's identity: deleted (by the kernel's mark), replaced (another file at that path now),
    or its size and mtime. Inodes are compared only on the same device (overlay filesystems report another)."""
    out: dict[str, Any] = {"path": mapping.path, "inode": mapping.inode, "deleted": mapping.deleted, "replaced": False}
    if mapping.deleted:
        return out
    try:
        st = stat(mapping.path)
    except OSError:
        return {**out, "deleted": True}
    major, minor = (int(part, 16) for part in mapping.device.split(":"))
    if (os.major(st.st_dev), os.minor(st.st_dev)) == (major, minor) and st.st_ino != mapping.inode:
        return {**out, "replaced": True}
    return {**out, "size": st.st_size, "mtime": st.st_mtime}


def runtime_record(module: Any, mappings: list[Mapping],
                   stat: Callable[[str], os.stat_result] = os.stat) -> dict[str, Any]:
    """One imported runtime: its version, where it was imported from, and its libraries as mapped."""
    file = getattr(module, "__file__", None)
    version = getattr(module, "__version__", None)
    # A plain str: torch's TorchVersion would make whoever unpickles the result import torch.
    record: dict[str, Any] = {"version": None if version is None else str(version), "file": file, "libraries": []}
    if file:
        package_dir = os.path.realpath(os.path.dirname(file))  # maps shows resolved paths
        for m in mappings:
            where = in_package(m.path, package_dir)
            if where is not None:
                record["libraries"].append({**identify(m, stat), "moved": where == "moved"})
    return record


def loaded_runtimes(modules: dict[str, Any] | None = None, maps_text: str | None = None,
                    stat: Callable[[str], os.stat_result] = os.stat) -> dict[str, Any]:
    """What this process holds: {"pid", "modules": {name: record}, "other_libraries": [deleted or replaced]}.

    `modules` defaults to sys.modules and `maps_text` to /proc/self/maps (tests pass fixtures)."""
    modules = sys.modules if modules is None else modules
    if maps_text is None:
        try:
            maps_text = Path("/proc/self/maps").read_text()
        except OSError:  # not Linux: versions only
            maps_text = ""
    mappings = parse_maps(maps_text)
    records = {name: runtime_record(modules[name], mappings, stat) for name in RUNTIME_MODULES
               if modules.get(name) is not None}
    claimed = {lib["path"] for record in records.values() for lib in record["libraries"]}
    # Any other shared library deleted or replaced under the process (a CUDA user-space library updated
    # in place, say) is as stale as a runtime's own.
    others = [lib for lib in (identify(m, stat) for m in mappings if m.path not in claimed)
              if lib["deleted"] or lib["replaced"]]
    return {"pid": os.getpid(), "modules": records, "other_libraries": others}


def stale_problems(loaded: dict[str, Any], installed: dict[str, str]) -> list[str]:
    """Each way the loaded runtimes differ from the installed ones (fingerprint components), in words."""
    problems = []
    for name, record in loaded["modules"].items():
        want = installed.get(name)
        bad = [lib for lib in record["libraries"] if _state(lib)]
        if record["version"] is not None and want is not None and record["version"] != want:
            problems.append(f"loaded {name} {record['version']}, installed {want}" + _libraries(bad))
        elif bad:
            problems.append(f"{name} {record['version']}" + _libraries(bad))
    for lib in loaded.get("other_libraries", ()):
        problems.append(f"library {lib['path']} {_state(lib)}")
    return problems


def _state(lib: dict[str, Any]) -> str | None:
    """What is wrong with a mapped library, in words; None when it is the installed file."""
    if lib["deleted"]:
        return "deleted"
    if lib["replaced"]:
        return "replaced on disk"
    return "moved aside by an upgrade" if lib.get("moved") else None


def _libraries(bad: list[dict[str, Any]]) -> str:
    if not bad:
        return ""
    shown = ", ".join(f"{lib['path']} {_state(lib)}" for lib in bad[:2])
    return f" (library {shown}{f' and {len(bad) - 2} more' if len(bad) > 2 else ''})"


def installed_runtimes(ctx: ProbeContext | None = None) -> dict[str, str]:
    """The installed runtime versions now, by the same probes as the fingerprint."""
    ctx = ctx or ProbeContext()
    out: dict[str, str] = {}
    for name in RUNTIME_PROBES:
        out.update(run_probe(name, lambda f=PROBES[name]: f(ctx)).values)
    return out


def check_loaded(recorded: dict[str, str], now: dict[str, str] | None = None) -> dict[str, Any]:
    """What this process holds, checked against the recorded stack (and the installed one `now`, after the
    models ran: a runtime changed on disk during the job); raises StaleRuntime on any difference."""
    loaded = loaded_runtimes()
    problems = stale_problems(loaded, recorded)
    for name in loaded["modules"]:
        if now is not None and now.get(name) != recorded.get(name):
            problems.append(f"{name} changed on disk during the job: {recorded.get(name)} -> {now.get(name)}")
    if problems:
        raise StaleRuntime("stale runtime in the worker: " + "; ".join(problems), loaded)
    return loaded
