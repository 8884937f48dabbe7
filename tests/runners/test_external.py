"""lm-evaluation-harness results as a suite: every task and subtask a slice, the reported
stderrs feeding the bound, results read from files or produced by a command on the target.

The fixtures follow lm-eval 0.4's results JSON (results, groups, group_subtasks, n-samples,
higher_is_better, "<metric>,<filter>" keys with "_stderr" companions, "N/A" stderrs)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from runners.contracts import ArtifactSpec, CheckSpec, JobSpec, SuiteSpec
from runners.datacheck import DataError
from runners.families.external.lm_eval import read_lm_eval
from runners.harness import run_job

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "lm_eval"
BASE, CAND = FIXTURES / "results_fp16.json", FIXTURES / "results_awq_int4.json"


def suite(drop: float = 0.03, **external) -> SuiteSpec:
    return SuiteSpec("lm-eval", None, "external", ("task",), (CheckSpec("max_drop", drop),), min_slice_size=50,
                     external={"format": "lm-eval", **external})


def job(baseline: str, candidate: str, s: SuiteSpec) -> JobSpec:
    return JobSpec("j", "gpu-a", "llm", "awq-int4", ArtifactSpec(baseline, "lm-eval"),
                   ArtifactSpec(candidate, "lm-eval", {"method": "awq", "weight_bits": 4}), s)


def test_reads_every_task_metric_and_filter() -> None:
    scores = read_lm_eval(BASE)
    assert scores[("arc_easy", "acc")].value == 0.7643 and scores[("arc_easy", "acc")].stderr == 0.0097
    assert scores[("arc_easy", "acc")].n == 2376
    assert ("gsm8k", "exact_match,strict-match") in scores and ("gsm8k", "exact_match,flexible-extract") in scores
    assert scores[("mmlu_abstract_algebra", "acc")].n == 100
    ppl = scores[("wikitext", "word_perplexity")]
    assert ppl.stderr is None and ppl.higher_is_better is False  # "N/A" stderr; lower is better
    assert not [k for k in scores if k[1] in ("alias", "name", "sample_len")]


def test_a_subtask_regression_is_caught_on_its_slice() -> None:
    result = run_job(job(str(BASE), str(CAND), suite(metrics=["acc"])))
    assert result.status == "finished", result.error
    failed = {(c.check, c.metric, c.value) for c in result.checks if c.verdict == "fail"}
    assert failed == {("max_drop", "acc", "mmlu_abstract_algebra")}
    assert all(c.batch_size is None for c in result.checks)
    algebra = next(c for c in result.checks if c.value == "mmlu_abstract_algebra")
    assert algebra.statistic["drop"] == pytest.approx(0.09)
    assert algebra.statistic["z"] == pytest.approx(0.09 / (2 ** 0.5 * 0.0461), rel=1e-6)
    assert 0 < algebra.statistic["p_drop"] < 0.1
    assert result.verdict == "fail"


def test_lower_is_better_metrics_count_a_rise_as_the_drop() -> None:
    result = run_job(job(str(BASE), str(CAND), suite(drop=0.1, metrics=["word_perplexity"])))
    (ppl,) = result.checks
    assert (ppl.check, ppl.metric, ppl.value) == ("max_drop", "word_perplexity", "wikitext")
    assert ppl.statistic["drop"] == pytest.approx(0.13) and "z" not in ppl.statistic  # "N/A" stderr: no bound
    assert ppl.verdict == "fail"


def test_results_from_a_command_on_the_target(tmp_path: Path) -> None:
    """The harness runs as an argv list (no shell), writes its results under {output}."""
    script = tmp_path / "fake_lm_eval.py"
    script.write_text(
        "import json, shutil, sys, pathlib\n"
        "model, out = sys.argv[1], pathlib.Path(sys.argv[2])\n"
        "(out / 'model').mkdir(parents=True)\n"
        "shutil.copy(model, out / 'model' / 'results_2026-11-29T10-00-00.json')\n")
    command = [sys.executable, str(script), "{model}", "{output}"]
    result = run_job(job(str(BASE), str(CAND), suite(metrics=["acc"], command=command, timeout_seconds=60)))
    assert result.status == "finished", result.error
    assert {c.value for c in result.checks if c.verdict == "fail"} == {"mmlu_abstract_algebra"}


def test_a_command_past_its_timeout_is_an_error(tmp_path: Path) -> None:
    command = [sys.executable, "-c", "import time; time.sleep(30)", "{model}"]
    result = run_job(job(str(BASE), str(CAND), suite(command=command, timeout_seconds=0.5)))
    assert result.status == "error" and "timeout" in result.error


def test_bad_results_files_are_input_errors(tmp_path: Path) -> None:
    bad = tmp_path / "results.json"
    bad.write_text(json.dumps({"config": {}}))
    result = run_job(job(str(BASE), str(bad), suite()))
    assert result.error_kind == "input" and "not an lm-eval results file" in result.error
    partial = json.loads(CAND.read_text())
    del partial["results"]["arc_easy"]
    bad.write_text(json.dumps(partial))
    result = run_job(job(str(BASE), str(bad), suite()))
    assert result.error_kind == "input" and "arc_easy/acc" in result.error
    with pytest.raises(DataError, match="cannot read lm-eval results"):
        read_lm_eval(tmp_path / "missing.json")
