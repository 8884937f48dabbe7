"""`report RUN_ID --html FILE` on real runs, checked in a real headless Chromium: the page loads from
file:// with no console error and no request beyond the file, the key elements are in the DOM, and a
screenshot is taken."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from scheduler.cli import main
from tests.conftest import REPO

pytestmark = pytest.mark.ray

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def config(demo: Path, ledger: Path) -> str:
    """Two targets (both on the local Ray) and two suites: classification at two batch sizes, and generation."""
    return f"""version: 1
ledger: sqlite:///{ledger}
ray: {{job_timeout_seconds: 300}}
targets:
  cpu-a: {{runners: [onnxruntime], options: {{onnxruntime: {{intra_op_threads: 1}}}}}}
  cpu-b: {{runners: [onnxruntime], options: {{onnxruntime: {{intra_op_threads: 1}}}}}}
models:
  digits-mlp:
    baseline: {{path: {demo / 'digits-fp32.onnx'}, runner: onnxruntime}}
    suites: [digits]
    candidates:
      w8a3:
        path: {demo / 'digits-w8a3.onnx'}
        runner: onnxruntime
        quantization: {{method: static-per-tensor-truncating, weight_bits: 8, activation_bits: 3}}
  charlm:
    baseline: {{path: {demo / 'charlm-fp32.onnx'}, runner: onnxruntime}}
    suites: [chat]
    targets: [cpu-a]
    candidates:
      int8:
        path: {demo / 'charlm-int8-dynamic.onnx'}
        runner: onnxruntime
        quantization: {{method: dynamic, weight_bits: 8, activation_bits: 8}}
suites:
  digits:
    data: {demo / 'digits-eval.npz'}
    task: classification
    slices: [digit, scan]
    min_slice_size: 50
    batch_sizes: [1, 1024]
    decision: {{policy: release}}
    checks: {{max_drop: 0.03, min_agreement: 0.95}}
    slice_checks: {{max_drop: 0.08, min_agreement: 0.90}}
  chat:
    data: {demo / 'charlm-prompts.jsonl'}
    task: generation
    slices: [category]
    min_slice_size: 20
    generation: {{tokenizer: {demo / 'charlm-vocab.json'}, context: 32, max_new_tokens: 64,
                 curve_positions: [16, 32, 64]}}
    checks: {{max_exact_match_drop: 0.05, min_token_agreement: 0.6}}
"""


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory, demo_dir: Path, ray_local) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("html")
    path = tmp / "targets.yaml"
    path.write_text(config(demo_dir, tmp / "ledger.db"))
    assert main(["validate", "-c", str(path), "-q"]) in (0, 1)
    from scheduler.ledger import Ledger

    ledger = Ledger.for_reading(f"sqlite:///{tmp / 'ledger.db'}")
    out = {}
    for run in ledger.history():
        name = f"{run['model']}-{run['target']}"
        out[name] = tmp / f"{name}.html"
        assert main(["report", run["run_id"][:8], "-c", str(path), "--html", str(out[name])]) == 0
    return out


def test_report_is_self_contained_with_every_section(reports: dict[str, Path]) -> None:
    page = reports["digits-mlp-cpu-a"].read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page)  # nothing to fetch
    assert "<link" not in page and "@import" not in page
    for ident in ("verdict", "why", "slices", "drift", "batch-spread", "cross-target", "fingerprint",
                  "provenance", "run-json"):
        assert f'id="{ident}"' in page, ident
    document = json.loads(re.search(r'<script type="application/json" id="run-json">(.*?)</script>', page,
                                    re.S).group(1))
    assert document["run"]["model"] == "digits-mlp" and document["cross_target"][0]["targets"] == ["cpu-a", "cpu-b"]
    assert page.count('class="interval"') >= len([c for c in document["run"]["checks"]
                                                  if c["check_name"].startswith("min_agreement")])
    assert "polyline" in reports["charlm-cpu-a"].read_text()  # the drift curves
    # under the release policy, checks whose bound straddles the tolerance are listed as inconclusive
    inconclusive = [c for c in document["run"]["checks"] if c["verdict"] == "inconclusive"]
    assert page.count("<li>INCONCLUSIVE ") == len(inconclusive)


def console(stderr: str) -> list[str]:
    """The page's console messages and uncaught errors, as Chromium logs them with --enable-logging=stderr."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_report_in_headless_chromium(reports: dict[str, Path], tmp_path: Path) -> None:
    # the console check sees an error where there is one
    broken = tmp_path / "broken.html"
    broken.write_text("<html><body><script>no_such_function();</script></body></html>")
    done = subprocess.run([CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--enable-logging=stderr",
                           "--v=0", f"--user-data-dir={tmp_path / 'profile-broken'}", "--dump-dom", broken.as_uri()],
                          capture_output=True, text=True, timeout=180)
    assert any("no_such_function" in line for line in console(done.stderr)), done.stderr[-2000:]
    for name, page in reports.items():
        shot = tmp_path / f"{name}.png"
        profile = tmp_path / f"profile-{name}"
        done = subprocess.run([CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--enable-logging=stderr",
                               "--v=0", f"--user-data-dir={profile}", "--window-size=1280,2400",
                               "--virtual-time-budget=2000", f"--screenshot={shot}", page.as_uri()],
                              capture_output=True, text=True, timeout=180)
        assert done.returncode == 0 and shot.stat().st_size > 10_000, done.stderr[-2000:]
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert console(done.stderr) == []
        dom = subprocess.run([CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--enable-logging=stderr",
                              "--v=0", f"--user-data-dir={profile}", "--dump-dom", page.as_uri()],
                             capture_output=True, text=True, timeout=180)
        assert dom.returncode == 0, dom.stderr[-2000:]
        assert console(dom.stderr) == []
        tree = dom.stdout
        assert re.search(r'<p id="verdict" class="verdict (pass|fail|inconclusive)">(PASS|FAIL|INCONCLUSIVE)</p>', tree)
        assert '<table id="slices">' in tree and 'id="fingerprint"' in tree and 'id="run-json"' in tree
        if name.startswith("digits"):
            assert '<svg class="interval"' in tree and '<table id="batch-spread">' in tree
            assert "<h3>cpu-a vs cpu-b</h3>" in tree
        else:
            assert "<polyline" in tree
    if os.environ.get("REVALIDATOR_SCREENSHOT_TO"):  # how docs/report-screenshot.png is made
        shutil.copyfile(tmp_path / "digits-mlp-cpu-b.png", os.environ["REVALIDATOR_SCREENSHOT_TO"])
