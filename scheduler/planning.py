"""Turn a validated config into JobSpecs: one per applicable (target, model, candidate, suite)."""

from __future__ import annotations

import hashlib
import json

from runners.contracts import ArtifactSpec, CheckSpec, JobSpec, SuiteSpec
from scheduler.config import LoadedConfig
from scheduler.config.schema import Suite


class SelectionError(ValueError):
    """A --target or --model that names nothing in the config."""


def suite_spec(loaded: LoadedConfig, name: str, suite: Suite) -> SuiteSpec:
    def specs(checks: dict[str, float] | None) -> tuple[CheckSpec, ...] | None:
        return None if checks is None else tuple(CheckSpec(k, float(v)) for k, v in checks.items())

    slice_checks = None
    if suite.slice_checks is not None:  # overrides on top of the aggregate checks
        slice_checks = specs({**suite.checks, **suite.slice_checks})
    return SuiteSpec(name=name, data=loaded.resolve(suite.data), task=suite.task, slices=tuple(suite.slices),
                     checks=specs(suite.checks), slice_checks=slice_checks, min_slice_size=suite.min_slice_size,
                     confidence=suite.confidence, insufficient_blocks_gate=suite.insufficient_blocks_gate,
                     output_kind=suite.output)


def job_id(*parts: object) -> str:
    """A stable id for the same work on the same inputs of the config."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def plan(loaded: LoadedConfig, target: str | None = None, model: str | None = None,
         trigger: str = "manual") -> list[JobSpec]:
    cfg = loaded.config
    if target is not None and target not in cfg.targets:
        raise SelectionError(f"--target {target!r}: no such target in {loaded.path} (have {sorted(cfg.targets)})")
    if model is not None and model not in cfg.models:
        raise SelectionError(f"--model {model!r}: no such model in {loaded.path} (have {sorted(cfg.models)})")
    jobs = []
    for model_name, m in cfg.models.items():
        if model is not None and model_name != model:
            continue
        baseline = ArtifactSpec(path=loaded.resolve(m.baseline.path), runner=m.baseline.runner)
        for target_name, t in cfg.targets.items():
            if (target is not None and target_name != target) or (m.targets is not None and target_name not in m.targets):
                continue
            for cand_name, cand in m.candidates.items():
                if not {m.baseline.runner, cand.runner} <= set(t.runners):
                    continue
                quantization = cand.quantization.model_dump(exclude_none=True)
                if cand.quantization.calibration_set:
                    quantization["calibration_set"] = loaded.resolve(cand.quantization.calibration_set)
                artifact = ArtifactSpec(path=loaded.resolve(cand.path), runner=cand.runner, quantization=quantization)
                for suite_name in m.suites:
                    suite = suite_spec(loaded, suite_name, cfg.suites[suite_name])
                    jobs.append(JobSpec(
                        job_id=job_id(target_name, model_name, cand_name, suite_name, loaded.hash),
                        target=target_name, model=model_name, candidate=cand_name, baseline=baseline,
                        candidate_artifact=artifact, suite=suite,
                        runner_options=t.options.model_dump(exclude_none=True),
                        batch_size=t.batch_size or cfg.batch_size, trigger=trigger, config_hash=loaded.hash))
    return jobs
