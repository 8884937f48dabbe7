"""Turn events into JobSpecs: which (target, model, candidate, suite) to run, and whether it
already ran.

A job's key hashes everything its result depends on: the part of the target's stack
fingerprint that can affect its runners, the artifact and calibration set hashes, the suite
data hash and the check configuration. A key that already has a result (or is queued) is
not planned again unless forced. Keys are built from per-target and per-candidate parts
computed once per planning pass, so a pass over 10^5 jobs costs one small hash per job.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

from runners.contracts import ArtifactSpec, CheckSpec, JobSpec, SuiteSpec
from runners.hashing import sha256_path
from scheduler.config import LoadedConfig
from scheduler.config.schema import Suite, Target
from scheduler.events import ConfigChanged, Event, Manual, Plan, Scheduled, StackChanged
from scheduler.impact import affects, relevant_components


class SelectionError(ValueError):
    """A --target or --model that names nothing in the config."""


def _digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


class FileHasher:
    """sha256 of files, cached by (path, size, mtime): a poll does not re-read unchanged artifacts."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[tuple[int, int], str]] = {}

    def __call__(self, path: str) -> str:
        try:
            stat = os.stat(path)
        except OSError:
            return "missing"
        stamp = (stat.st_size, stat.st_mtime_ns)
        cached = self._cache.get(path)
        if cached and cached[0] == stamp:
            return cached[1]
        try:
            digest = sha256_path(path) or "missing"
        except OSError as exc:  # unreadable now: planned anyway, and the job reports it (never a crash here)
            return f"unreadable: {exc.strerror or exc}"
        self._cache[path] = (stamp, digest)
        return digest


def suite_spec(loaded: LoadedConfig, name: str, suite: Suite) -> SuiteSpec:
    def specs(checks: dict[str, float] | None) -> tuple[CheckSpec, ...] | None:
        return None if checks is None else tuple(CheckSpec(k, float(v)) for k, v in checks.items())

    slice_checks = None
    if suite.slice_checks is not None:  # overrides on top of the aggregate checks
        slice_checks = specs({**suite.checks, **suite.slice_checks})
    return SuiteSpec(name=name, data=loaded.resolve(suite.data) if suite.data else None, task=suite.task,
                     slices=tuple(suite.slices),
                     checks=specs(suite.checks), slice_checks=slice_checks, min_slice_size=suite.min_slice_size,
                     max_slice_values=suite.max_slice_values,
                     confidence=suite.confidence, insufficient_blocks_gate=suite.insufficient_blocks_gate,
                     output_kind=suite.output, generation=_generation(loaded, suite),
                     tensor_tolerance=suite.tolerance.model_dump() if suite.tolerance else None,
                     batch_sizes=tuple(suite.batch_sizes) if suite.batch_sizes else None,
                     external=suite.external.model_dump() if suite.external else None,
                     decision=suite.decision.model_dump() if suite.decision else None)


def _generation(loaded: LoadedConfig, suite: Suite) -> dict | None:
    if suite.generation is None:
        return None
    settings = suite.generation.model_dump(exclude_none=True)
    settings["stop"] = suite.generation.stop  # None (no stop string) is a setting, not an omission
    if suite.generation.tokenizer:
        settings["tokenizer"] = loaded.resolve(suite.generation.tokenizer)
    return settings


@dataclass(frozen=True)
class _Work:
    """One (model, candidate, suite), independent of the target."""

    model: str
    candidate: str
    baseline: ArtifactSpec
    artifact: ArtifactSpec
    suite: SuiteSpec
    runners: frozenset[str]
    targets: tuple[str, ...] | None
    key: str  # hashes of artifacts, calibration set, suite data and check config


@contextmanager
def _no_gc() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _impact_profile(target: Target) -> tuple:
    """What, besides the component, decides `affects` for a target: its GPU options and probes."""
    return (tuple(target.options.onnxruntime.providers), target.options.torch.device,
            target.options.transformers.device,
            tuple((name, str(p.affects)) for name, p in target.probes.items()))


