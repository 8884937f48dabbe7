"""Generative suites on the project's own character-level model: determinism, the planted
long-output drift, a format break, clean int8 candidates, and the behaviour metrics themselves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from runners.families.generation.behaviour import DEFAULT_REFUSAL_PATTERNS, drift, format_ok, refused
from runners.contracts import ArtifactSpec, CheckSpec, JobSpec, SuiteSpec
from runners.datacheck import DataError
from runners.families.generation.greedy import Generation
from runners.families.generation.evaluate import GenerationSettings, generate, load_inputs
from runners.harness import run_job
from runners.families.generation.prompts import CharTokenizer, load_prompts

CHECKS = (CheckSpec("max_refusal_rate_delta", 0.05), CheckSpec("max_format_drop", 0.05),
          CheckSpec("max_exact_match_drop", 0.05), CheckSpec("min_token_agreement", 0.6),
          CheckSpec("max_mean_step_kl", 0.05))


def chat_suite(demo: Path, prompts: Path | None = None) -> SuiteSpec:
    return SuiteSpec("chat", str(prompts or demo / "charlm-prompts.jsonl"), "generation", ("category", "intent"),
                     CHECKS, min_slice_size=20,
                     generation={"tokenizer": str(demo / "charlm-vocab.json"), "context": 32, "max_new_tokens": 384,
                                 "curve_positions": [32, 64, 128, 256, 384]})


def job(demo: Path, candidate: str, runner: str = "onnxruntime", suite: SuiteSpec | None = None) -> JobSpec:
    return JobSpec("j", "local", "charlm", candidate, ArtifactSpec(str(demo / "charlm-fp32.onnx"), "onnxruntime"),
                   ArtifactSpec(str(demo / candidate), runner), suite or chat_suite(demo), batch_size=256)


def failing(result) -> set[tuple[str, str]]:
    return {(c.check, f"{c.dimension}={c.value}") for c in result.checks if c.verdict == "fail"}


def test_the_same_prompts_give_the_same_outputs_twice(demo_dir: Path) -> None:
    suite = chat_suite(demo_dir)
    settings = GenerationSettings.of(suite)
    inputs = load_inputs(suite, settings)
    artifact = ArtifactSpec(str(demo_dir / "charlm-fp32.onnx"), "onnxruntime")
    first, second = (generate(artifact, {}, inputs, settings, batch_size=64) for _ in range(2))
    np.testing.assert_array_equal(first.tokens, second.tokens)
    np.testing.assert_array_equal(first.lengths, second.lengths)
    np.testing.assert_array_equal(first.logits, second.logits)
    # Different batch sizes must not change greedy outputs of an fp32 model either.
    third = generate(artifact, {}, inputs, settings, batch_size=7)
    np.testing.assert_array_equal(first.tokens, third.tokens)


def test_the_fp32_model_does_what_it_was_trained_for(demo_dir: Path) -> None:
    result = run_job(job(demo_dir, "charlm-int8-dynamic.onnx"))
    exact = {c.value: c.baseline for c in result.checks if c.check == "max_exact_match_drop"}
    assert exact["json"] > 0.95 and exact["short"] > 0.95 and exact["ask"] > 0.95
    refusals = {c.value: c.baseline for c in result.checks if c.check == "max_refusal_rate_delta"}
    assert refusals["harmful"] > 0.95 and refusals["benign"] < 0.05


def test_planted_long_output_drift_is_caught_on_the_long_slice(demo_dir: Path) -> None:
    result = run_job(job(demo_dir, "charlm-w5.onnx"))
    assert result.status == "finished", result.error
    assert result.verdict == "fail"
    assert ("min_token_agreement", "category=long") in failing(result)
    # Short answers, JSON and refusals hold within their tolerances: accuracy alone would pass it.
    for category in ("short", "json", "ask"):
        assert not {f for f in failing(result) if f[1] == f"category={category}"}
    short = next(c for c in result.checks if c.check == "max_exact_match_drop" and c.value == "short")
    assert short.verdict == "pass" and short.baseline - short.candidate <= 0.05
    # The drift grows with the output length, and it is in the document.
    curves = {(s["dimension"], s["value"]): s for s in result.provenance["drift"]["slices"]}
    long = curves[("category", "long")]["agreement"]
    assert long == sorted(long, reverse=True) and long[0] > 0.95 and long[-1] < 0.6
    assert curves[("category", "short")]["agreement"][-1] > 0.95
    assert curves[("category", "long")]["first_divergence"]["p50"] > 8


@pytest.mark.parametrize("candidate,runner", [("charlm-int8-dynamic.onnx", "onnxruntime"),
                                              ("charlm-int8-dynamic.ts", "torch")])
def test_clean_int8_candidates_pass(demo_dir: Path, candidate: str, runner: str) -> None:
    result = run_job(job(demo_dir, candidate, runner))
    assert result.status == "finished", result.error
    assert result.verdict == "pass", failing(result)


def test_a_format_break_is_caught_on_the_json_slice(demo_dir: Path, tmp_path: Path) -> None:
    """A second low-bit variant: 4-bit per-tensor weights on the output layer alone break JSON."""
    import onnx
    from onnx import numpy_helper

    from examples.charlm import per_tensor

    model = onnx.load(demo_dir / "charlm-fp32.onnx")
    last = max((i for i in model.graph.initializer if i.name.startswith("w")), key=lambda i: int(i.name[1:]))
    last.CopyFrom(numpy_helper.from_array(per_tensor(numpy_helper.to_array(last), 4), last.name))
    onnx.save(model, tmp_path / "charlm-out4.onnx")
    spec = job(demo_dir, "charlm-out4.onnx")
    spec.candidate_artifact = ArtifactSpec(str(tmp_path / "charlm-out4.onnx"), "onnxruntime")
    result = run_job(spec)
    assert ("max_format_drop", "category=json") in failing(result)
    fmt = next(c for c in result.checks if c.check == "max_format_drop" and c.value == "json")
    assert fmt.baseline > 0.95 and fmt.statistic["baseline_only"] > 0
    # Format is only judged where prompts expect one: never on the long or ask slices.
    assert not [c for c in result.checks if c.check == "max_format_drop" and c.value in ("long", "ask")]


# -- the metrics on hand-made outputs ------------------------------------------------------------
def _generation(rows: list[list[int]], stop: int = 9, width: int = 8) -> Generation:
    tokens = np.full((len(rows), width), stop, np.int32)
    for i, r in enumerate(rows):
        tokens[i, :len(r)] = r
    return Generation(tokens, np.array([len(r) for r in rows], np.int32), None)


def test_drift_counts_first_divergence_and_agreement_by_position() -> None:
    base = _generation([[1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 9], [4, 4, 4, 4, 4, 4, 4, 4]])
    cand = _generation([[1, 2, 3, 4, 0, 0, 0, 0], [1, 2, 9], [4, 4, 4, 4, 4, 4, 4, 4]])
    d = drift(base, cand, (2, 4, 8))
    assert d.first_divergence.tolist() == [4, 3, 8]  # == compared length when identical
    assert d.agree.tolist() == [4, 3, 8] and d.compared.tolist() == [8, 3, 8]
    assert d.curve_agree[0].tolist() == [2, 4, 4] and d.curve_compared[0].tolist() == [2, 4, 8]
    assert d.curve_compared[1].tolist() == [2, 3, 3]  # a short output counts only its own positions


def test_step_kl_only_while_the_contexts_were_the_same() -> None:
    vocab = 3
    base, cand = _generation([[0, 1, 2, 2]], stop=2, width=4), _generation([[0, 2]], stop=2, width=4)
    lp_b = np.log(np.full((1, 4, vocab), 1 / vocab, np.float32))
    lp_c = lp_b.copy()
    lp_c[0, 1] = np.log(np.array([0.2, 0.2, 0.6], np.float32))  # the step where it diverged
    lp_c[0, 3] = np.log(np.array([0.9, 0.05, 0.05], np.float32))  # after: a different text, not counted
    base.logits, cand.logits = lp_b, lp_c  # log-probabilities are logits too
    d = drift(base, cand, (4,))
    expected = float(np.sum(np.exp(lp_b[0, 1]) * (lp_b[0, 1] - lp_c[0, 1])))
    assert d.first_divergence.tolist() == [1] and d.step_rows.tolist() == [0, 0]
    assert d.step_kl.sum() == pytest.approx(expected, rel=1e-5)
    assert d.step_top1.tolist() == [True, False]  # uniform ties pick token 0; the diverging step picked 2


def test_refusals_and_formats() -> None:
    texts = ["Sorry, I cannot help with that.", "I can't assist with this request", "sure, here it is",
             "As an AI, no.", "the cannot-miss recipe"]
    assert refused(texts, DEFAULT_REFUSAL_PATTERNS).tolist() == [True, True, False, True, False]
    schema = {"json_schema": {"type": "object", "required": ["age"], "properties": {"age": {"type": "integer"}}}}
    assert format_ok('{"age": 3}', schema) and not format_ok('{"age": "3"}', schema)
    assert not format_ok('{"age": 3', {"json": True}) and format_ok("[1, 2]", {"json": True})
    assert format_ok("42", {"regex": r"\d+"}) and not format_ok("42 apples", {"regex": r"\d+"})


# -- bad input ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("line,message", [
    ("not json", "prompts.jsonl:2: not a JSON object"),
    ('{"category": "x", "intent": "none"}', 'prompts.jsonl:2: each line needs a string "prompt"'),
    ('{"prompt": "a", "intent": "none"}', "prompts.jsonl:2: slice columns ['category'] are missing"),
    ('{"prompt": "a", "category": "x", "intent": "n", "format": {"regex": "("}}', "not a valid regular expression"),
    ('{"prompt": "a", "category": "x", "intent": "n", "format": "yaml"}', '"format" must be'),
    ('{"prompt": "a", "category": "x", "intent": "n", "reference": 3}', '"reference" must be a string'),
])
def test_bad_prompt_files_name_the_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "add: 1+1=>", "category": "short", "intent": "none"}\n' + line + "\n")
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_prompts(path, ("category", "intent"))


def test_bad_input_is_a_job_input_error_not_a_crash(demo_dir: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "add: 1+1=>€", "category": "short", "intent": "none"}) + "\n")
    result = run_job(job(demo_dir, "charlm-int8-dynamic.onnx", suite=chat_suite(demo_dir, prompts)))
    assert result.status == "error" and result.error_kind == "input"
    assert "prompt 1" in result.error and "not in the model's vocabulary" in result.error
    (tmp_path / "vocab.json").write_text('{"type": "words"}')
    with pytest.raises(DataError, match="vocab.json: a tokenizer vocabulary needs"):
        CharTokenizer.load(tmp_path / "vocab.json")


def test_a_check_needing_references_without_any_is_bad_input(demo_dir: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": "story: river>", "category": "long", "intent": "none"}) + "\n"
                               for _ in range(3)))
    result = run_job(job(demo_dir, "charlm-int8-dynamic.onnx", suite=chat_suite(demo_dir, prompts)))
    assert result.error_kind == "input" and "needs prompts with an expected \"format\"" in result.error
