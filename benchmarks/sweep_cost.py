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

LLM case (`--llm`, or `--llm-only` for it alone; minutes per round): the demo's SmolLM2-135M-Instruct
(built into --demo when absent) on the first `--llm-prompts` prompts of each of its chat suite's 4
categories at a budget of `--llm-max-new-tokens` (prompts with a lower budget of their own keep it).
Candidates are the recipes of runners/backends/recipes.py applied at load; there are 3, cycled to
make 8, each its own job with its own name. `sweep` as above (no `uncached` side: it would add a
baseline generation per job); `raw` is the plain script of benchmarks/llm_overhead.py for N + 1
models, loaded one at a time: chat template, batched greedy `generate` with the KV cache at the
same budgets and batches, outputs decoded. Both sides are warmed up once, cheaply (every recipe at
two new tokens), not by a full run each; tokens_raw and tokens_sweep count what each side generated.

One-shot validate: `revalidator validate --json` (`python -m scheduler.entry`, the executable's
entry) in a fresh process on the embedded default (targets.yaml over the demo artifacts, models
whose artifacts are absent left out), its wall time minus the sum of its jobs' own times (they run
one at a time on the one local target), on three sides in rotating order: `fresh` (a Ray of its
own), `own process` (the kept local Ray with no kept driver: every command in its own process, as
before the driver) and `kept driver` (run by the kept Ray's kept driver, scheduler/kept_driver.py;
the benchmark waits for it to listen once its Ray is up). Then the client's own cost: the median
wall time of `validate -h` served by the driver beside that of a bare `python -c pass`.

Usage: python benchmarks/sweep_cost.py [--rounds N] [--validate-runs N] [--validate-only | --llm-only]
       [--llm] [--llm-rounds N] [--llm-prompts N] [--llm-max-new-tokens N] [--demo DIR]