class Planner:
    def __init__(self, loaded: LoadedConfig, hasher: FileHasher | None = None) -> None:
        self.loaded = loaded
        self.hasher = hasher or FileHasher()
        self._work: list[_Work] | None = None

    def refresh(self) -> bool:
        """Re-read the artifacts, data and calibration sets (unchanged files cost a stat); True if any changed."""
        before = {(w.model, w.candidate, w.suite.name): w.key for w in self._work or []}
        self._work = None
        after = {(w.model, w.candidate, w.suite.name): w.key for w in self.work()}
        return bool(before) and before != after

    def work(self) -> list[_Work]:
        """Every (model, candidate, suite) of the config, with its content key (files hashed once)."""
        if self._work is not None:
            return self._work
        cfg, loaded = self.loaded.config, self.loaded
        items = []
        suites = {name: suite_spec(loaded, name, s) for name, s in cfg.suites.items()}
        for model_name, m in cfg.models.items():
            baseline = ArtifactSpec(path=loaded.resolve(m.baseline.path), runner=m.baseline.runner)
            for cand_name, cand in m.candidates.items():
                quantization = cand.quantization.model_dump(exclude_none=True)
                if cand.quantization.calibration_set:
                    quantization["calibration_set"] = loaded.resolve(cand.quantization.calibration_set)
                artifact = ArtifactSpec(path=loaded.resolve(cand.path), runner=cand.runner, quantization=quantization)
                for suite_name in m.suites:
                    suite = suites[suite_name]
                    key = _digest(self.hasher(baseline.path), self.hasher(artifact.path), quantization,
                                  self.hasher(quantization["calibration_set"]) if "calibration_set" in quantization
                                  else None, self.hasher(suite.data) if suite.data else None,
                                  self.hasher(suite.generation["tokenizer"])
                                  if suite.generation and "tokenizer" in suite.generation else None, suite)
                    items.append(_Work(model_name, cand_name, baseline, artifact, suite,
                                       frozenset({baseline.runner, artifact.runner}),
                                       tuple(m.targets) if m.targets is not None else None, key))
        self._work = items
        return items

    def jobs(self, trigger: str, fingerprints: dict[str, dict] | None = None, target: str | None = None,
             model: str | None = None, changed: dict[str, tuple] | None = None) -> list[JobSpec]:
        """Every applicable job (optionally one target/model, or only those a change affects)."""
        cfg = self.loaded.config
        if target is not None and target not in cfg.targets:
            raise SelectionError(f"--target {target!r}: no such target in {self.loaded.path} "
                                 f"(have {sorted(cfg.targets)})")
        if model is not None and model not in cfg.models:
            raise SelectionError(f"--model {model!r}: no such model in {self.loaded.path} (have {sorted(cfg.models)})")
        fingerprints = fingerprints or {}
        with _no_gc():  # 10^5 new objects would trigger many collections that find nothing to free
            return self._jobs(trigger, fingerprints, target, model, changed)

    def _jobs(self, trigger: str, fingerprints: dict[str, dict], target: str | None, model: str | None,
              changed: dict[str, tuple] | None) -> list[JobSpec]:
        cfg = self.loaded.config
        works = [w for w in self.work() if model is None or w.model == model]
        explicit = any(w.targets is not None for w in works)
        applicable: dict[tuple, list[_Work]] = {}  # target shape -> works it can run
        relevant_names: dict[tuple, frozenset[str]] = {}  # (impact profile, runners, components) -> names
        jobs = []
        for target_name in ([target] if target else cfg.targets):
            t = cfg.targets[target_name]
            shape = (frozenset(t.runners), target_name if explicit else None)
            if shape not in applicable:
                applicable[shape] = [w for w in works if w.runners <= shape[0]
                                     and (w.targets is None or target_name in w.targets)]
            todo = applicable[shape]
            if changed is not None:
                hit = {r for r in t.runners if any(affects(cfg, target_name, c, r) for c in changed)}
                todo = [w for w in todo if w.runners & hit]
            if not todo:
                continue
            components = fingerprints.get(target_name, {}).get("components", {})
            profile = _impact_profile(t)
            options = t.options.model_dump(exclude_none=True)
            probes = self.loaded.probe_specs(target_name)
            batch = t.batch_size or cfg.batch_size
            target_parts: dict[frozenset[str], str] = {}  # runner set -> hash of the relevant stack
            for w in todo:
                part = target_parts.get(w.runners)
                if part is None:
                    names_key = (profile, w.runners, frozenset(components))
                    if names_key not in relevant_names:
                        relevant_names[names_key] = frozenset(
                            relevant_components(cfg, target_name, components, set(w.runners)))
                    names = relevant_names[names_key]
                    relevant = {k: components[k] for k in sorted(names)}
                    part = target_parts[w.runners] = _digest(target_name, relevant or "unprobed", options, batch)
                key = hashlib.sha256(f"{part}/{w.key}".encode()).hexdigest()[:24]
                jobs.append(JobSpec(
                    job_id=key, job_key=key, target=target_name, model=w.model, candidate=w.candidate,
                    baseline=w.baseline, candidate_artifact=w.artifact, suite=w.suite, runner_options=options,
                    batch_size=batch, trigger=trigger, config_hash=self.loaded.hash, probes=probes))
        return jobs

    def plan(self, event: Event, fingerprints: dict[str, dict],
             known_keys: Callable[[list[str]], set[str]]) -> Plan:
        """The jobs an event calls for, less those `known_keys` names: queued, running, or (unless the
        caller forces it) done."""
        if isinstance(event, StackChanged):
            jobs = self.jobs(event.trigger, fingerprints, target=event.target, changed=event.diff)
        elif isinstance(event, Manual):
            jobs = self.jobs(event.trigger, fingerprints, target=event.target)
        elif isinstance(event, (Scheduled, ConfigChanged)):
            jobs = self.jobs(event.trigger, fingerprints)
        else:
            raise TypeError(f"unknown event {event!r}")
        unique = list({j.job_key: j for j in jobs}.values())
        # Forced or not, `known_keys` is asked: a forced plan's caller leaves out finished work
        # from what it answers, never what is queued or running, so a forced sweep repeated
        # ten times queues each job once.
        known = known_keys([j.job_key for j in unique])
        return Plan([j for j in unique if j.job_key not in known], skipped_known=len(known))


def plan(loaded: LoadedConfig, target: str | None = None, model: str | None = None,
         trigger: str = "manual") -> list[JobSpec]:
    """Every applicable job now (the one-shot `validate`): no dedupe, the stack is probed by each job."""
    return Planner(loaded).jobs(trigger, target=target, model=model)
