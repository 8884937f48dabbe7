"""The external family: evaluation harnesses as a suite, starting with lm-evaluation-harness.

A model's results come from a results file (the artifact path, runner "lm-eval"), or from
running the harness on the target: an argv list (never a shell) with "{model}" and "{output}"
substituted, under a timeout, after which the newest results JSON under the output folder is
read. Every task and subtask becomes a slice value of the dimension "task"; each metric
reported with a stderr is compared with the baseline's, and the stderrs of both feed a
two-sample z bound on the drop.
"""

from __future__ import annotations

import json
import math
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runners import catalogue as cat
from runners.backends import ArtifactError
from runners.contracts import ArtifactSpec, CheckResult, JobSpec, SuiteSpec
from runners.process import run_in_group
from runners.verdict import above, decide
from runners.datacheck import DataError

TASK_DIMENSION = "task"


@dataclass(frozen=True)
class Score:
    value: float
    stderr: float | None
    n: int | None
    higher_is_better: bool = True


def read_lm_eval(path: str | Path) -> dict[tuple[str, str], Score]:
    """(task, metric) -> Score from lm-eval's results JSON ("results", "n-samples", "higher_is_better").

    Metric keys are "<metric>,<filter>" (e.g. "acc,none"), their stderr "<metric>_stderr,<filter>";
    a filter other than "none" stays in the metric name."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read lm-eval results ({exc})") from exc
    results = doc.get("results") if isinstance(doc, dict) else None
    if not isinstance(results, dict) or not results:
        raise DataError(f"{path}: not an lm-eval results file (no \"results\" object)")
    samples, better = doc.get("n-samples") or {}, doc.get("higher_is_better") or {}
    scores = {}
    for task, metrics in results.items():
        if not isinstance(metrics, dict):
            raise DataError(f"{path}: results.{task} is not an object")
        n = (samples.get(task) or {}).get("effective")
        for key, value in metrics.items():
            # lm-eval 0.4 names every metric "<metric>,<filter>"; other keys ("alias", "name",
            # "sample_len", "samples") are bookkeeping.
            if "," not in key or "_stderr," in key or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            metric, _, filt = key.partition(",")
            stderr = metrics.get(f"{metric}_stderr,{filt}")  # a number, or "N/A" where lm-eval has none
            name = metric if filt in ("", "none") else f"{metric},{filt}"
            scores[(task, name)] = Score(float(value), float(stderr) if isinstance(stderr, (int, float)) else None,
                                         int(n) if isinstance(n, int) else None,
                                         bool((better.get(task) or {}).get(metric, True)))
    return scores


def run_command(argv: list[str], model: str, timeout: float) -> dict[tuple[str, str], Score]:
    """Run the harness for one model in a scratch folder; the scores in the newest results JSON it wrote."""
    with tempfile.TemporaryDirectory(prefix="revalidator-external-") as scratch:
        output = Path(scratch)
        args = [a.replace("{model}", model).replace("{output}", str(output)) for a in argv]
        try:
            done = run_in_group(args, timeout=timeout)  # a timeout ends the harness's own children too
        except FileNotFoundError as exc:
            raise ArtifactError(f"external command {args[0]!r} not found on this target") from exc
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"external command {args[0]!r} ran past its {timeout:g} s timeout") from exc
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise RuntimeError(f"external command {args[0]!r} exited {done.returncode}: {' | '.join(tail)}")
        found = sorted(output.rglob("*.json"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise RuntimeError(f"external command {args[0]!r} wrote no results JSON under {{output}}")
        return read_lm_eval(found[-1])


def results_for(artifact: ArtifactSpec, settings: dict[str, Any]) -> dict[tuple[str, str], Score]:
    if settings.get("command"):
        return run_command(list(settings["command"]), artifact.path, settings.get("timeout_seconds", 3600))
    if not Path(artifact.path).is_file():
        raise ArtifactError(f"{artifact.path}: results file not found")
    return read_lm_eval(artifact.path)


def _normal_sf(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2))


def compare(baseline: dict[tuple[str, str], Score], candidate: dict[tuple[str, str], Score], suite: SuiteSpec,
            metrics: tuple[str, ...] | None) -> list[CheckResult]:
    """max_drop per (task, metric): the candidate's drop in the metric's better direction."""
    missing = sorted(f"{t}/{m}" for t, m in baseline if (t, m) not in candidate and (not metrics or m in metrics))
    if missing:
        raise DataError(f"the candidate's results lack {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    results = []
    for (task, metric), base in sorted(baseline.items()):
        if metrics and metric not in metrics:
            continue
        cand = candidate[(task, metric)]
        drop = (base.value - cand.value) if base.higher_is_better else (cand.value - base.value)
        statistic: dict[str, float] = {"drop": drop}
        if base.stderr is not None and cand.stderr is not None:
            spread = math.hypot(base.stderr, cand.stderr)
            z = drop / spread if spread > 0 else 0.0
            statistic |= {"z": z, "p_drop": _normal_sf(z), "baseline_stderr": base.stderr,
                         "candidate_stderr": cand.stderr}
        n = base.n if base.n is not None else 0
        for check in suite.checks_for(TASK_DIMENSION):
            if check.name != cat.MAX_DROP.name:
                continue
            # Without a row count (n unknown) the slice size cannot be judged: decide on the figures.
            verdict = decide(n, suite.min_slice_size if base.n is not None else 0, above(drop, check.limit))
            results.append(CheckResult(check=check.name, dimension=TASK_DIMENSION, value=task, n=n,
                                       baseline=base.value, candidate=cand.value, delta=cand.value - base.value,
                                       tolerance=check.limit, verdict=verdict, statistic=dict(statistic),
                                       metric=metric))
    if not results:
        raise DataError(f"no metric to compare in the results (metrics selected: {list(metrics or []) or 'all'})")
    return results


def run(spec: JobSpec, provenance: dict[str, Any]) -> tuple[list[CheckResult], bytes]:
    """The family's entry (runners/families): both models' results compared; no row outputs (the
    harness reports scores, not rows)."""
    settings = spec.suite.external or {}
    scores = [results_for(a, settings) for a in (spec.baseline, spec.candidate_artifact)]
    return compare(*scores, spec.suite, tuple(settings.get("metrics") or ()) or None), b""
