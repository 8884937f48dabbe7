"""LLM harness overhead: a real LLM job through the harness (baseline and candidate generation,
the candidate teacher-forced on the baseline's output, every check on every slice) against plain
`model.generate` of both models on the same prompts with the same token budgets, side by side.

Model: the demo's SmolLM2-135M-Instruct (float32 baseline) and its torchao int8 weight-only
candidate, on the demo's chat suite. `plain` is the script a user would write: torch and
transformers imported, both models loaded, prompts through the chat template, batched greedy
generation with the KV cache, outputs decoded; all of it timed, as the harness side times its
whole job (imports, stack probe, hashing, loading, generation, scoring, checks). Each side runs
in a fresh process with the baseline cache off (nothing reused between rounds or runs), rounds
alternate the order; `ratio` is the median over rounds of harness / plain; `memory_ratio` the
ratio of peak resident memory (ru_maxrss) of the two processes.

Usage: python benchmarks/llm_overhead.py [--rounds N] [--max-new-tokens N] [--demo DIR]
Last line: {"metric": ..., "value": ..., "target": ..., "ok": ...}
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TARGET, MEMORY_TARGET = 1.15, 1.2
RECIPE = "torchao-int8-weight-only"
BATCH = 8  # the plain script's batches: up to 8 prompts of one token budget (each budget's rows fit one)


def _prompts(demo: Path, max_new: int) -> tuple[list[str], list[int]]:
    from runners.families.generation.prompts import load_prompts

    prompts = load_prompts(demo / "smollm2-prompts.jsonl", ("category",))
    return [p.text for p in prompts.prompts], prompts.caps(max_new)


def plain(demo: Path, max_new: int) -> dict:
    """Both models generate every prompt, as a plain script does: imports, loading both models
    and generating, all timed (a script cannot skip them; the harness side times them too)."""
    started = time.perf_counter()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from runners.backends.recipes import apply_recipe

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    folder = str(demo / "smollm2-fp32")
    texts, caps = _prompts(demo, max_new)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = "left"
    models = [AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()]
    models.append(apply_recipe(RECIPE, AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()))
    rendered = chat_rendered(tokenizer, texts)
    tokens = sum(plain_generate(model, tokenizer, rendered, caps, BATCH) for model in models)
    return {"seconds": time.perf_counter() - started, "tokens": tokens}


def chat_rendered(tokenizer, texts: list[str]) -> list[str]:
    """Each prompt through the model's chat template, as a user turn."""
    return [tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False,
                                          add_generation_prompt=True) for t in texts]


def same_budget_batches(caps: list[int], batch_size: int) -> list[list[int]]:
    """Row indices in batches of one token budget each, in the prompts file's order: how a script
    batches for `generate`, which runs a batch until its longest row ends."""
    out: list[list[int]] = []
    for budget in sorted(set(caps)):
        rows = [r for r, cap in enumerate(caps) if cap == budget]
        out += [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]
    return out


