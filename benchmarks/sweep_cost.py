"""What a sweep costs: N candidates of one model against raw inference of the N + 1 models, and the
fixed cost of a one-shot `revalidator validate` beyond its jobs' own time.

Sweep side by side with raw, in one process, rounds in alternating order (benchmarks/sides.py):
`sweep` runs `run_job` of each of N candidates one after the other, as one worker does, from a
fresh baseline cache and a cleared digest memo (the first job hashes and runs the baseline and
stores its outputs, the others reuse them; every job probes the stack, hashes its candidate,
loads the data and judges every check); `uncached` is the same sweep with the cache off (every job
runs the baseline again, as before the cache); `raw` is a plain script: one onnxruntime session per
model, all N + 1 models over the same rows at the same batch size, outputs kept. `ratio` is the
median over rounds of sweep / raw. Cases: an MLP of about 12M parameters over 10k rows (the
target, at N = 8) and the demo's digits MLP over its 1,482 rows (reported: its inference is so cheap
that each job's fixed costs dominate).

One-shot validate: `revalidator validate --json` in a fresh process on the embedded default
(targets.yaml over the demo artifacts, models whose artifacts are absent left out), its wall
time minus the sum of its jobs' own times (they run one at a time on the one local target).

Usage: python benchmarks/sweep_cost.py [--rounds N] [--validate-runs N]
Last line: {"metric": ..., "value": ..., "target": ..., "ok": ...}
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.sides import paired_ratio, time_sides  # noqa: E402
from runners import hashing  # noqa: E402
from runners.baseline_cache import DIRECTORY_ENV  # noqa: E402
from runners.contracts import ArtifactSpec, CheckSpec, JobSpec, SuiteSpec  # noqa: E402
from runners.harness import run_job  # noqa: E402
from scheduler import local_ray  # noqa: E402

SWEEP_TARGET = 1.15
VALIDATE_TARGET = 1.5
BATCH = 1024
SIZES = (1, 4, 8)
CHECKS = (CheckSpec("max_drop", 0.03), CheckSpec("min_agreement", 0.95), CheckSpec("max_mean_kl", 0.05))


def candidates(base: Path, work: Path, prefix: str) -> list[Path]:
    """Eight dynamic-int8 variants of one model (weight type x per-channel x reduced range)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = []
    for weight in (QuantType.QInt8, QuantType.QUInt8):
        for per_channel in (False, True):
            for reduce_range in (False, True):
                path = work / f"{prefix}-{weight.name}-{int(per_channel)}{int(reduce_range)}.onnx"
                quantize_dynamic(base, path, weight_type=weight, per_channel=per_channel, reduce_range=reduce_range)
                out.append(path)
    return out


def heavy_case(work: Path) -> tuple[Path, Path, tuple[str, ...]]:
    import onnx

    from examples.digits import mlp_onnx

    rng = np.random.default_rng(2)
    sizes = (64, 2048, 2560, 2560, 10)
    weights = [((rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32), np.zeros(b, np.float32))
               for a, b in zip(sizes, sizes[1:])]
    onnx.save(mlp_onnx(weights), work / "heavy-fp32.onnx")
    rows = 10_000
    np.savez(work / "heavy-eval.npz", pixels=rng.uniform(0, 16, (rows, 64)).astype(np.float32),
             labels=rng.integers(0, 10, rows), group=rng.choice(["a", "b", "c", "d"], rows),
             length=rng.choice(["short", "long"], rows))
    return work / "heavy-fp32.onnx", work / "heavy-eval.npz", ("group", "length")


def demo_case(work: Path) -> tuple[Path, Path, tuple[str, ...]]:
    from examples.digits import build

    build(work)
    return work / "digits-fp32.onnx", work / "digits-eval.npz", ("digit", "scan")


def raw(paths: list[Path], rows: np.ndarray) -> None:
    import onnxruntime as ort

    for path in paths:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name, out = session.get_inputs()[0].name, session.get_outputs()[0].name
        np.concatenate([session.run([out], {name: rows[i:i + BATCH]})[0] for i in range(0, len(rows), BATCH)])


def sweep(specs: list[JobSpec], cache: Path, cached: bool = True) -> list:
    """One worker running the jobs of a sweep, from a cold cache and an empty digest memo."""
    hashing._MEMO.clear()
    for old in cache.glob("*"):
        old.unlink()
    os.environ[DIRECTORY_ENV] = str(cache) if cached else "off"
    try:
        results = [run_job(spec) for spec in specs]
    finally:
        os.environ[DIRECTORY_ENV] = str(cache)
    assert all(r.status == "finished" for r in results), [r.error for r in results if r.error]
    return results


def measure(name: str, base: Path, data: Path, slices: tuple[str, ...], cands: list[Path], rounds: int,
            cache: Path) -> list[dict]:
    suite = SuiteSpec(name, str(data), "classification", slices, CHECKS, min_slice_size=30)
    with np.load(data) as columns:
        rows = columns["pixels"]
    out = []
    for n in SIZES:
        specs = [JobSpec(f"job-{i}", "local", name, c.stem, ArtifactSpec(str(base), "onnxruntime"),
                         ArtifactSpec(str(c), "onnxruntime"), suite, batch_size=BATCH)
                 for i, c in enumerate(cands[:n])]
        times = time_sides({"raw": lambda: raw([base, *cands[:n]], rows), "sweep": lambda: sweep(specs, cache),
                            "uncached": lambda: sweep(specs, cache, cached=False)}, rounds)
        reused = sum(r.provenance["baseline_outputs"]["reused"] for r in sweep(specs, cache))
        out.append({"case": name, "rows": len(rows), "candidates": n, "raw_s": round(min(times["raw"]), 4),
                    "sweep_s": round(min(times["sweep"]), 4), "ratio": round(paired_ratio(times, "sweep", "raw"), 3),
                    "uncached_s": round(min(times["uncached"]), 4),
                    "uncached_ratio": round(paired_ratio(times, "uncached", "raw"), 3), "baseline_reused_by": reused})
        print(json.dumps(out[-1]), flush=True)
    return out


