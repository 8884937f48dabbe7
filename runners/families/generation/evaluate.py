"""The generation family's job: both models generate greedily on the same prompts, then every
behaviour check is judged on the aggregate and on every slice value.

Two kinds of model: step models (onnxruntime or torch: the last `context` tokens in, next-token
logits out, with a character vocabulary file), and causal LLMs through transformers (KV cache,
the model's own tokenizer and chat template, a teacher-forced pass for the per-step comparison)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from runners import catalogue as cat
from runners import rowoutputs
from runners.backends import ArtifactError, make_runner
from runners.baseline_cache import BaselineCache, baseline_key
from runners.contracts import ArtifactSpec, CheckResult, JobSpec, SuiteSpec
from runners.datacheck import DataError, check_slice_values
from runners.decision import Policy, attach_evidence
from runners.families.generation.behaviour import (DEFAULT_CURVE_POSITIONS, DEFAULT_REFUSAL_PATTERNS, Drift,
                                                   ModelScores, divergence_quantiles, drift, judge_generation,
                                                   prompt_ratios, score, slice_behaviour)
from runners.families.generation.greedy import Generation, apply_caps, greedy_generate
from runners.families.generation.prompts import CharTokenizer, PromptSet, load_prompts


LM_RUNNERS = frozenset({"transformers"})


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int
    tokenizer: str | None = None  # step models: the character vocabulary file
    context: int | None = None  # step models: the token window
    stop: str | None = "\n"  # step models: the stop token; LLMs: a string that ends the text (EOS always does)
    input: str | None = None  # the model input that takes the token window; None: its only input
    refusal_patterns: tuple[str, ...] = DEFAULT_REFUSAL_PATTERNS
    curve_positions: tuple[int, ...] = DEFAULT_CURVE_POSITIONS
    chat_template: bool = True  # LLMs: wrap each prompt in the model's chat template
    system_prompt: str | None = None  # LLMs: a system message before each prompt

    @classmethod
    def of(cls, suite: SuiteSpec) -> "GenerationSettings":
        if not suite.generation:
            raise DataError(f"suite {suite.name!r}: a generation suite needs its generation settings")
        settings = dict(suite.generation)
        for key in ("refusal_patterns", "curve_positions"):
            if settings.get(key) is None:
                settings.pop(key, None)
            else:
                settings[key] = tuple(settings[key])
        return cls(**settings)


@dataclass
class GenerativeInputs:
    prompts: PromptSet
    tokenizer: CharTokenizer
    prompt_ids: list[list[int]]


def load_inputs(suite: SuiteSpec, settings: GenerationSettings) -> GenerativeInputs:
    prompts = load_prompts(suite.data, suite.slices)
    if settings.tokenizer is None or settings.context is None or settings.stop is None:
        raise DataError(f"suite {suite.name!r}: step models need generation.tokenizer, context and stop")
    tokenizer = CharTokenizer.load(settings.tokenizer)
    if settings.stop not in tokenizer.tokens:
        raise DataError(f"{settings.tokenizer}: the stop token {settings.stop!r} is not in the vocabulary")
    ids = [tokenizer.encode(p.text, f"{suite.data}: prompt {i + 1}") for i, p in enumerate(prompts.prompts)]
    return GenerativeInputs(prompts, tokenizer, ids)


def generate(artifact: ArtifactSpec, options: dict[str, Any], inputs: GenerativeInputs,
             settings: GenerationSettings, batch_size: int) -> Generation:
    """Load one step model, generate every prompt greedily, release it."""
    with make_runner(artifact.runner, artifact.path, options) as runner:
        names = runner.input_names
        name = settings.input or (names[0] if len(names) == 1 else None)
        if name is None or name not in names:
            raise ArtifactError(f"{artifact.path}: generation needs one token input (set generation.input); "
                                f"the model takes {names}")
        stop_id = inputs.tokenizer.token_id(settings.stop)
        made = greedy_generate(lambda window: runner.infer({name: window}), inputs.prompt_ids,
                               context=settings.context, max_new_tokens=settings.max_new_tokens,
                               stop_id=stop_id, pad_id=inputs.tokenizer.pad_id, batch_size=batch_size)
    caps = inputs.prompts.caps(settings.max_new_tokens)
    return made if min(caps) >= settings.max_new_tokens else apply_caps(made, caps, stop_id)


def texts(generation: Generation, tokenizer: CharTokenizer, stop: str) -> list[str]:
    stop_id = tokenizer.token_id(stop)
    out = []
    for row, length in zip(generation.tokens, generation.lengths):
        ids = row[:length]
        out.append(tokenizer.decode(ids[:-1] if len(ids) and ids[-1] == stop_id else ids))
    return out


def judge_generations(baseline: Generation, candidate: Generation, inputs: GenerativeInputs,
                      suite: SuiteSpec, settings: GenerationSettings) -> tuple[list[CheckResult], dict[str, Any]]:
    """Every check on the aggregate and every slice value, and the drift curves per slice."""
    outputs = [texts(g, inputs.tokenizer, settings.stop) for g in (baseline, candidate)]
    return judge_texts(outputs, drift(baseline, candidate, settings.curve_positions), inputs.prompts, suite, settings)


def _prompt_magnitudes(pair: Drift, prompts: PromptSet, slices: tuple[str, ...]):
    """The per-prompt numerator and denominator of a ratio check on its slice, for the bootstrap."""
    ratios = prompt_ratios(pair, len(prompts.prompts))
    columns = {d: np.array(prompts.column(d)) for d in slices}

    def of(check: CheckResult) -> tuple[np.ndarray, np.ndarray, str] | None:
        declared = cat.get(check.check)
        if declared.bound != "prompts":
            return None
        rows = slice(None) if check.dimension == "all" else columns[check.dimension] == check.value
        numerator, denominator = ratios[check.check]
        return numerator[rows], denominator[rows], "above" if declared.upper else "below"
    return of


def judge_texts(outputs: list[list[str]], pair: Drift, prompts: PromptSet, suite: SuiteSpec,
                settings: GenerationSettings) -> tuple[list[CheckResult], dict[str, Any]]:
    """The checks and drift curves from both models' texts and their token-level comparison."""
    check_slice_values(suite.data, {d: np.array(prompts.column(d)) for d in suite.slices}, suite.max_slice_values)
    scores: list[ModelScores] = [score(t, prompts, settings.refusal_patterns) for t in outputs]
    groups = slice_behaviour(prompts, suite.slices, *scores, pair)
    aggregate_counts = groups[("all", "all")].flags
    for check in suite.checks:
        flag = cat.get(check.name).subset
        if flag and aggregate_counts[flag][0] == 0:
            what = "an expected \"format\"" if flag == "format" else "a \"reference\""
            raise DataError(f"{suite.data}: check {check.name} needs prompts with {what}, and none has one")
    results = []
    for (dimension, value), group in groups.items():
        for check in suite.checks_for(dimension):
            judged = judge_generation(check, dimension, value, group, suite.min_slice_size, suite.confidence)
            if judged is not None:
                results.append(judged)
    attach_evidence(results, Policy.of(suite), _prompt_magnitudes(pair, prompts, suite.slices))
    curves = {"positions": list(pair.positions), "slices": [
        {"dimension": d, "value": v, "n": g.n, "agreement": [round(g.curve[p], 6) for p in pair.positions],
         "identical": round(g.identical / max(g.n, 1), 6),
         "mean_step_kl": round(g.kl_sum / g.kl_steps, 8) if g.kl_steps else None,
         "first_divergence": divergence_quantiles(g.first_divergence)}
        for (d, v), g in groups.items()]}
    return results, curves


