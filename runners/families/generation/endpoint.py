"""Generative suites where one model (or both) is an OpenAI-compatible endpoint: validate what a
serving stack returns against the kept baseline (a local transformers model), or one endpoint
against another.

Texts are judged by the same behaviour checks as local models. The token comparison uses the
server's own tokens where it returns logprobs, else both texts re-encoded with the local model's
tokenizer (or split into words between two endpoints); the provenance says which.

The per-step checks need the server's top logprobs and a local model: the local model is scored
teacher-forced on the endpoint's own output, and at every step the two distributions are compared
over the endpoint's top-k tokens plus one bucket for the rest of the vocabulary. Merging outcomes
can only lower a KL divergence, so that KL is a lower bound on the full one, labelled as a top-k
approximation; top-1 agreement (the endpoint's greedy token against the local model's argmax) is
exact. Without logprobs, or between two endpoints, those checks are insufficient, with the reason.
"""

from __future__ import annotations

import re
from contextlib import ExitStack
from functools import cached_property
from typing import Any

import numpy as np

from runners import catalogue as cat
from runners.backends.base import ArtifactError
from runners.backends.openai_endpoint import Completion, Endpoint, EndpointClient
from runners.families.generation.behaviour import ForcedSteps, drift
from runners.contracts import CheckResult, JobSpec
from runners.families.generation.greedy import Generation
from runners.families.generation.evaluate import GenerationSettings, judge_texts
from runners.families.generation.prompts import load_prompts

RUNNER = "openai"
STEP_CHECKS = (cat.MAX_MEAN_STEP_KL.name, cat.MIN_STEP_TOP1_AGREEMENT.name)
_WORD = re.compile(r"\w+|\s+|[^\w\s]")


def coarse_kl(p_top: np.ndarray, q_top: np.ndarray) -> float:
    """KL(P || Q) over the given outcomes plus one bucket for everything else: a lower bound on
    KL(P || Q) over the full vocabulary (the log-sum inequality). `p_top`, `q_top`: probabilities of
    the same tokens under each distribution."""
    p_rest, q_rest = max(1.0 - float(p_top.sum()), 0.0), max(1.0 - float(q_top.sum()), 1e-12)
    p, q = np.append(p_top, p_rest), np.maximum(np.append(q_top, q_rest), 1e-30)
    keep = p > 0
    return max(float(np.sum(p[keep] * (np.log(p[keep]) - np.log(q[keep])))), 0.0)


