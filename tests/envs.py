"""Python environments that differ from the test run's in one runtime package.

A test that needs a node or a daemon on another onnxruntime release (an in-place upgrade, two targets on
two stacks) gets a virtual environment layered over this one: the environment's own site-packages hold
only the pinned package, and everything else (ray, numpy, revalidator itself) comes from the running
environment through a `.pth` line. Wheels come from the package registry once and are kept in `.whl/`.
"""

from __future__ import annotations

import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
WHEELS = REPO / ".whl"

# Two onnxruntime releases from the registry: the older one is what an environment starts with, the
# newer one what an in-place upgrade installs.
ORT_OLD, ORT_NEW = "1.31.1", "1.32.0"


def wheel(package: str, version: str) -> Path:
    """The package's wheel for this interpreter, downloaded once into .whl/; skips the test without a registry."""
    WHEELS.mkdir(exist_ok=True)
    pattern = f"{package.replace('-', '_')}-{version}-*.whl"
    found = sorted(WHEELS.glob(pattern))
    if not found:
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                               f"{package}=={version}", "-d", str(WHEELS)], capture_output=True, text=True)
        found = sorted(WHEELS.glob(pattern))
        if done.returncode != 0 or not found:
            pytest.skip(f"cannot download {package}=={version} from the package registry: {done.stderr.strip()[-300:]}")
    return found[-1]


def layered_env(root: Path, pins: dict[str, str]) -> Path:
    """A venv at `root` whose site-packages hold `pins` ({package: version}) over this environment; its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    python = root / "bin" / "python"
    own = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              check=True, capture_output=True, text=True).stdout.strip())
    # Appended after the venv's own site-packages, so the pinned packages shadow this environment's.
    parents = [p for p in site.getsitepackages() + [sysconfig.get_paths()["purelib"]] if Path(p).is_dir()]
    lines = "".join(f"import site; site.addsitedir({p!r})\n" for p in dict.fromkeys(parents))
    (own / "zz_parent_environment.pth").write_text(lines)
    for package, version in pins.items():
        install(python, package, version)
    return python


def install(python: Path, package: str, version: str) -> None:
    """`pip install` one pinned release into the environment of `python`, in place (an upgrade or downgrade)."""
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                    "--no-index", "--disable-pip-version-check", str(wheel(package, version))],
                   check=True, capture_output=True, text=True)


def version_in(python: Path, module: str) -> str:
    """The version `python` imports for `module` (and where from), as a fresh process sees it."""
    out = subprocess.run([str(python), "-c", f"import {module} as m; print(m.__version__, m.__file__)"],
                         check=True, capture_output=True, text=True).stdout.split()
    return out[0]