Last line: {"metric": ..., "value": ..., "target": ..., "llm_value": ..., "ok": ...}: "ok" when every part
that ran met its target (the classifier and the LLM at N = 8, the kept driver's validate fixed cost).
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
from runners.backends.recipes import RECIPES  # noqa: E402  (names only: torch is imported on use)
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


# The LLM case: the demo's SmolLM2-135M-Instruct and the recipes applied at load, cycled to make
# eight candidates (runners/backends/recipes.py has three), each its own job with its own name.
LLM_CASE = "smollm2-135m-recipes"
LLM_BATCH = 8  # the plain script's batches (llm_overhead.py); the harness uses the runner's default
# Sized for about 5 minutes per round of N = 1, 4, 8 on 2 quiet cores (estimated from llm_overhead's
# tokens/s, not measured): 8 prompts, two batches (16 and 48 new tokens) per model pass.
LLM_PER_CATEGORY, LLM_MAX_NEW = 2, 48
# llm-chat's checks in targets.yaml, and the recipes' declarations as its smollm2 candidates make them.
LLM_CHECKS = (CheckSpec("max_refusal_rate_delta", 0.25), CheckSpec("max_format_drop", 0.2),
              CheckSpec("max_exact_match_drop", 0.2), CheckSpec("min_step_top1_agreement", 0.95),
              CheckSpec("max_mean_step_kl", 0.02))
LLM_DECLARED = {"torchao-int8-weight-only": {"method": "weight-only-per-channel", "weight_bits": 8},
                "torchao-int4-weight-only-g32": {"method": "weight-only-per-group-32", "weight_bits": 4},
                "torch-dynamic-int8": {"method": "dynamic-per-tensor", "weight_bits": 8, "activation_bits": 8}}


def llm_prompts(demo: Path, per_category: int, out: Path) -> tuple[Path, int, int]:
    """The first `per_category` prompts of each category of the demo's chat suite, in file order;
    how many, and how many the smallest category kept (the suite's slice size floor)."""
    rows = [json.loads(line) for line in (demo / "smollm2-prompts.jsonl").read_text().splitlines() if line.strip()]
    categories = [row["category"] for row in rows]
    kept = [row for i, row in enumerate(rows) if categories[:i].count(row["category"]) < per_category]
    out.write_text("".join(json.dumps(row) + "\n" for row in kept))
    return out, len(kept), min(min(categories.count(c), per_category) for c in categories)


def llm_recipes(n: int) -> list[str]:
    return [list(RECIPES)[i % len(RECIPES)] for i in range(n)]


def llm_specs(folder: Path, prompts: Path, max_new: int, min_slice: int, n: int) -> list[JobSpec]:
    suite = SuiteSpec("llm-chat", str(prompts), "generation", ("category", "intent"), LLM_CHECKS,
                      min_slice_size=min_slice, generation={"max_new_tokens": max_new, "stop": None})
    baseline, specs = ArtifactSpec(str(folder), "transformers"), []
    for i, recipe in enumerate(llm_recipes(n)):
        declared = {**LLM_DECLARED.get(recipe, {"method": "recipe"}), "recipe": recipe}
        candidate = ArtifactSpec(str(folder), "transformers", declared)
        specs.append(JobSpec(f"llm-job-{i}", "local", "smollm2", f"{recipe}-{i}", baseline, candidate, suite))
    return specs


def llm_raw(folder: Path, recipes: list[str | None], prompts: Path, max_new: int) -> int:
    """A user's plain script for the given models (None: the float baseline), one loaded at a time:
    the prompts through the chat template, batched greedy `generate` with the KV cache at the
    suite's per-prompt budgets, outputs decoded (as benchmarks/llm_overhead.py's `plain`). Returns
    the tokens generated, counted as the harness counts them (up to and including the end of sequence)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from benchmarks.llm_overhead import chat_rendered, plain_generate
    from runners.backends.recipes import apply_recipe
    from runners.families.generation.prompts import load_prompts

    torch.set_num_threads(len(os.sched_getaffinity(0)))  # as the harness does
    loaded = load_prompts(prompts, ("category",))
    texts, caps = [p.text for p in loaded.prompts], loaded.caps(max_new)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    tokenizer.padding_side = "left"
    rendered = chat_rendered(tokenizer, texts)
    tokens = 0
    for recipe in recipes:
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
        model = apply_recipe(recipe, model) if recipe else model
        tokens += plain_generate(model, tokenizer, rendered, caps, LLM_BATCH)
        del model
    return tokens


def measure_llm(demo: Path, per_category: int, max_new: int, rounds: int, work: Path, cache: Path) -> list[dict]:
    """The LLM case, N = 1, 4, 8: `raw` (the N + 1 models' plain script) against `sweep` (run_job
    of each candidate from a cold baseline cache), after one cheap warm-up of both sides (every
    recipe at two new tokens: imports, first kernels, the page cache) instead of a full one each."""
    import logging
    import warnings

    from transformers.utils import logging as transformers_logging

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    transformers_logging.disable_progress_bar()  # the raw side's loads, as the harness quiets its own
    if not (demo / "smollm2-fp32").is_dir() or not (demo / "smollm2-prompts.jsonl").is_file():
        from examples import smollm2

        smollm2.build(demo)
    folder = demo / "smollm2-fp32"
    prompts, count, min_slice = llm_prompts(demo, per_category, work / "llm-prompts.jsonl")
    tiny = llm_prompts(demo, 1, work / "llm-warmup.jsonl")[0]
    llm_raw(folder, [None, *RECIPES], tiny, 2)  # 2: one decoding step on the KV cache
    sweep(llm_specs(folder, tiny, 2, 1, 1), cache)
    out = []
    for n in SIZES:
        specs, recipes = llm_specs(folder, prompts, max_new, min_slice, n), llm_recipes(n)
        last: dict[str, object] = {}
        times = time_sides({"raw": lambda: last.update(raw=llm_raw(folder, [None, *recipes], prompts, max_new)),
                            "sweep": lambda: last.update(sweep=sweep(specs, cache))}, rounds, warmup=False)
        results = last["sweep"]
        made = results[0].provenance["generated_tokens"][0] + sum(r.provenance["generated_tokens"][1] for r in results)
        out.append({"case": LLM_CASE, "prompts": count, "max_new_tokens": max_new, "candidates": n,
                    "recipes": recipes, "raw_s": round(min(times["raw"]), 2), "sweep_s": round(min(times["sweep"]), 2),
                    "ratio": round(paired_ratio(times, "sweep", "raw"), 3),
                    "baseline_reused_by": sum(r.provenance["baseline_outputs"]["reused"] for r in results),
                    "tokens_raw": last["raw"], "tokens_sweep": int(made)})
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


# The one-shot sides: a Ray of its own per command; the kept local Ray with each command in its own
# process (no kept driver: how every command ran before the driver); the kept Ray's kept driver.
VALIDATE_SIDES = {"fresh": {local_ray.MODE_ENV: "fresh"}, "own process": {local_ray.DRIVER_ENV: "off"},
                  "kept driver": {}}


def side_env(cache: Path, instances: Path, side: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), DIRECTORY_ENV: str(cache), local_ray.DIRECTORY_ENV: str(instances)}
    for name in ("RAY_ADDRESS", local_ray.MODE_ENV, local_ray.DRIVER_ENV):
        env.pop(name, None)
    return {**env, **VALIDATE_SIDES[side]}


def one_shot(config: Path, cache: Path, instances: Path, side: str) -> dict:
    """One `revalidator validate --json` process (the executable's entry) on one of VALIDATE_SIDES."""
    env = side_env(cache, instances, side)
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "scheduler.entry", "validate", "--json", "-c", str(config)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - started
    if proc.returncode not in (0, 1):
        raise SystemExit(f"validate exited {proc.returncode}: {proc.stderr[-2000:]}")
    doc = json.loads(proc.stdout)
    jobs = sum(r["finished_at"] - r["started_at"] for r in doc["runs"])
    return {"side": side, "ray": doc["ray_origin"], "wall_s": round(wall, 3), "jobs_s": round(jobs, 3),
            "fixed_s": round(wall - jobs, 3), "ray_startup_s": round(doc["ray_startup_seconds"], 3),
            "jobs": len(doc["runs"])}


def driver_ready(instances: Path, timeout: float = 180) -> float:
    """Seconds until the kept driver under `instances` listens (scheduler/kept_driver.py)."""
    started = time.perf_counter()
    while not list(instances.glob("driver-*/driver.json")):
        if time.perf_counter() - started > timeout:
            raise SystemExit(f"no kept driver came up in {instances} within {timeout:g} s")
        time.sleep(0.1)
    return time.perf_counter() - started


def client_cost(cache: Path, instances: Path, runs: int = 10) -> dict:
    """Medians of a bare Python start and of `validate -h` served by the kept driver: the client's
    own cost (Python start, the entry's imports, the round trip) plus argparse's help."""
    env = side_env(cache, instances, "kept driver")
    times: dict[str, list[float]] = {"python_s": [], "served_help_s": []}
    for _ in range(runs):
        for key, argv in (("python_s", ["-c", "pass"]), ("served_help_s", ["-m", "scheduler.entry", "validate", "-h"])):
            started = time.perf_counter()
            subprocess.run([sys.executable, *argv], cwd=REPO, env=env, capture_output=True, check=True, timeout=60)
            times[key].append(time.perf_counter() - started)
    served = "validate -h: exit 0" in "".join(p.read_text() for p in instances.glob("*/driver.log"))
    return {**{k: round(median(v), 4) for k, v in times.items()}, "served": served}


def validate_runs(work: Path, runs: int) -> tuple[list[dict], dict]:
    """Each kept side's first run starts its kept Ray (and, once it ends, the kept driver), then `runs`
    rounds of the three sides in rotating order, so that all see the same load."""
    config, instances = embedded_default(work / "default"), work / "instances"
    out = []
    try:
        for side in ("own process", "kept driver"):
            out.append(one_shot(config, work / "default-cache", instances, side))
            print(json.dumps({"validate": out[-1]}), flush=True)
        print(json.dumps({"kept_driver_ready_after_s": round(driver_ready(instances), 2)}), flush=True)
        sides = list(VALIDATE_SIDES)
        for i in range(runs):
            for side in sides[i % 3:] + sides[:i % 3]:
                out.append(one_shot(config, work / "default-cache", instances, side))
                print(json.dumps({"validate": out[-1]}), flush=True)
        client = client_cost(work / "default-cache", instances)
        print(json.dumps({"client": client}), flush=True)
    finally:
        for directory, _ in local_ray.instances(instances):
            local_ray.stop(directory)
    return out, client


def median(values: list[float]) -> float | None:
    values = sorted(values)
    return values[len(values) // 2] if values else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--validate-runs", type=int, default=3, help="0: no one-shot validate runs")
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--validate-only", action="store_true", help="skip the sweeps")
    only.add_argument("--llm-only", action="store_true", help="only the LLM case (no classifier cases, no validate)")
    parser.add_argument("--llm", action="store_true", help="also run the LLM case (minutes per round)")
    parser.add_argument("--llm-rounds", type=int, help="rounds of the LLM case (default: --rounds)")
    parser.add_argument("--llm-prompts", type=int, default=LLM_PER_CATEGORY,
                        help="the first N prompts of each of the chat suite's 4 categories")
    parser.add_argument("--llm-max-new-tokens", type=int, default=LLM_MAX_NEW,
                        help="the suite's token budget (prompts with a lower one of their own keep it)")
    parser.add_argument("--demo", default=str(REPO / "demo"), help="holds smollm2-fp32 (built there when absent)")
    args = parser.parse_args()
    if min(args.rounds, args.llm_prompts, args.llm_max_new_tokens, args.llm_rounds or 1) < 1 or args.validate_runs < 0:
        parser.error("--rounds, --llm-rounds, --llm-prompts and --llm-max-new-tokens must be at least 1, "
                     "--validate-runs at least 0")
    classifier, llm = not (args.validate_only or args.llm_only), args.llm or args.llm_only
    validate = not args.llm_only and args.validate_runs > 0
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cache = work / "cache"
        os.environ[DIRECTORY_ENV] = str(cache)
        cache.mkdir()
        cases, runs, client = [], [], {}
        if classifier:
            heavy = heavy_case(work)
            demo = demo_case(work / "digits")
            cases = measure("mlp-12m-10k", *heavy, candidates(heavy[0], work, "heavy"), args.rounds, cache)
            cases += measure("digits-mlp-demo", *demo, candidates(demo[0], work, "digits"), args.rounds, cache)
        if llm:
            cases += measure_llm(Path(args.demo), args.llm_prompts, args.llm_max_new_tokens,
                                 args.llm_rounds or args.rounds, work, cache)
        if validate:
            runs, client = validate_runs(work, args.validate_runs)

    def at8(case: str) -> float | None:
        return next((c["ratio"] for c in cases if c["case"] == case and c["candidates"] == 8), None)

    def fixed(side: str, ray: str) -> float | None:
        return median([r["fixed_s"] for r in runs if r["side"] == side and r["ray"] == ray])

    heavy8, llm8 = at8("mlp-12m-10k"), at8(LLM_CASE)
    served = fixed("kept driver", "shared, kept driver")  # the runs the kept driver ran
    met = [heavy8 is not None and heavy8 <= SWEEP_TARGET] if classifier else []
    met += [llm8 is not None and llm8 <= SWEEP_TARGET] if llm else []
    met += [served is not None and served <= VALIDATE_TARGET] if validate else []
    print(json.dumps({"metric": "sweep_over_raw_8_candidates", "value": heavy8, "target": SWEEP_TARGET,
                      "llm_value": llm8, "validate_fixed_seconds": served,
                      "validate_fixed_seconds_own_process": fixed("own process", "shared, reused"),
                      "validate_fixed_seconds_fresh_ray": fixed("fresh", "embedded"),
                      "validate_client_seconds": client.get("served_help_s") if validate else None,
                      "validate_target": VALIDATE_TARGET, "ok": bool(met) and all(met)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
