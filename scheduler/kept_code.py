"""The code a kept driver and its Ray workers have imported, as modification times.

A kept driver (scheduler/kept_driver.py) lives across commands, and so do its workers, with every
module they imported loaded; a command must never run old code there. So the driver notes, when it
starts, the modification time of every .py file of the `scheduler` and `runners` packages and of
every folder on sys.path (an install or upgrade changes site-packages), and of a config's plugin
runners' modules ("package.module:Class") the first time a command uses them, and compares them
again for each command: any change and it declines the command and ends.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

PACKAGES = ("scheduler", "runners")


def fingerprint(search_path: list[str]) -> dict[str, float | None]:
    """Modification times of the packages' .py files and of the folders of `search_path` (sys.path
    as it was when the driver started: importing Ray adds folders of its own)."""
    times: dict[str, float | None] = {}
    for package in PACKAGES:
        spec = importlib.util.find_spec(package)
        for location in (spec.submodule_search_locations or []) if spec else []:
            for path in Path(location).rglob("*.py"):
                times[str(path)] = _mtime(path)
    for entry in search_path:
        times[entry or os.getcwd()] = _mtime(Path(entry or os.getcwd()))
    return times


def plugin_modules(config: Any) -> set[str]:
    """The modules of the config's plugin runners."""
    names = {name for target in config.targets.values() for name in target.runners}
    for model in config.models.values():
        names |= {model.baseline.runner, *(c.runner for c in model.candidates.values())}
    return {name.partition(":")[0] for name in names if ":" in name}


def plugin_times(modules: set[str]) -> dict[str, float | None]:
    """Modification times of each module's file and, for a module in a package, of the .py files beside
    it; found without importing anything (the driver never imports a plugin: its workers do)."""
    times: dict[str, float | None] = {}
    for module in sorted(modules):
        path = _source(module)
        if path is None:
            times[module] = None  # not found here: a job will say so; found later, it counts as a change
            continue
        beside = sorted(path.parent.glob("*.py")) if "." in module else [path]
        times.update({str(p): _mtime(p) for p in beside})
    return times


def _source(module: str) -> Path | None:
    """The file of a dotted module name, looked up on sys.path folder by folder."""
    top, *rest = module.split(".")
    try:
        spec = importlib.util.find_spec(top) if top not in sys.modules else sys.modules[top].__spec__
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if not rest:
        return Path(spec.origin) if spec.origin and spec.origin.endswith(".py") else None
    folders = [Path(p) for p in spec.submodule_search_locations or []]
    for i, part in enumerate(rest):
        last = i == len(rest) - 1
        found = [f / part for f in folders if (f / part).is_dir()]
        if last:
            for folder in folders:
                if (folder / f"{part}.py").is_file():
                    return folder / f"{part}.py"
            package = next((f / "__init__.py" for f in found if (f / "__init__.py").is_file()), None)
            return package
        folders = found
    return None


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None
