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


def package_path(dist: metadata.Distribution, relative: str) -> Path:
    """Where a file of the distribution would be (reading its RECORD is slow for big packages)."""
    return Path(str(dist.locate_file(relative)))


def read_package_file(dist: metadata.Distribution, relative: str) -> str | None:
    try:
        return package_path(dist, relative).read_text()
    except OSError:
        return None


def assigned_string(source: str, name: str) -> str | None:
    """The string literal assigned to `name` in a Python source file (e.g. `cuda = '12.4'`)."""
    match = re.search(rf"^{name}\s*(?::[^=]*)?=\s*['\"]([^'\"]+)['\"]", source, re.MULTILINE)
    return match.group(1) if match else None
