"""Harness overhead: baseline + candidate through the harness (every slice and check) against raw
batched onnxruntime inference of both models on the same rows, measured side by side.

Cases: the demo digits MLP over 100k rows, and a compute-heavy MLP (~12M parameters) over 10k
rows, at the same batch size on both sides. `raw` is the plain script: one session per model,
one after the other, onnxruntime defaults, outputs kept. `harness` is the job's evaluation path:
both models through the runners, then per-row comparison, slicing and judging of every check;
`compare_s` is that last step alone. Ray start-up and the job's fixed costs (stack probe,
hashing, data loading) are reported separately. Each round runs every side once, back to back, in alternating order;
`ratio` is the median over rounds of harness / raw within a round (robust to the machine's
bursts, which hit neighbouring runs alike), `best_ratio` the ratio of the best times. The
headline is `ratio` of the worse case.

Usage: python benchmarks/harness_overhead.py [--repeats N]
Last line: {"metric": ..., "value": ..., "target": ..., "ok": ...}
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.sides import paired_ratio, time_sides  # noqa: E402
from runners.contracts import ArtifactSpec, CheckSpec, JobSpec, SuiteSpec  # noqa: E402
from runners.families.classification.data import load_eval_data  # noqa: E402
from runners.families.classification.evaluate import judge_outputs, run_model  # noqa: E402
from runners.harness import run_job  # noqa: E402

TARGET = 1.10
BATCH = 1024
CHECKS = (CheckSpec("max_drop", 0.03), CheckSpec("max_relative_drop", 0.05), CheckSpec("min_agreement", 0.95),
          CheckSpec("max_mean_kl", 0.05), CheckSpec("max_abs_diff", 10.0), CheckSpec("min_cosine", 0.9))


def raw_model(path: str, rows: np.ndarray) -> np.ndarray:
    """What a hand-written script does: a session, every batch run, the outputs kept."""
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    name, out = session.get_inputs()[0].name, session.get_outputs()[0].name
    return np.concatenate([session.run([out], {name: rows[i:i + BATCH]})[0] for i in range(0, len(rows), BATCH)])


def raw_inference(model_paths: list[str], rows: np.ndarray) -> None:
    """Both models one after the other, onnxruntime defaults: the plain way."""
    for path in model_paths:
        raw_model(path, rows)


def harness(spec: JobSpec, data) -> None:
    outputs = [run_model(a, {}, data, BATCH) for a in (spec.baseline, spec.candidate_artifact)]
    judge_outputs(*outputs, data, spec.suite)


def demo_case(work: Path) -> tuple[str, str, str]:
    from examples.digits import _digits, build, scan_variants

    build(work)
    x, y = _digits()
    rng = np.random.default_rng(1)
    parts = [scan_variants(x, y, rng) for _ in range(100_000 // len(scan_variants(x, y, rng)["labels"]) + 1)]
    merged = {k: np.concatenate([p[k] for p in parts])[:100_000] for k in parts[0]}
    np.savez(work / "eval-100k.npz", **merged)
    return str(work / "digits-fp32.onnx"), str(work / "digits-int8-dynamic.onnx"), str(work / "eval-100k.npz")


def heavy_case(work: Path) -> tuple[str, str, str]:
    """An MLP of about 12M parameters (64-2048-2560-2560-10), fp32 and dynamic int8, 10k rows."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from examples.digits import mlp_onnx

    rng = np.random.default_rng(2)
    sizes = (64, 2048, 2560, 2560, 10)
    weights = [((rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32), np.zeros(b, np.float32))
               for a, b in zip(sizes, sizes[1:])]
    params = sum(w.size + b.size for w, b in weights)
    onnx.save(mlp_onnx(weights), work / "heavy-fp32.onnx")
    quantize_dynamic(work / "heavy-fp32.onnx", work / "heavy-int8.onnx", weight_type=QuantType.QInt8)
    rows = 10_000
    np.savez(work / "heavy-eval.npz", pixels=rng.uniform(0, 16, (rows, 64)).astype(np.float32),
             labels=rng.integers(0, 10, rows), group=rng.choice(["a", "b", "c", "d"], rows),
             length=rng.choice(["short", "long"], rows))
    print(f"heavy model: {params / 1e6:.1f}M parameters", file=sys.stderr)
    return str(work / "heavy-fp32.onnx"), str(work / "heavy-int8.onnx"), str(work / "heavy-eval.npz")


def measure(name: str, base: str, cand: str, data_path: str, slices: tuple[str, ...], repeats: int) -> dict:
    data = load_eval_data(data_path, slices)
    suite = SuiteSpec(name, data_path, "classification", slices, CHECKS, min_slice_size=30)
    baseline, candidate = ArtifactSpec(base, "onnxruntime"), ArtifactSpec(cand, "onnxruntime")
    rows = data.inputs["pixels"]
    spec = JobSpec("bench", "local", "m", "c", baseline, candidate, suite, batch_size=BATCH)
    outputs = [run_model(a, {}, data, BATCH) for a in (baseline, candidate)]
    sides = {"raw": lambda: raw_inference([base, cand], rows),
             "harness": lambda: harness(spec, data),
             "compare": lambda: judge_outputs(*outputs, data, suite)}
    times = time_sides(sides, repeats)
    best = {side: min(values) for side, values in times.items()}
    paired = paired_ratio(times, "harness", "raw")
    started = time.perf_counter()
    result = run_job(spec)
    full_job = time.perf_counter() - started
    assert result.status == "finished", result.error
    return {"case": name, "rows": data.rows, **{f"{k}_s": round(v, 4) for k, v in best.items()},
            "ratio": round(paired, 3), "best_ratio": round(best["harness"] / best["raw"], 3),
            "full_job_s": round(full_job, 4), "fixed_costs_s": round(full_job - best["harness"], 4),
            "checks_judged": len(result.checks)}


def ray_startup() -> float:
    import ray

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    started = time.perf_counter()
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    elapsed = time.perf_counter() - started
    ray.shutdown()
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cases = [measure("digits-mlp-100k", *demo_case(work), ("digit", "scan"), args.repeats),
                 measure("mlp-12m-10k", *heavy_case(work), ("group", "length"), args.repeats)]
    for case in cases:
        print(json.dumps(case))
    print(json.dumps({"ray_startup_s": round(ray_startup(), 3)}))
    worst = max(c["ratio"] for c in cases)
    print(json.dumps({"metric": "harness_overhead_ratio", "value": worst, "target": TARGET, "ok": worst <= TARGET}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
