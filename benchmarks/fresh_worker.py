"""What keeping jobs off workers of an earlier stack costs a job, on a real local Ray.

The dispatcher gives a target's jobs its stack generation as a runtime_env variable, so Ray starts new
workers after a stack change and reuses them until the next one. Side by side, for the demo's
onnxruntime job and its torch job (torch imports in about 1.5 s here), each round times:
  warm        a job on a worker of the current generation that already ran one (the usual case)
  new stack   the first job after a stack change: a new worker process, its imports, then the job
  max_calls=1 the alternative of a fresh worker for every job (Ray's max_calls=1)
Then it counts the worker processes of earlier generations still alive (Ray reaps idle workers over
its soft limit, one per CPU).

Usage: python benchmarks/fresh_worker.py [--rounds N]
Last line: {"metric": "warm_job_ratio_with_stack_generations", "value": <median warm / warm without a
runtime_env>, "target": 1.1, "new_stack_extra_s": {...}, "max_calls_extra_s": {...}, "ok": ...}
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from examples.build import build  # noqa: E402
from runners.contracts import ArtifactSpec, CheckSpec, JobSpec, SuiteSpec  # noqa: E402
from scheduler.tasks import execute  # noqa: E402
from scheduler.generations import STACK_ENV  # noqa: E402

TARGET = "local-cpu"


def spec(demo: Path, candidate: str, runner: str) -> JobSpec:
    suite = SuiteSpec(name="digits", data=str(demo / "digits-eval.npz"), task="classification", slices=("scan",),
                      checks=(CheckSpec("max_drop", 0.03),), min_slice_size=50)
    return JobSpec(job_id=candidate, target=TARGET, model="digits-mlp", candidate=candidate,
                   baseline=ArtifactSpec(str(demo / "digits-fp32.onnx"), "onnxruntime"),
                   candidate_artifact=ArtifactSpec(str(demo / candidate), runner), suite=suite,
                   runner_options={"onnxruntime": {"intra_op_threads": 1}})


def workers_of(prefix: str) -> dict[str, int]:
    """Live processes per stack generation whose environment carries one of this run's generations."""
    out: dict[str, int] = {}
    needle = f"{STACK_ENV}={prefix}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        for var in environ.split(b"\0"):
            if var.startswith(needle):
                generation = var.split(b"=", 1)[1].decode()
                out[generation] = out.get(generation, 0) + 1
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    import ray

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    task = ray.remote(max_retries=0)(execute)
    once = ray.remote(max_retries=0, max_calls=1)(execute)
    prefix = f"bench{os.getpid()}-"
    with tempfile.TemporaryDirectory() as tmp:
        demo = Path(tmp)
        build(demo, llm=False)
        jobs = {"onnxruntime": spec(demo, "digits-int8-dynamic.onnx", "onnxruntime"),
                "torch": spec(demo, "digits-int8-dynamic.ts", "torch")}

        def timed(remote, job: JobSpec, env: dict | None) -> float:
            started = time.perf_counter()
            result = ray.get((remote.options(runtime_env=env) if env else remote).remote(job))
            assert result.status == "finished", result.error
            return time.perf_counter() - started

        times: dict[str, dict[str, list[float]]] = {k: {"plain": [], "warm": [], "new_stack": [], "max_calls": []}
                                                    for k in jobs}
        generation = 0
        for name, job in jobs.items():  # the max_calls=1 environment's first worker start is not timed
            timed(once, job, {"env_vars": {STACK_ENV: f"{prefix}once"}})
        for number in range(args.rounds):
            for name, job in (jobs.items() if number % 2 == 0 else reversed(jobs.items())):
                generation += 1
                env = {"env_vars": {STACK_ENV: f"{prefix}{generation}"}}
                timed(task, job, None)  # Ray may have reaped the idle plain worker meanwhile: warm it again
                times[name]["plain"].append(timed(task, job, None))  # no runtime_env at all, warm
                times[name]["new_stack"].append(timed(task, job, env))  # first job of a new generation
                times[name]["warm"].append(timed(task, job, env))  # the next one reuses its worker
                # max_calls=1 in an environment of its own, so that it never borrows another side's worker
                times[name]["max_calls"].append(timed(once, job, {"env_vars": {STACK_ENV: f"{prefix}once"}}))
        # Let Ray's reaper act (it runs every 200 ms and kills workers idle over 1 s above its soft limit).
        until, left = time.monotonic() + 10, workers_of(prefix)
        while time.monotonic() < until:
            time.sleep(0.5)
            left = workers_of(prefix)
        median = {name: {side: statistics.median(values) for side, values in sides.items()}
                  for name, sides in times.items()}
        for name, sides in median.items():
            print(f"{name:12} " + "  ".join(f"{side} {seconds * 1000:7.1f} ms" for side, seconds in sides.items()))
        print(f"generations run: {generation}; worker processes of them still alive after 10 s idle: "
              f"{sum(left.values())} (of generations {sorted(left, key=lambda g: int(g.rsplit('-', 1)[1]))})")
    ray.shutdown()
    ratio = max(statistics.median([w / p for w, p in zip(t["warm"], t["plain"])]) for t in times.values())
    print(json.dumps({"metric": "warm_job_ratio_with_stack_generations", "value": round(ratio, 3), "target": 1.1,
                      "new_stack_extra_s": {n: round(m["new_stack"] - m["warm"], 3) for n, m in median.items()},
                      "max_calls_extra_s": {n: round(m["max_calls"] - m["warm"], 3) for n, m in median.items()},
                      "old_workers_alive": sum(left.values()), "ok": ratio <= 1.1}))


if __name__ == "__main__":
    main()