class _Vocabulary:
    """A local tokenizer's single-token texts, to name an endpoint's token strings by id."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    @cached_property
    def ids(self) -> dict[str, int]:
        """Each single-token text -> its id (built on first use: one decode per vocabulary entry)."""
        ids: dict[str, int] = {}
        ambiguous: set[str] = set()
        for i in range(len(self.tokenizer)):
            piece = self.piece(i)
            if piece in ids:
                ambiguous.add(piece)
            ids.setdefault(piece, i)
        for piece in ambiguous:  # several ids print the same (partial bytes): none is named
            del ids[piece]
        return ids

    def piece(self, token_id: int) -> str:
        return self.tokenizer.decode([int(token_id)], clean_up_tokenization_spaces=False)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def ids_of(self, text: str, tokens: list[str]) -> list[int] | None:
        """The ids of an endpoint's token strings: the text re-encoded when that gives the same
        tokens, else each string looked up; None when some token has no unique id here."""
        encoded = self.encode(text)
        if [self.piece(i) for i in encoded] == tokens:
            return encoded
        ids = [self.ids.get(t) for t in tokens]
        return None if any(i is None for i in ids) else ids  # type: ignore[misc]


class _Side:
    """One model of the pair: a local transformers model or an endpoint, with its outputs."""

    def __init__(self, role: str, runner: str, path: str) -> None:
        self.role, self.runner, self.path = role, runner, path
        self.local: Any = None  # CausalLM
        self.client: EndpointClient | None = None
        self.completions: list[Completion] = []
        self.generated: Any = None  # Continuations (local)
        self.texts: list[str] = []
        self.info: dict[str, Any] = {}

    @property
    def tokens_returned(self) -> bool:
        return bool(self.completions) and all(c.tokens is not None for c in self.completions)

    @property
    def top_returned(self) -> bool:
        return bool(self.completions) and all(c.top is not None for c in self.completions)


def _local_options(spec: JobSpec, quantization: dict[str, Any]) -> dict[str, Any]:
    from runners.families.generation.lm import _options

    return _options(spec, quantization)


def _local_generate(spec: JobSpec, side: _Side, ids: list[list[int]], caps: list[int], settings: GenerationSettings,
                    provenance: dict[str, Any]) -> dict[str, Any] | None:
    """Generate with the local model; a baseline's outputs come from (and go to) the node's baseline
    cache under the transformers family's key, so endpoint and local candidates share them. Returns
    the cache's provenance record for a baseline."""
    from runners.backends.transformers_lm import Continuations
    from runners.baseline_cache import BaselineCache, baseline_key
    from runners.families.generation.lm import RECORD_TOP, _arrays, _texts, batch_size

    batch = batch_size(spec)
    record = None
    if side.role == "baseline":
        key = baseline_key("lm_generation", spec, provenance, _local_options(spec, {}), batch, settings)
        made = side.local.generate
        # With its recorded top-K, as the transformers family keeps it under the same key: a local
        # candidate's job that reuses this entry needs no teacher-forced pass of the baseline.
        arrays, record = BaselineCache.from_env().fetch(
            key, spec.job_id, lambda: _arrays(made(ids, caps, batch, record_top=RECORD_TOP)))
        side.generated = Continuations(arrays["tokens"], arrays["lengths"])
    else:
        side.generated = side.local.generate(ids, caps, batch)
    made_ = Generation(tokens=side.generated.tokens, lengths=side.generated.lengths, logits=None)
    side.texts = _texts(side.local, made_, settings.stop)
    return record


def _local_pieces(side: _Side, vocabulary: _Vocabulary, row: int) -> list[str]:
    """The local output's tokens as text pieces, without the end-of-sequence token, up to the stop."""
    length = int(side.generated.lengths[row])
    ids = [int(i) for i in side.generated.tokens[row][:length] if int(i) != side.local.eos_id]
    pieces, size, text = [], 0, side.texts[row]
    for i in ids:
        if size >= len(text):
            break
        piece = vocabulary.piece(i)
        pieces.append(piece)
        size += len(piece)
    return pieces


def _units(pair: tuple[_Side, _Side], vocabulary: _Vocabulary | None,
           ) -> tuple[list[list[str]], list[list[str]], str]:
    """Both outputs as comparable units, and their name; the server's tokens where both sides have them."""
    local = [s for s in pair if s.local is not None]
    endpoints = [s for s in pair if s.client is not None]
    if all(s.tokens_returned for s in endpoints) and (vocabulary is not None or not local):
        def units(side: _Side) -> list[list[str]]:
            if side.client is not None:
                return [list(c.tokens or []) for c in side.completions]
            return [_local_pieces(side, vocabulary, r) for r in range(len(side.texts))]  # type: ignore[arg-type]
        return units(pair[0]), units(pair[1]), "tokens (the server's)"
    if vocabulary is not None:
        a, b = ([[vocabulary.piece(i) for i in vocabulary.encode(t)] for t in s.texts] for s in pair)
        return a, b, "tokens (both texts re-encoded by the local tokenizer)"
    a, b = ([_WORD.findall(t) for t in s.texts] for s in pair)
    return a, b, "words (no tokenizer on either side)"


def _as_generation(rows: list[list[str]], codes: dict[str, int], width: int) -> Generation:
    tokens = np.full((len(rows), width), -1, dtype=np.int64)
    for r, row in enumerate(rows):
        tokens[r, :len(row)] = [codes.setdefault(u, len(codes)) for u in row]
    return Generation(tokens=tokens, lengths=np.array([len(r) for r in rows], dtype=np.int32), logits=None)


