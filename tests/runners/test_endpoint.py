"""The openai runner against a real OpenAI-compatible server started here: `transformers serve`
with the demo LLM on CPU, on 127.0.0.1. What is served is validated against the local baseline;
a server that returns no logprobs leaves the step checks insufficient with the reason; a wrong
model name is bad input and an unreachable server an infrastructure error, both named."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from runners.backends.openai_endpoint import Endpoint, parse_completion
from runners.backends.base import ArtifactError
from runners.contracts import ArtifactSpec, CheckSpec, JobSpec, SuiteSpec
from runners.harness import run_job
from runners.families.generation.endpoint import coarse_kl

CHECKS = (CheckSpec("max_refusal_rate_delta", 0.25), CheckSpec("max_format_drop", 0.2),
          CheckSpec("max_exact_match_drop", 0.2), CheckSpec("min_token_agreement", 0.8),
          CheckSpec("min_step_top1_agreement", 0.95), CheckSpec("max_mean_step_kl", 0.02))
STEP_CHECKS = {"min_step_top1_agreement", "max_mean_step_kl"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(smollm2: Path, tmp_path_factory: pytest.TempPathFactory):
    """`transformers serve` pinned to the baseline folder; yields (base URL, served model name)."""
    pytest.importorskip("transformers", reason="the llm extra is not installed (pip install -e '.[llm]')")
    from transformers.utils.import_utils import is_serve_available

    if not is_serve_available():
        pytest.skip("transformers serve needs fastapi, uvicorn and openai (pip install -e '.[llm]')")
    model, port = str(smollm2 / "smollm2-fp32"), _free_port()
    tmp = tmp_path_factory.mktemp("serve")
    (tmp / "hub").mkdir()
    # One thread: on a busy 2-core machine a server spinning on two threads ran 3x slower per request.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp / "hub"), "TRANSFORMERS_VERBOSITY": "error",
           "OMP_NUM_THREADS": "1"}
    log = (tmp / "serve.log").open("w")
    process = subprocess.Popen([sys.executable, "-c", "from transformers.cli.transformers import main; main()",
                                "serve", model, "--host", "127.0.0.1", "--port", str(port), "--device", "cpu",
                                "--dtype", "float32"], stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    try:
        while True:  # ready once /health answers; the model is preloaded before the server listens
            if process.poll() is not None:
                pytest.fail(f"transformers serve exited with {process.returncode}: "
                            f"{(tmp / 'serve.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=5) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("transformers serve did not answer /health within 300 s")
            time.sleep(0.5)  # the interval between /health probes
        yield f"{base}/v1", model
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def descriptor(folder: Path, name: str, base_url: str, model: str, **options) -> str:
    path = folder / f"{name}.json"
    path.write_text(json.dumps({"base_url": base_url, "model": model, **options}))
    return str(path)


def suite(folder: Path, prompts: int = 4, max_new_tokens: int = 24) -> SuiteSpec:
    from examples import smollm2 as demo

    path = folder / "endpoint-prompts.jsonl"
    rows = demo.prompts(per_category=1)[:prompts]  # json, short answer, a request, long prose
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return SuiteSpec("llm-endpoint", str(path), "generation", ("category", "intent"), CHECKS, min_slice_size=1,
                     generation={"max_new_tokens": max_new_tokens, "stop": None, "curve_positions": [8, 16, 24]})


def job(folder: Path, baseline: ArtifactSpec, candidate_path: str, job_id: str, prompts: int = 4,
        max_new_tokens: int = 24) -> JobSpec:
    candidate = ArtifactSpec(candidate_path, "openai", {"method": "served", "weight_bits": 32})
    return JobSpec(job_id, "local", "smollm2", "served", baseline, candidate, suite(folder, prompts, max_new_tokens),
                   runner_options={"transformers": {"batch_size": 4}})


@pytest.fixture(scope="module")
def against_baseline(smollm2: Path, served, tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("endpoint")
    base_url, model = served
    baseline = ArtifactSpec(str(smollm2 / "smollm2-fp32"), "transformers")
    return run_job(job(folder, baseline, descriptor(folder, "served", base_url, model), "job-served"))


def test_the_served_baseline_matches_the_local_one_on_every_text_check(against_baseline) -> None:
    result = against_baseline
    assert result.status == "finished", result.error
    texts = [c for c in result.checks if c.check not in STEP_CHECKS]
    assert texts and all(c.verdict == "pass" for c in texts), [(c.check, c.value, c.verdict) for c in texts]
    agreement = next(c for c in texts if c.check == "min_token_agreement" and c.dimension == "all")
    assert agreement.candidate >= 0.8
    assert result.provenance["drift"]["units"] == "tokens (both texts re-encoded by the local tokenizer)"
    # The server wrapped every prompt in the same chat template as the local model did.
    assert result.provenance["prompt_token_mismatches"] == 0


def test_without_logprobs_the_step_checks_are_insufficient_with_the_reason(against_baseline) -> None:
    result = against_baseline
    steps = [c for c in result.checks if c.check in STEP_CHECKS]
    assert steps and all(c.verdict == "insufficient" and c.n == 0 for c in steps)
    assert all("returned no top logprobs" in c.statistic["reason"] for c in steps)
    assert result.verdict != "pass"  # never a pass on what was not measured
    assert result.provenance["step_comparison"]["method"] == "none"


def test_the_provenance_records_what_the_server_said(against_baseline, served) -> None:
    record = against_baseline.provenance["endpoint"]["candidate"]
    base_url, model = served
    assert record["base_url"] == base_url and record["model"] == model
    assert record["served_model"] and record["served_model"][0].startswith(model)  # "<path>@main"
    assert record["logprobs"] == "not returned"
    # What /v1/models answered, as the server answers it now (transformers 5.23 lists nothing, 5.24 the model).
    with urllib.request.urlopen(f"{base_url}/models", timeout=30) as answer:
        listed = json.loads(answer.read())
    assert record["models_listed"]["ids"] == [m["id"] for m in listed.get("data", [])]
    assert len(against_baseline.provenance["candidate"]["sha256"]) == 64  # the descriptor, hashed
    # The local baseline's outputs went through the node's baseline cache, under the transformers key.
    assert against_baseline.provenance["baseline_outputs"]["generated_by_job"] == "job-served"


def test_two_endpoints_compare_their_texts_word_by_word(served, tmp_path: Path) -> None:
    base_url, model = served
    spec = job(tmp_path, ArtifactSpec(descriptor(tmp_path, "a", base_url, model), "openai"),
               descriptor(tmp_path, "b", base_url, model, concurrency=2), "job-two", prompts=2, max_new_tokens=12)
    result = run_job(spec)
    assert result.status == "finished", result.error
    assert result.provenance["drift"]["units"] == "words (no tokenizer on either side)"
    steps = [c for c in result.checks if c.check in STEP_CHECKS]
    assert all(c.verdict == "insufficient" and "two endpoints" in c.statistic["reason"] for c in steps)
    agreement = next(c for c in result.checks if c.check == "min_token_agreement" and c.dimension == "all")
    assert agreement.verdict == "pass"


def test_a_model_the_server_does_not_serve_is_bad_input_naming_it(smollm2: Path, served, tmp_path: Path) -> None:
    base_url, _ = served
    spec = job(tmp_path, ArtifactSpec(str(smollm2 / "smollm2-fp32"), "transformers"),
               descriptor(tmp_path, "wrong", base_url, "no-such-model"), "job-wrong")
    result = run_job(spec)
    assert result.status == "error" and result.error_kind == "input"
    # Named either by the server's refusal (HTTP 400) or, where /v1/models lists what it serves, beforehand.
    assert "no-such-model" in result.error
    assert "HTTP 400" in result.error or f"is not served at {base_url}" in result.error


def test_an_unreachable_server_is_an_infrastructure_error(smollm2: Path, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_free_port()}/v1"  # nothing listens there
    spec = job(tmp_path, ArtifactSpec(str(smollm2 / "smollm2-fp32"), "transformers"),
               descriptor(tmp_path, "gone", url, "m", retries=1, backoff_seconds=0), "job-gone")
    result = run_job(spec)
    assert result.status == "error" and result.error_kind == "internal"
    assert url in result.error and "2 attempt(s)" in result.error


# -- the pieces that need no server ----------------------------------------------------------------
def test_the_top_k_kl_is_a_lower_bound_and_exact_over_the_whole_vocabulary() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        p, q = rng.dirichlet(np.full(50, 0.3)), rng.dirichlet(np.full(50, 0.3))
        full = float(np.sum(p * np.log(p / q)))
        top = np.argsort(-q)[:5]
        assert coarse_kl(p[top], q[top]) <= full + 1e-9
        assert abs(coarse_kl(p, q) - full) < 1e-9
    assert coarse_kl(np.array([0.5]), np.array([0.5])) == 0.0


def test_both_response_shapes_give_tokens_and_alternatives() -> None:
    # The shapes of OpenAI's API reference (chat: logprobs.content; completions: legacy lists).
    chat = {"model": "m", "usage": {"prompt_tokens": 7}, "choices": [{"finish_reason": "length", "message": {
        "content": "Hi there", "role": "assistant"}, "logprobs": {"content": [
            {"token": "Hi", "logprob": -0.1, "top_logprobs": [{"token": "Hi", "logprob": -0.1},
                                                              {"token": "Hello", "logprob": -2.5}]},
            {"token": " there", "logprob": -0.3, "top_logprobs": [{"token": " there", "logprob": -0.3}]}]}}]}
    parsed = parse_completion(chat, True, "here")
    assert parsed.tokens == ["Hi", " there"] and parsed.top[0] == {"Hi": -0.1, "Hello": -2.5}
    assert parsed.prompt_tokens == 7 and parsed.finish_reason == "length"
    legacy = {"choices": [{"text": "Hi there", "logprobs": {"tokens": ["Hi", " there"],
                                                           "token_logprobs": [-0.1, -0.3],
                                                           "top_logprobs": [{"Hi": -0.1}, {" there": -0.3}]}}]}
    assert parse_completion(legacy, False, "here").top == [{"Hi": -0.1}, {" there": -0.3}]
    assert parse_completion({"choices": [{"text": "x"}]}, False, "here").tokens is None
    with pytest.raises(ArtifactError, match="no choices"):
        parse_completion({"error": "x"}, True, "here")


def test_a_descriptor_with_an_unknown_key_or_no_model_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("base_url: http://127.0.0.1:1/v1\nmodel: m\ntemprature: 0\n")
    with pytest.raises(ArtifactError, match=r"bad.yaml: unknown key\(s\) \['temprature'\]"):
        Endpoint.load(bad)
    bad.write_text("base_url: http://127.0.0.1:1/v1\n")
    with pytest.raises(ArtifactError, match="model must be given"):
        Endpoint.load(bad)
    good = tmp_path / "good.yaml"
    good.write_text("base_url: http://127.0.0.1:1/v1/\nmodel: m\ntop_logprobs: 0\n")
    assert Endpoint.load(good).base_url == "http://127.0.0.1:1/v1" and Endpoint.load(good).top_logprobs == 0


def test_top_logprobs_of_the_same_model_give_zero_kl_and_full_top1_agreement(smollm2: Path) -> None:
    """The step comparison on real numbers: what a server serving the baseline itself would return
    (its own greedy tokens and top-5 logprobs, taken here from the local model) against the
    teacher-forced baseline."""
    pytest.importorskip("transformers", reason="the llm extra is not installed (pip install -e '.[llm]')")
    from runners.backends.openai_endpoint import Completion, EndpointClient
    from runners.backends.transformers_lm import CausalLM
    from runners.families.generation.endpoint import _Side, _steps, _Vocabulary

    with CausalLM(smollm2 / "smollm2-fp32", {}) as lm:
        ids = lm.encode_prompts(["What is the capital of France? Answer with one word."], True, None)
        made = lm.generate(ids, [12], 1)
        continuation = [int(i) for i in made.tokens[0][:made.lengths[0]] if int(i) != lm.eos_id]
        log_probs = lm.forced_log_probs(ids[0], np.array(continuation))
        vocabulary = _Vocabulary(lm.tokenizer)
        pieces = [vocabulary.piece(i) for i in continuation]
        top = [{vocabulary.piece(int(j)): float(log_probs[t, j]) for j in log_probs[t].topk(5).indices}
               for t in range(len(continuation))]
        local, endpoint = _Side("baseline", "transformers", "here"), _Side("candidate", "openai", "there")
        local.local = lm
        endpoint.client = EndpointClient(Endpoint(path="there", base_url="http://127.0.0.1:9/v1", model="m"))
        endpoint.completions = [Completion(text="".join(pieces), finish_reason="stop", prompt_tokens=len(ids[0]),
                                           model="m", tokens=pieces, top=top)]
        forced, method = _steps(local, endpoint, vocabulary, ids, local_is_baseline=True)
    assert len(forced.kl[0]) == len(continuation) > 2
    assert forced.kl[0].max() < 1e-5 and forced.top1[0].all()
    assert method["prompts_without_token_ids"] == 0 and "lower bound" in method["method"]


def test_a_local_job_reusing_the_endpoint_jobs_baseline_judges_exactly_as_a_fresh_one(
        against_baseline, smollm2: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The endpoint job's local baseline, cached with its recorded top-K: a local candidate's job
    that reuses it needs no teacher-forced pass of the baseline, and judges as if it had made it."""
    folder = Path(against_baseline.provenance["suite"]["data"]).parent
    recipe = "torchao-int8-weight-only"
    path = str(smollm2 / "smollm2-fp32")

    def local(job_id: str) -> JobSpec:
        return JobSpec(job_id, "local", "smollm2", recipe, ArtifactSpec(path, "transformers"),
                       ArtifactSpec(path, "transformers", {"method": "recipe", "weight_bits": 8, "recipe": recipe}),
                       suite(folder), runner_options={"transformers": {"batch_size": 4}})

    reused = run_job(local("job-local-reuse"))
    assert reused.status == "finished", reused.error
    assert reused.provenance["baseline_outputs"]["generated_by_job"] == "job-served"
    assert reused.provenance["step_comparison"]["baseline"].startswith("its generation's top 256")
    monkeypatch.setenv("REVALIDATOR_BASELINE_CACHE", "off")
    fresh = run_job(local("job-local-fresh"))
    assert fresh.status == "finished", fresh.error

    def judged(result) -> list:
        return [(c.check, c.dimension, c.value, c.n, c.baseline, c.candidate, c.verdict) for c in result.checks]
    assert judged(reused) == judged(fresh)
    assert any(c.check == "max_mean_step_kl" and c.n > 0 for c in fresh.checks)  # something was measured