def run_generation(spec: JobSpec, provenance: dict[str, Any]) -> tuple[list[CheckResult], dict[str, Any]]:
    """Both models generate on the same prompts; the checks and the drift curves."""
    settings = GenerationSettings.of(spec.suite)
    runners = {spec.baseline.runner, spec.candidate_artifact.runner}
    if "openai" in runners:  # an OpenAI-compatible endpoint on either side
        from runners.families.generation.endpoint import run_endpoint_generation

        checks, curves, extra = run_endpoint_generation(spec, settings, provenance)
        provenance.update(extra)
        return checks, curves
    if runners & LM_RUNNERS:
        from runners.families.generation.lm import run_lm_generation

        checks, curves, extra = run_lm_generation(spec, settings, provenance)
        provenance.update(extra)
        return checks, curves
    inputs = load_inputs(spec.suite, settings)
    generations = [baseline_generation(spec, inputs, settings, provenance),
                   generate(spec.candidate_artifact, spec.runner_options.get(spec.candidate_artifact.runner, {}),
                            inputs, settings, spec.batch_size)]
    provenance["_rows"] = rowoutputs.generation(generations[0].tokens, generations[0].lengths,
                                                generations[1].tokens, generations[1].lengths,
                                                {d: inputs.prompts.column(d) for d in spec.suite.slices})
    return judge_generations(*generations, inputs, spec.suite, settings)


def baseline_generation(spec: JobSpec, inputs: GenerativeInputs, settings: GenerationSettings,
                        provenance: dict[str, Any]) -> Generation:
    """The baseline step model's generation (its step logits included), made once per key and shared
    by the candidates of a sweep (runners/baseline_cache.py); where it came from goes into the provenance."""
    options = spec.runner_options.get(spec.baseline.runner, {})
    # The vocabulary file's content is part of the key: the settings name only its path.
    made_of = baseline_key("step_generation", spec, provenance, options, spec.batch_size,
                           (settings, provenance.get("suite", {}).get("tokenizer_sha256")))

    def compute() -> dict[str, np.ndarray]:
        made = generate(spec.baseline, options, inputs, settings, spec.batch_size)
        arrays = {"tokens": made.tokens, "lengths": made.lengths}
        return arrays if made.logits is None else {**arrays, "logits": made.logits}

    arrays, provenance["baseline_outputs"] = BaselineCache.from_env().fetch(made_of, spec.job_id, compute)
    return Generation(tokens=arrays["tokens"], lengths=arrays["lengths"], logits=arrays.get("logits"))


def run(spec: JobSpec, provenance: dict[str, Any]) -> tuple[list[CheckResult], bytes]:
    """The family's entry (runners/families): the checks, and the run's row outputs; the drift
    curves go into the provenance."""
    checks, provenance["drift"] = run_generation(spec, provenance)
    return checks, provenance.pop("_rows", b"")
