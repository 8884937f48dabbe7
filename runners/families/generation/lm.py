"""Generative suites on causal LLMs (the transformers runner): both models generate greedily on
the same chat prompts with a KV cache, then the candidate is scored teacher-forced on the
baseline's output against the baseline's distribution as its generation recorded it, so the
per-step KL and top-1 agreement compare identical contexts at every position without keeping
full-vocabulary logits for every step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runners.backends.base import ArtifactError
from runners import rowoutputs
from runners.backends.lm_quantization import fill_declared, read_quantization
from runners.backends.recipes import recipe_record
from runners.baseline_cache import BaselineCache, baseline_key
from runners.families.generation.behaviour import ForcedSteps, drift
from runners.contracts import CheckResult, JobSpec
from runners.families.generation.greedy import Generation
from runners.families.generation.evaluate import GenerationSettings, judge_texts
from runners.families.generation.prompts import load_prompts

RUNNER = "transformers"
# Rows generated in one batch where a job names no batch size (the config schema's default too).
# Rows leave their batch as they end, so a wide batch costs memory (the KV cache), not wasted steps.
DEFAULT_BATCH_SIZE = 32


def batch_size(spec: JobSpec) -> int:
    return int(spec.runner_options.get(RUNNER, {}).get("batch_size") or DEFAULT_BATCH_SIZE)


def _options(spec: JobSpec, quantization: dict[str, Any]) -> dict[str, Any]:
    options = dict(spec.runner_options.get(RUNNER, {}))
    if quantization.get("recipe"):
        options["recipe"] = quantization["recipe"]
    return options


# The baseline's distribution is kept at every generated position as its top-K and the rest
# (runners/backends/transformers_lm.py): no second pass of the baseline over its own output.
RECORD_TOP = 256


def _arrays(made: Any) -> dict[str, Any]:
    steps = {k: getattr(made, k) for k in ("top_ids", "top_logp", "rest_logp") if getattr(made, k) is not None}
    return {"tokens": made.tokens, "lengths": made.lengths, **steps}


def _texts(model: Any, generation: Generation, stop: str | None) -> list[str]:
    out = []
    for row, length in zip(generation.tokens, generation.lengths):
        text = model.decode(row[:length])
        out.append(text.split(stop, 1)[0] if stop else text)
    return out


def run_lm_generation(spec: JobSpec, settings: GenerationSettings,
                      provenance: dict[str, Any]) -> tuple[list[CheckResult], dict[str, Any], dict[str, Any]]:
    """Checks, drift curves, and what the provenance should add (recipe, token counts, where the
    baseline's outputs came from)."""
    from runners.backends.transformers_lm import CausalLM, Continuations, compare_forced

    if {spec.baseline.runner, spec.candidate_artifact.runner} != {RUNNER}:
        raise ArtifactError(f"a generation suite compares two {RUNNER} models or two step models, not "
                            f"{spec.baseline.runner} with {spec.candidate_artifact.runner}")
    # What the candidate's files say of their quantization, read (and checked) before any loading.
    quantization = fill_declared(provenance["quantization"], read_quantization(spec.candidate_artifact.path),
                                 f"models.{spec.model}.candidates.{spec.candidate}.quantization")
    prompts = load_prompts(spec.suite.data, spec.suite.slices)
    texts = [p.text for p in prompts.prompts]
    batch = batch_size(spec)
    # A recipe candidate is the baseline's own folder: its tokenizer is the baseline's, loaded once.
    same_files = Path(spec.candidate_artifact.path).resolve() == Path(spec.baseline.path).resolve()
    # The baseline's weights load only if its outputs are not in the cache (lazy).
    with CausalLM(spec.baseline.path, _options(spec, {}), lazy=True) as base, \
            CausalLM(spec.candidate_artifact.path, _options(spec, spec.candidate_artifact.quantization),
                     base.tokenizer if same_files else None) as cand:
        ids = base.encode_prompts(texts, settings.chat_template, settings.system_prompt)
        if not same_files and cand.encode_prompts(texts, settings.chat_template, settings.system_prompt) != ids:
            raise ArtifactError(f"{spec.candidate_artifact.path}: its tokenizer or chat template encodes the prompts "
                                f"differently from the baseline's: the outputs would not be comparable")
        caps = prompts.caps(settings.max_new_tokens)
        # The baseline's generation is shared by the candidates of a sweep (runners/baseline_cache.py).
        key = baseline_key("lm_generation", spec, provenance, _options(spec, {}), batch, settings)
        arrays, source = BaselineCache.from_env().fetch(
            key, spec.job_id, lambda: _arrays(base.generate(ids, caps, batch, record_top=RECORD_TOP)))
        baseline_made = Continuations(arrays["tokens"], arrays["lengths"], arrays.get("top_ids"),
                                      arrays.get("top_logp"), arrays.get("rest_logp"))
        made = [baseline_made, cand.generate(ids, caps, batch)]
        forced = compare_forced(base, cand, ids, made[0])
        generations = [Generation(tokens=m.tokens, lengths=m.lengths, logits=None) for m in made]
        outputs = [_texts(base, g, settings.stop) for g in generations]
        baseline_loaded = base.loaded
    pair = drift(*generations, settings.curve_positions, ForcedSteps(forced.kl, forced.top1))
    checks, curves = judge_texts(outputs, pair, prompts, spec.suite, settings)
    curves["samples"] = [{"prompt": t[:200], "baseline": b[:400], "candidate": c[:400]}
                         for t, b, c in list(zip(texts, *outputs))[:3]]
    extra: dict[str, Any] = {"prompt_tokens": int(sum(len(i) for i in ids)),
                             "generated_tokens": [int(g.lengths.sum()) for g in generations],
                             "baseline_outputs": source, "quantization": quantization,
                             "step_comparison": {"candidate": "teacher-forced on the baseline's output",
                                                 "baseline": forced.baseline_from,
                                                 "baseline_model_loaded": baseline_loaded}}
    extra["_rows"] = rowoutputs.generation(generations[0].tokens, generations[0].lengths, generations[1].tokens,
                                           generations[1].lengths, {d: prompts.column(d) for d in spec.suite.slices})
    if spec.candidate_artifact.quantization.get("recipe"):
        extra["recipe"] = recipe_record(spec.candidate_artifact.quantization["recipe"])
    return checks, curves, extra