def plain_generate(model, tokenizer, rendered: list[str], caps: list[int], batch_size: int) -> int:
    """A plain script's generation: left-padded batches of prompts with one token budget each,
    greedy `generate` with the KV cache, outputs decoded. Returns the tokens generated, counted as
    the harness counts them (up to and including the end of sequence). Shared with sweep_cost.py."""
    import torch

    tokens = 0
    for rows in same_budget_batches(caps, batch_size):
        batch = tokenizer([rendered[r] for r in rows], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(**batch, max_new_tokens=max(caps[r] for r in rows), do_sample=False,
                                 temperature=None, top_p=None, top_k=None, pad_token_id=tokenizer.eos_token_id)
        new = out[:, batch["input_ids"].shape[1]:]
        for row, r in zip(new.tolist(), rows):
            row = row[:caps[r]]
            tokens += row.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in row else len(row)
        tokenizer.batch_decode(new, skip_special_tokens=True)
    return tokens


def harness(demo: Path, max_new: int) -> dict:
    """The same comparison as a revalidator job: generation, teacher-forced scoring, every check."""
    started = time.perf_counter()
    from runners.contracts import ArtifactSpec, CheckSpec, JobSpec, SuiteSpec
    from runners.harness import run_job

    folder = str(demo / "smollm2-fp32")
    checks = (CheckSpec("max_refusal_rate_delta", 0.25), CheckSpec("max_format_drop", 0.2),
              CheckSpec("max_exact_match_drop", 0.2), CheckSpec("min_step_top1_agreement", 0.95),
              CheckSpec("max_mean_step_kl", 0.02), CheckSpec("min_token_agreement", 0.1))
    suite = SuiteSpec("llm-chat", str(demo / "smollm2-prompts.jsonl"), "generation", ("category", "intent"), checks,
                      min_slice_size=4, generation={"max_new_tokens": max_new, "stop": None})
    spec = JobSpec("bench", "local", "smollm2", RECIPE, ArtifactSpec(folder, "transformers"),
                   ArtifactSpec(folder, "transformers", {"method": "recipe", "weight_bits": 8, "recipe": RECIPE}),
                   suite, batch_size=1024)  # the transformers runner's own generation batches
    result = run_job(spec)
    seconds = time.perf_counter() - started
    assert result.status == "finished", result.error
    return {"seconds": seconds, "tokens": int(sum(result.provenance["generated_tokens"])),
            "verdict": result.verdict}


def _side(name: str, demo: Path, max_new: int) -> dict:
    """One side in a fresh process: its time, tokens and peak memory."""
    # No baseline outputs from the node's cache (runners/baseline_cache.py): a reuse would skip the
    # baseline's generation that the plain side pays for.
    env = {**os.environ, "REVALIDATOR_BASELINE_CACHE": "off"}
    done = subprocess.run([sys.executable, __file__, "--side", name, "--demo", str(demo),
                           "--max-new-tokens", str(max_new)], capture_output=True, text=True, cwd=REPO, env=env)
    if done.returncode != 0:
        raise SystemExit(f"side {name} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--demo", default=str(REPO / "demo"))
    parser.add_argument("--side", choices=("plain", "harness"))
    args = parser.parse_args()
    demo = Path(args.demo)
    if args.side:
        import logging
        import warnings

        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        logging.disable(logging.WARNING)
        warnings.simplefilter("ignore")
        out = (plain if args.side == "plain" else harness)(demo, args.max_new_tokens)
        out["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(out))
        return 0
    if not (demo / "smollm2-fp32").is_dir():
        from examples import smollm2

        smollm2.build(demo)
    rounds: list[dict[str, dict]] = []
    order = ["plain", "harness"]
    for _ in range(args.rounds):
        order.reverse()
        rounds.append({side: _side(side, demo, args.max_new_tokens) for side in order})
    ratios = sorted(r["harness"]["seconds"] / r["plain"]["seconds"] for r in rounds)
    memory = sorted(r["harness"]["max_rss_mb"] / r["plain"]["max_rss_mb"] for r in rounds)
    ratio, memory_ratio = ratios[len(ratios) // 2], memory[len(memory) // 2]
    for i, r in enumerate(rounds):
        for side in ("plain", "harness"):
            s = r[side]
            print(f"round {i + 1} {side:8} {s['seconds']:7.1f} s  {s['tokens'] / s['seconds']:6.1f} tokens/s  "
                  f"peak {s['max_rss_mb']:7.0f} MB")
    print(f"harness / plain: time {ratio:.3f} (target {TARGET}), peak memory {memory_ratio:.3f} (target {MEMORY_TARGET})")
    print(json.dumps({"metric": "llm_harness_over_plain_generate", "value": round(ratio, 3), "target": TARGET,
                      "memory_ratio": round(memory_ratio, 3), "memory_target": MEMORY_TARGET,
                      "ok": ratio <= TARGET and memory_ratio <= MEMORY_TARGET}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