def _steps(local: _Side, endpoint: _Side, vocabulary: _Vocabulary, prompt_ids: list[list[int]],
           local_is_baseline: bool) -> tuple[ForcedSteps, dict[str, Any]]:
    """The local model teacher-forced on each endpoint output; KL(baseline || candidate) over the
    endpoint's top-k tokens (plus the rest) and top-1 agreement, step by step."""
    import torch

    kl_rows, top1_rows, unnamed, tokens_dropped = [], [], 0, 0
    for prompt, completion in zip(prompt_ids, endpoint.completions):
        ids = vocabulary.ids_of(completion.text, completion.tokens or []) if completion.tokens else []
        if ids and len(completion.top or []) != len(ids):  # a step without its alternatives: unmeasured, not 0
            ids = None
        if not ids:
            unnamed += ids is None
            kl_rows.append(np.zeros(0))
            top1_rows.append(np.zeros(0, bool))
            continue
        log_probs = local.local.forced_log_probs(prompt, np.array(ids, dtype=np.int64)).cpu()
        argmax = log_probs.argmax(dim=-1).numpy()
        kl, top1 = np.zeros(len(ids)), argmax == np.array(ids)
        for t, top in enumerate(completion.top or []):
            named = [(vocabulary.ids.get(token), lp) for token, lp in top.items()]
            tokens_dropped += sum(i is None for i, _ in named)
            named = [(i, lp) for i, lp in named if i is not None]
            index = torch.tensor([i for i, _ in named], dtype=torch.long)
            at_local = log_probs[t, index].exp().double().numpy() if len(named) else np.zeros(0)
            at_endpoint = np.exp(np.array([lp for _, lp in named], dtype=np.float64))
            kl[t] = coarse_kl(at_local, at_endpoint) if local_is_baseline else coarse_kl(at_endpoint, at_local)
        kl_rows.append(kl)
        top1_rows.append(top1)
    k = endpoint.client.endpoint.top_logprobs if endpoint.client else 0
    method = {"method": f"top-{k} approximation: the local {local.role} teacher-forced on the endpoint's own "
                        f"output; KL({'baseline' if local_is_baseline else 'endpoint'} || "
                        f"{'endpoint' if local_is_baseline else 'baseline'}) over the endpoint's top-{k} tokens "
                        f"plus one bucket for the rest: a lower bound on the full-vocabulary KL; top-1 agreement "
                        f"exact (the endpoint's greedy token against the local argmax)",
              # their steps are left out, never counted as agreeing
              "prompts_without_token_ids": unnamed, "alternatives_without_token_ids": tokens_dropped}
    return ForcedSteps(kl_rows, top1_rows), method


def _step_reason(pair: tuple[_Side, _Side]) -> str | None:
    endpoints = [s for s in pair if s.client is not None]
    if len(endpoints) == 2:
        return "two endpoints: no local model to score teacher-forced, so no step comparison over the same contexts"
    endpoint = endpoints[0]
    if endpoint.client and endpoint.client.logprobs_refused:
        return f"the endpoint {endpoint.client.endpoint.base_url} refused the logprobs request"
    if endpoint.client and endpoint.client.endpoint.top_logprobs == 0:
        return "top_logprobs is 0 in the endpoint descriptor: no step distributions asked for"
    if not endpoint.top_returned:
        return f"the endpoint {endpoint.client.endpoint.base_url} returned no top logprobs"  # type: ignore[union-attr]
    return None


def _endpoint_record(side: _Side) -> dict[str, Any]:
    endpoint = side.client.endpoint  # type: ignore[union-attr]
    served = sorted({c.model for c in side.completions if c.model})
    fingerprints = sorted({c.system_fingerprint for c in side.completions if c.system_fingerprint})
    return {"base_url": endpoint.base_url, "model": endpoint.model, "served_model": served,
            "system_fingerprint": fingerprints, "models_listed": side.info,
            "logprobs": ("refused" if side.client.logprobs_refused else  # type: ignore[union-attr]
                         f"top-{endpoint.top_logprobs} returned" if side.top_returned else
                         "tokens returned, no alternatives" if side.tokens_returned else "not returned"),
            "finish_reasons": sorted({str(c.finish_reason) for c in side.completions}),
            "seed": endpoint.seed, "concurrency": endpoint.concurrency}


