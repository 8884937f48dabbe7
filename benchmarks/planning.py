"""Planning speed and precision.

1. A full sweep's plan for 10,000 targets x 20 candidates (200,000 jobs, keys and dedupe included).
2. One component changed on one of 16 targets: the jobs planned against a full sweep's, and duplicates.

Usage: python benchmarks/planning.py
Last line: {"metric": "plan_seconds_10k_targets_x_20_candidates", "value": ..., "target": 1.0, "ok": ...}
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scheduler.config.loader import LoadedConfig  # noqa: E402
from scheduler.config.schema import Config  # noqa: E402
from scheduler.events import Scheduled, StackChanged  # noqa: E402
from scheduler.planning import Planner  # noqa: E402

STACK = {"kernel": "6.8.0", "os": "Ubuntu 22.04", "cpu_model": "Xeon", "cpu_flags": "avx2,avx512f",
         "python": "CPython 3.11.7", "onnxruntime": "1.20.1", "torch": "2.5.1", "nvidia_driver": "550.107.02",
         "cuda_driver": "12.4", "gpu0": "NVIDIA H100 cc9.0"}


def loaded_config(work: Path, targets: int, candidates: int) -> LoadedConfig:
    for name in ["base.onnx", "eval.npz"] + [f"c{i}.onnx" for i in range(candidates)]:
        (work / name).write_bytes(name.encode() * 100)
    document = {
        "version": 1,
        "targets": {f"t{i:05d}": {"where": {"resource": f"target:{i}"}, "runners": ["onnxruntime", "torch"]}
                    for i in range(targets)},
        "models": {"m": {"baseline": {"path": "base.onnx", "runner": "onnxruntime"}, "suites": ["s"],
                         "candidates": {f"c{i}": {"path": f"c{i}.onnx", "runner": "onnxruntime",
                                                  "quantization": {"method": "dynamic", "weight_bits": 8}}
                                        for i in range(candidates)}}},
        "suites": {"s": {"data": "eval.npz", "task": "classification", "slices": ["k"],
                         "checks": {"max_drop": 0.02}}},
    }
    return LoadedConfig(config=Config.model_validate(document), path=work / "targets.yaml", hash="bench")


def best_of(runs: int, func):
    best, value = float("inf"), None
    for _ in range(runs):
        started = time.perf_counter()
        value = func()
        best = min(best, time.perf_counter() - started)
    return best, value


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        big = loaded_config(work, 10_000, 20)
        fingerprints = {t: {"components": STACK} for t in big.config.targets}
        planner = Planner(big)
        planner.work()  # hashes the artifacts once, as the daemon does at start
        seconds, plan = best_of(3, lambda: planner.plan(Scheduled(due=0), fingerprints, lambda keys: set()))
        jobs = len(plan.jobs)
        print(json.dumps({"case": "full sweep", "targets": 10_000, "candidates": 20, "jobs": jobs,
                          "seconds": round(seconds, 3), "jobs_per_second": round(jobs / seconds)}))

        small = loaded_config(work, 16, 20)
        prints16 = {t: {"components": STACK} for t in small.config.targets}
        p16 = Planner(small)
        full = p16.plan(Scheduled(due=0), prints16, lambda keys: set()).jobs
        changed = p16.plan(StackChanged("t00007", {"onnxruntime": ("1.20.1", "1.21.0")}), prints16,
                           lambda keys: set()).jobs
        keys = [j.job_key for j in changed]
        print(json.dumps({"case": "one component on one of 16 targets", "full_sweep_jobs": len(full),
                          "planned_jobs": len(changed), "fraction": round(len(changed) / len(full), 4),
                          "limit": round(1 / 16, 4), "duplicates": len(keys) - len(set(keys)),
                          "targets_touched": sorted({j.target for j in changed})}))
        ok_fraction = len(changed) / len(full) <= 1 / 16 and len(keys) == len(set(keys))
    print(json.dumps({"metric": "plan_seconds_10k_targets_x_20_candidates", "value": round(seconds, 3),
                      "target": 1.0, "ok": seconds < 1.0 and ok_fraction}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
