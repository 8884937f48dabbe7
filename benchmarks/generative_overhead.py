"""Generative harness overhead: both step models through the generative harness (greedy
generation with per-step log-probabilities kept, then refusal, format, exact-match, drift and
step-KL checks on every slice) against plain greedy generation of both models on the same
prompts, measured side by side.

`plain` is what a hand-written script does: one onnxruntime session per model, every running
prompt batched into one call per step, argmax, stop at the newline. Each round runs both sides
once, in alternating order; `ratio` is the median over rounds of harness / plain.

Usage: python benchmarks/generative_overhead.py [--repeats N]
Last line: {"metric": ..., "value": ..., "target": ..., "ok": ...}
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.sides import paired_ratio, time_sides  # noqa: E402
from runners.contracts import ArtifactSpec, CheckSpec, JobSpec, SuiteSpec  # noqa: E402
from runners.families.generation.evaluate import run_generation  # noqa: E402

TARGET = 1.15
CONTEXT, MAX_NEW = 32, 384
CHECKS = (CheckSpec("max_refusal_rate_delta", 0.05), CheckSpec("max_format_drop", 0.05),
          CheckSpec("max_exact_match_drop", 0.05), CheckSpec("min_token_agreement", 0.6),
          CheckSpec("max_mean_step_kl", 0.05))


def plain_generation(model: str, prompts: list[str], vocab: list[str]) -> list[str]:
    import onnxruntime as ort

    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    index = {ch: i for i, ch in enumerate(vocab)}
    stop = index["\n"]
    seq = np.zeros((len(prompts), CONTEXT + MAX_NEW), np.int64)
    for row, text in enumerate(prompts):
        ids = [index[ch] for ch in text][-CONTEXT:]
        seq[row, CONTEXT - len(ids):CONTEXT] = ids
    running = np.arange(len(prompts))
    for t in range(MAX_NEW):
        if not len(running):
            break
        logits = session.run(None, {"tokens": seq[running, t:t + CONTEXT]})[0]
        chosen = logits.argmax(axis=1)
        seq[running, CONTEXT + t] = chosen
        running = running[chosen != stop]
    return ["".join(vocab[i] for i in row[CONTEXT:]).split("\n")[0] for row in seq]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    from examples.charlm import build

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        build(work)
        prompts = [json.loads(line)["prompt"] for line in (work / "charlm-prompts.jsonl").read_text().splitlines()]
        vocab = json.loads((work / "charlm-vocab.json").read_text())["tokens"]
        base, cand = str(work / "charlm-fp32.onnx"), str(work / "charlm-w5.onnx")
        suite = SuiteSpec("chat", str(work / "charlm-prompts.jsonl"), "generation", ("category", "intent"), CHECKS,
                          min_slice_size=20, generation={"tokenizer": str(work / "charlm-vocab.json"),
                                                         "context": CONTEXT, "max_new_tokens": MAX_NEW})
        spec = JobSpec("bench", "local", "charlm", "w5", ArtifactSpec(base, "onnxruntime"),
                       ArtifactSpec(cand, "onnxruntime"), suite, batch_size=1024)
        sides = {"plain": lambda: [plain_generation(m, prompts, vocab) for m in (base, cand)],
                 "harness": lambda: run_generation(spec, {})}  # no provenance: no stack key, so nothing cached
        times = time_sides(sides, args.repeats)
    ratio = paired_ratio(times, "harness", "plain")
    print(json.dumps({"case": "charlm-240-prompts-384-tokens", "prompts": len(prompts),
                      "plain_s": round(min(times["plain"]), 4), "harness_s": round(min(times["harness"]), 4),
                      "ratio": round(ratio, 3),
                      "best_ratio": round(min(times["harness"]) / min(times["plain"]), 3)}))
    print(json.dumps({"metric": "generative_harness_overhead_ratio", "value": round(ratio, 3), "target": TARGET,
                      "ok": ratio <= TARGET}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
