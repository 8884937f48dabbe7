"""Installed versions read from package metadata, without importing the packages."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

from runners.probes.base import NotApplicable


def distribution(*names: str) -> metadata.Distribution:
    """The first of `names` that is installed."""
    for name in names:
        try:
            return metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
    raise NotApplicable(f"none of {', '.join(names)} is installed")


def file_names(dist: metadata.Distribution) -> set[str]:
    return {Path(str(f)).name for f in dist.files or []}


def read_package_file(dist: metadata.Distribution, relative: str) -> str | None:
    for f in dist.files or []:
        if str(f).replace("\\", "/") == relative:
            try:
                return Path(dist.locate_file(f)).read_text()
            except OSError:
                return None
    return None


def assigned_string(source: str, name: str) -> str | None:
    """The string literal assigned to `name` in a Python source file (e.g. `cuda = '12.4'`)."""
    match = re.search(rf"^{name}\s*(?::[^=]*)?=\s*['\"]([^'\"]+)['\"]", source, re.MULTILINE)
    return match.group(1) if match else None