def embedded_default(work: Path) -> Path:
    """targets.yaml over the demo artifacts in `work/demo`, with absolute paths and its own ledger."""
    import yaml

    from examples.build import build

    build(work / "demo", llm=False)
    config = yaml.safe_load((REPO / "targets.yaml").read_text())

    def absolute(value: str) -> str:
        return str(work / value)

    config["ledger"] = f"sqlite:///{work / 'ledger.db'}"
    for target in config["targets"].values():
        for probe in (target.get("probes") or {}).values():
            if "file" in probe:
                probe["file"] = absolute(probe["file"])
    for name in list(config["models"]):
        model = config["models"][name]
        if not (work / model["baseline"]["path"]).exists():
            del config["models"][name]
            continue
        for artifact in [model["baseline"], *model["candidates"].values()]:
            artifact["path"] = absolute(artifact["path"])
            if "calibration_set" in artifact.get("quantization", {}):
                artifact["quantization"]["calibration_set"] = absolute(artifact["quantization"]["calibration_set"])
    used = {s for m in config["models"].values() for s in m["suites"]}
    config["suites"] = {k: v for k, v in config["suites"].items() if k in used}
    for suite in config["suites"].values():
        suite["data"] = absolute(suite["data"])
        if (suite.get("generation") or {}).get("tokenizer"):
            suite["generation"]["tokenizer"] = absolute(suite["generation"]["tokenizer"])
    path = work / "targets.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def one_shot(config: Path, cache: Path, instances: Path, fresh: bool) -> dict:
    """One `revalidator validate --json` process: on the kept local Ray in `instances`, or (fresh)
    starting and stopping an embedded Ray of its own."""
    env = {**os.environ, "PYTHONPATH": str(REPO), DIRECTORY_ENV: str(cache), local_ray.DIRECTORY_ENV: str(instances)}
    env.pop("RAY_ADDRESS", None)
    env.pop(local_ray.MODE_ENV, None)
    if fresh:
        env[local_ray.MODE_ENV] = "fresh"
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "scheduler.cli", "validate", "--json", "-c", str(config)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - started
    if proc.returncode not in (0, 1):
        raise SystemExit(f"validate exited {proc.returncode}: {proc.stderr[-2000:]}")
    doc = json.loads(proc.stdout)
    jobs = sum(r["finished_at"] - r["started_at"] for r in doc["runs"])
    return {"ray": doc["ray_origin"], "wall_s": round(wall, 3), "jobs_s": round(jobs, 3),
            "fixed_s": round(wall - jobs, 3), "ray_startup_s": round(doc["ray_startup_seconds"], 3),
            "jobs": len(doc["runs"])}


def validate_runs(work: Path, runs: int) -> list[dict]:
    """A fresh-Ray run, then `runs` runs on the kept local Ray (the first of which starts it),
    fresh and kept alternating after that so that both see the same load."""
    config, instances = embedded_default(work / "default"), work / "instances"
    out = []
    try:
        for i in range(runs):
            for fresh in ((True, False) if i % 2 == 0 else (False, True)):
                out.append(one_shot(config, work / "default-cache", instances, fresh))
                print(json.dumps({"validate": out[-1]}), flush=True)
    finally:
        for directory, _ in local_ray.instances(instances):
            local_ray.stop(directory)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--validate-runs", type=int, default=3)
    parser.add_argument("--validate-only", action="store_true", help="skip the sweeps")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cache = work / "cache"
        os.environ[DIRECTORY_ENV] = str(cache)
        cache.mkdir()
        cases = []
        if not args.validate_only:
            heavy = heavy_case(work)
            demo = demo_case(work / "digits")
            cases = measure("mlp-12m-10k", *heavy, candidates(heavy[0], work, "heavy"), args.rounds, cache)
            cases += measure("digits-mlp-demo", *demo, candidates(demo[0], work, "digits"), args.rounds, cache)
        runs = validate_runs(work, args.validate_runs)
    heavy8 = next((c["ratio"] for c in cases if c["case"] == "mlp-12m-10k" and c["candidates"] == 8), None)
    kept = sorted(r["fixed_s"] for r in runs if r["ray"] == "shared, reused")
    fresh = sorted(r["fixed_s"] for r in runs if r["ray"] == "embedded")
    fixed = kept[len(kept) // 2] if kept else None  # median of the runs that found the kept Ray
    ok = (heavy8 is None or heavy8 <= SWEEP_TARGET) and fixed is not None and fixed <= VALIDATE_TARGET
    print(json.dumps({"metric": "sweep_over_raw_8_candidates", "value": heavy8, "target": SWEEP_TARGET,
                      "validate_fixed_seconds": fixed, "validate_fixed_seconds_fresh_ray": fresh[len(fresh) // 2],
                      "validate_target": VALIDATE_TARGET, "ok": ok}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