def run_endpoint_generation(spec: JobSpec, settings: GenerationSettings, provenance: dict[str, Any],
                            ) -> tuple[list[CheckResult], dict[str, Any], dict[str, Any]]:
    """Checks, drift curves and what the provenance should add, for a pair with an endpoint."""
    runners = (spec.baseline.runner, spec.candidate_artifact.runner)
    if RUNNER not in runners or not set(runners) <= {RUNNER, "transformers"}:
        raise ArtifactError(f"an endpoint is compared with a transformers model or another endpoint, not "
                            f"{runners[0]} with {runners[1]}")
    prompts = load_prompts(spec.suite.data, spec.suite.slices)
    texts = [p.text for p in prompts.prompts]
    caps = prompts.caps(settings.max_new_tokens)
    pair = (_Side("baseline", spec.baseline.runner, spec.baseline.path),
            _Side("candidate", spec.candidate_artifact.runner, spec.candidate_artifact.path))
    extra: dict[str, Any] = {}
    # Endpoints first: an unreachable server fails the job before a model is loaded.
    for side in pair:
        if side.runner == RUNNER:
            side.client = EndpointClient(Endpoint.load(side.path))
            side.info = side.client.models()
            side.completions = side.client.complete(texts, caps, settings.chat_template, settings.system_prompt,
                                                    settings.stop)
            side.texts = [c.text.split(settings.stop, 1)[0] if settings.stop else c.text for c in side.completions]
    with ExitStack() as stack:
        from runners.backends.transformers_lm import CausalLM

        local = next((s for s in pair if s.runner == "transformers"), None)
        vocabulary, prompt_ids, forced, step_method = None, None, None, None
        if local is not None:
            quantization = spec.candidate_artifact.quantization if local.role == "candidate" else {}
            local.local = stack.enter_context(CausalLM(local.path, _local_options(spec, quantization)))
            prompt_ids = local.local.encode_prompts(texts, settings.chat_template, settings.system_prompt)
            record = _local_generate(spec, local, prompt_ids, caps, settings, provenance)
            if record is not None:
                extra["baseline_outputs"] = record
            vocabulary = _Vocabulary(local.local.tokenizer)
            endpoint = next(s for s in pair if s.client is not None)
            sizes = [c.prompt_tokens for c in endpoint.completions]
            extra["prompt_token_mismatches"] = sum(1 for s, i in zip(sizes, prompt_ids) if s is not None and s != len(i))
            if endpoint.top_returned:
                forced, step_method = _steps(local, endpoint, vocabulary, prompt_ids, local.role == "baseline")
        baseline_units, candidate_units, units = _units(pair, vocabulary)
    codes: dict[str, int] = {}
    width = max([len(r) for r in baseline_units + candidate_units] + [1])
    generations = [_as_generation(rows, codes, width) for rows in (baseline_units, candidate_units)]
    drifted = drift(*generations, settings.curve_positions, forced)
    checks, curves = judge_texts([pair[0].texts, pair[1].texts], drifted, prompts, spec.suite, settings)
    reason = _step_reason(pair)
    for check in checks:
        if check.check in STEP_CHECKS:
            if reason is not None:
                check.statistic = {**check.statistic, "reason": reason}
            elif step_method is not None:
                check.statistic = {**check.statistic, "approximation": f"top-{pair_k(pair)}"}
    curves["units"] = units
    curves["samples"] = [{"prompt": t[:200], "baseline": b[:400], "candidate": c[:400]}
                         for t, b, c in list(zip(texts, pair[0].texts, pair[1].texts))[:3]]
    extra["endpoint"] = {s.role: _endpoint_record(s) for s in pair if s.client is not None}
    extra["step_comparison"] = step_method or {"method": "none", "reason": reason}
    extra["generated_units"] = [int(g.lengths.sum()) for g in generations]
    return checks, curves, extra


def pair_k(pair: tuple[_Side, _Side]) -> int:
    return next(s.client.endpoint.top_logprobs for s in pair if s.client is not None)
