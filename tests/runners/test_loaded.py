"""What a job's process has loaded against what is installed: the pure parts on a fixture maps file,
this process as it is, and a real process that imported onnxruntime before a real in-place upgrade."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from runners.contracts import job_spec_to_dict
from runners.loaded import (runtime_record, StaleRuntime, check_loaded, in_package, installed_runtimes, loaded_runtimes, parse_maps,
                            stale_problems)
from tests.conftest import REPO
from tests.envs import ORT_NEW, ORT_OLD, install, layered_env
from tests.runners.test_harness import job

MAPS = REPO / "tests" / "fixtures" / "maps" / "worker-after-upgrade.maps"
SITE = "/venv/lib/python3.11/site-packages"


def fake_stat(files: dict[str, int]):
    """os.stat over a fixture tree: {path: inode} on device fe:00; any other path is missing."""
    def stat(path: str) -> os.stat_result:
        if path not in files:
            raise FileNotFoundError(path)
        return os.stat_result((0o100644, files[path], os.makedev(0xfe, 0), 1, 0, 0, 4096, 0, 1700000000, 0))
    return stat


def test_parse_maps_keeps_each_shared_library_once_with_its_deleted_mark() -> None:
    mappings = parse_maps(MAPS.read_text())
    assert [(m.path.rsplit("/", 1)[1], m.inode, m.deleted) for m in mappings] == [
        ("onnxruntime_pybind11_state.cpython-311-x86_64-linux-gnu.so", 5391714, True),
        ("libonnxruntime_providers_shared.so", 5391711, True),
        ("libtorch_cpu.so", 5498413, False),
        ("libgomp.so.1", 5498420, False),
        ("_umath_linalg.cpython-311-x86_64-linux-gnu.so", 5375106, False),
        ("libcudnn.so.9.1.0", 340112, True),
        ("_C.cpython-311-x86_64-linux-gnu.so", 5400001, False)]  # not the interpreter, shm, anonymous or stack


def test_a_package_owns_the_folder_pip_moved_it_to() -> None:
    ort = f"{SITE}/onnxruntime"
    assert in_package(f"{SITE}/onnxruntime/capi/x.so", ort) == "package"
    assert in_package(f"{SITE}/~nnxruntime/capi/x.so", ort) == "moved"
    assert in_package(f"{SITE}/~-nxruntime/capi/x.so", ort) == "moved"
    assert in_package(f"{SITE}/onnxruntime_extensions/x.so", ort) is None
    assert in_package(f"{SITE}/~nnxruntim/x.so", ort) is None
    assert in_package(f"/other{SITE}/onnxruntime/x.so", ort) is None
    assert in_package(f"{SITE}/~orch/lib/libtorch.so", f"{SITE}/torch") == "moved"


def test_a_worker_holding_a_replaced_runtime_is_named_with_its_libraries() -> None:
    modules = {"onnxruntime": SimpleNamespace(__version__="1.32.0", __file__=f"{SITE}/onnxruntime/__init__.py"),
               "torch": SimpleNamespace(__version__="2.13.0+cpu", __file__=f"{SITE}/torch/__init__.py"),
               "numpy": SimpleNamespace(__version__="2.3.0", __file__=f"{SITE}/numpy/__init__.py")}
    # On disk now: onnxruntime 1.31.1 (its files have new inodes), torch/_C.so replaced, libtorch_cpu the same.
    stat = fake_stat({f"{SITE}/torch/lib/libtorch_cpu.so": 5498413, f"{SITE}/torch/lib/libgomp.so.1": 5498420,
                      f"{SITE}/torch/_C.cpython-311-x86_64-linux-gnu.so": 7000001,
                      f"{SITE}/numpy/linalg/_umath_linalg.cpython-311-x86_64-linux-gnu.so": 5375106})
    loaded = loaded_runtimes(modules, MAPS.read_text(), stat)
    assert set(loaded["modules"]) == {"onnxruntime", "torch"}  # runtimes only, and only those imported
    ort = loaded["modules"]["onnxruntime"]
    assert ort["version"] == "1.32.0" and [lib["deleted"] for lib in ort["libraries"]] == [True, True]
    torch_libs = {lib["path"].rsplit("/", 1)[1]: lib for lib in loaded["modules"]["torch"]["libraries"]}
    assert torch_libs["libtorch_cpu.so"]["size"] == 4096 and not torch_libs["libtorch_cpu.so"]["replaced"]
    assert torch_libs["_C.cpython-311-x86_64-linux-gnu.so"]["replaced"]
    assert [lib["path"] for lib in loaded["other_libraries"]] == ["/usr/lib/x86_64-linux-gnu/libcudnn.so.9.1.0"]

    problems = stale_problems(loaded, {"onnxruntime": "1.31.1", "torch": "2.13.0+cpu"})
    assert problems[0].startswith(f"loaded onnxruntime 1.32.0, installed 1.31.1 (library {SITE}/~nnxruntime/capi/"
                                  "onnxruntime_pybind11_state.cpython-311-x86_64-linux-gnu.so deleted, ")
    assert problems[1] == f"torch 2.13.0+cpu (library {SITE}/torch/_C.cpython-311-x86_64-linux-gnu.so replaced on disk)"
    assert problems[2] == "library /usr/lib/x86_64-linux-gnu/libcudnn.so.9.1.0 deleted"
    assert len(problems) == 3


def test_a_library_pip_has_moved_aside_but_not_yet_deleted_is_stale_too() -> None:
    modules = {"onnxruntime": SimpleNamespace(__version__="1.31.1", __file__=f"{SITE}/onnxruntime/__init__.py")}
    maps = MAPS.read_text().replace(" (deleted)", "")  # pip has installed the new files, not yet removed the old
    stat = fake_stat({f"{SITE}/~nnxruntime/capi/onnxruntime_pybind11_state.cpython-311-x86_64-linux-gnu.so": 5391714,
                      f"{SITE}/~nnxruntime/capi/libonnxruntime_providers_shared.so": 5391711})
    loaded = loaded_runtimes(modules, maps, stat)
    assert [lib["moved"] for lib in loaded["modules"]["onnxruntime"]["libraries"]] == [True, True]
    problems = stale_problems(loaded, {"onnxruntime": "1.31.1"})  # same version: the files alone say it
    assert problems[0].startswith(f"onnxruntime 1.31.1 (library {SITE}/~nnxruntime/capi/onnxruntime_pybind11_state")
    assert problems[0].endswith("moved aside by an upgrade)")


def test_same_version_and_files_is_no_problem() -> None:
    modules = {"torch": SimpleNamespace(__version__="2.13.0+cpu", __file__=f"{SITE}/torch/__init__.py")}
    maps = "".join(line + "\n" for line in MAPS.read_text().splitlines() if "/torch/" in line)
    stat = fake_stat({f"{SITE}/torch/lib/libtorch_cpu.so": 5498413, f"{SITE}/torch/lib/libgomp.so.1": 5498420,
                      f"{SITE}/torch/_C.cpython-311-x86_64-linux-gnu.so": 5400001})
    loaded = loaded_runtimes(modules, maps, stat)
    assert stale_problems(loaded, {"torch": "2.13.0+cpu"}) == []
    assert stale_problems(loaded, {"torch": "2.14.0+cpu"}) == ["loaded torch 2.13.0+cpu, installed 2.14.0+cpu"]


def test_this_process_runs_what_is_installed_and_a_change_during_the_job_is_caught() -> None:
    import onnxruntime

    installed = installed_runtimes()
    loaded = check_loaded(installed, installed)
    ort = loaded["modules"]["onnxruntime"]
    assert ort["version"] == onnxruntime.__version__ == installed["onnxruntime"]
    assert ort["libraries"] and not any(lib["deleted"] or lib["replaced"] for lib in ort["libraries"])
    assert all(lib["size"] > 0 for lib in ort["libraries"]) and loaded["pid"] == os.getpid()
    with pytest.raises(StaleRuntime, match=r"onnxruntime changed on disk during the job: .* -> 0\.0\.1"):
        check_loaded(installed, {**installed, "onnxruntime": "0.0.1"})


WORKER = """
import json, sys
import onnxruntime  # loaded before the upgrade, as a long-lived worker would have
print("imported", onnxruntime.__version__, flush=True)
sys.stdin.readline()  # the upgrade happens here
from runners.contracts import job_spec_from_dict
from runners.harness import run_job
print(json.dumps(run_job(job_spec_from_dict(json.loads(sys.argv[1]))).to_dict(), default=str), flush=True)
"""


def test_a_process_that_imported_onnxruntime_before_an_in_place_upgrade_reports_a_stale_runtime(
        tmp_path: Path, demo_dir: Path) -> None:
    python = layered_env(tmp_path / "env", {"onnxruntime": ORT_OLD})
    spec = job(demo_dir, "digits-int8-dynamic.onnx")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with subprocess.Popen([str(python), "-c", WORKER, json.dumps(job_spec_to_dict(spec))], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True, env=env) as worker:
        assert worker.stdout.readline().split() == ["imported", ORT_OLD]
        install(python, "onnxruntime", ORT_NEW)  # pip replaces the package folder the process loaded from
        out, _ = worker.communicate("go\n", timeout=120)
    result = json.loads(out.splitlines()[-1])
    assert (result["status"], result["verdict"], result["error_kind"]) == ("error", "error", "stale_runtime")
    assert result["checks"] == []
    assert result["error"].startswith(f"stale runtime in the worker: loaded onnxruntime {ORT_OLD}, installed {ORT_NEW} "
                                      "(library "), result["error"]
    assert "/~nnxruntime/capi/onnxruntime_pybind11_state" in result["error"] and " deleted" in result["error"]
    # The record says both: what the disk has, and what the process ran.
    assert result["provenance"]["fingerprint"]["components"]["onnxruntime"] == ORT_NEW
    loaded = result["provenance"]["loaded"]["modules"]["onnxruntime"]
    assert loaded["version"] == ORT_OLD and all(lib["deleted"] for lib in loaded["libraries"])


def test_a_version_is_recorded_as_a_plain_string_so_the_control_plane_can_unpickle_it() -> None:
    """torch.__version__ is a str subclass defined in torch: kept as is, unpickling a job's result
    in the daemon would import torch there (seconds, and a boundary the control plane keeps)."""
    import pickle
    import subprocess
    import sys

    import torch

    record = runtime_record(torch, [])
    assert type(record["version"]) is str and record["version"] == str(torch.__version__)
    check = ("import pickle, sys; pickle.loads(sys.stdin.buffer.read()); "
             "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", check], input=pickle.dumps(record), capture_output=True, timeout=60)
    assert out.stdout.decode().strip() == "False", out.stderr.decode()
