"""Load targets.yaml: YAML with line numbers, schema validation, cross-references, files.

Every problem found is collected and reported at once, each naming the file, the line
and the field path (`targets.yaml:14: models.digits.candidates.w4.runner: ...`).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from scheduler.config.schema import Config

Path_ = tuple[str | int, ...]

LEDGER_URL_VARIABLE = "REVALIDATOR_LEDGER_URL"


class ConfigError(Exception):
    """One or more problems in a config file; `errors` holds one line per problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


@dataclass(frozen=True)
class LoadedConfig:
    config: Config
    path: Path
    hash: str

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    def resolve(self, relative: str) -> str:
        """A path from the config, relative to the config file's folder."""
        return str((self.base_dir / relative).resolve())

    def probe_specs(self, target: str) -> dict[str, dict[str, Any]]:
        """A target's custom probes as the runners take them, file paths resolved."""
        specs = {}
        for name, probe in self.config.targets[target].probes.items():
            spec = probe.model_dump(exclude_none=True, exclude={"affects"})
            if "file" in spec:
                spec["file"] = self.resolve(spec["file"])
            specs[name] = spec
        return specs


def format_path(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


class _Located:
    """The YAML document plus the line of every key and value in it."""

    def __init__(self, text: str, source: str) -> None:
        self.source = source
        self.lines: dict[Path_, int] = {(): 1}
        self.errors: list[str] = []
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            self.data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
        if node is not None:
            self._walk(node, ())

    def _walk(self, node: yaml.Node, path: Path_) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key_node, value_node in node.value:
                key = key_node.value
                line = key_node.start_mark.line + 1
                if key in seen:
                    self.errors.append(f"{self.source}:{line}: {format_path(path + (key,))}: duplicate key")
                seen.add(key)
                self.lines[path + (key,)] = line
                self._walk(value_node, path + (key,))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self.lines[path + (index,)] = item.start_mark.line + 1
                self._walk(item, path + (index,))

    def locate(self, loc: tuple[Any, ...]) -> tuple[int, Path_]:
        """Line and field path for a pydantic error location (union member tags skipped)."""
        path: Path_ = ()
        line = 1
        for part in loc:
            candidate = path + (part,)
            if candidate in self.lines:
                path, line = candidate, self.lines[candidate]
            elif isinstance(part, str) and ("[" in part or part[:1].isupper()):
                continue  # pydantic names the union member it tried, e.g. "literal['local']" or "Placement"
            else:
                path = candidate  # a missing key: point at its parent's line
        return line, path


def _message(error: dict[str, Any], path: Path_) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"unknown key {path[-1]!r}"
    if kind == "missing":
        if path[-1:] == ("baseline",):
            return "required: a model needs its full-precision baseline; candidates without one are refused"
        return "required field is missing"
    return error["msg"].removeprefix("Value error, ")


# Runners whose artifact is one file; others (plugins, model folders) may be given a directory.
FILE_RUNNERS = frozenset({"onnxruntime", "torch", "tensorrt", "openai"})  # openai: its endpoint descriptor


def unusable_path(path: str, file_only: bool) -> str | None:
    """Why a configured file cannot be used (missing, a directory where a file is read, unreadable), or None."""
    target = Path(path)
    if not target.exists():
        return f"file not found: {path}"
    if target.is_dir():
        if file_only:
            return f"is a directory, not a file: {path}"
        unreadable = not os.access(target, os.R_OK | os.X_OK)
    else:
        unreadable = not os.access(target, os.R_OK)
    return f"not readable by this user: {path}" if unreadable else None


def _cross_references(config: Config, lines: _Located, loaded: LoadedConfig) -> list[str]:
    """What the schema cannot see: names that must exist, runners a target must offer, files."""
    problems: list[tuple[Path_, str]] = []
    for name, model in config.models.items():
        endpoint = "openai" in {model.baseline.runner} | {c.runner for c in model.candidates.values()}
        for i, suite in enumerate(model.suites):
            if suite not in config.suites:
                problems.append((("models", name, "suites", i), f"unknown suite {suite!r}"))
            elif endpoint and config.suites[suite].task != "generation":
                problems.append((("models", name, "suites", i), f"suite {suite!r} is task "
                                 f"{config.suites[suite].task!r}: an openai endpoint takes generation suites only"))
        runners = {model.baseline.runner} | {c.runner for c in model.candidates.values()}
        for i, target in enumerate(model.targets or []):
            if target not in config.targets:
                problems.append((("models", name, "targets", i), f"unknown target {target!r}"))
            elif missing := sorted(runners - set(config.targets[target].runners)):
                problems.append((("models", name, "targets", i), f"target {target!r} offers no runner {missing}"))
        if model.targets is None and not any(runners <= set(t.runners) for t in config.targets.values()):
            problems.append((("models", name), f"no target offers all of its runners {sorted(runners)}"))
        artifacts = [(("baseline", "path"), model.baseline.path, model.baseline.runner in FILE_RUNNERS)]
        for cname, cand in model.candidates.items():
            artifacts.append((("candidates", cname, "path"), cand.path, cand.runner in FILE_RUNNERS))
            if cand.quantization.calibration_set:
                artifacts.append((("candidates", cname, "quantization", "calibration_set"),
                                  cand.quantization.calibration_set, False))
        for sub, relative, file_only in artifacts:
            if problem := unusable_path(loaded.resolve(relative), file_only):
                problems.append((("models", name, *sub), problem))
    for name, suite in config.suites.items():
        if suite.data is not None and (problem := unusable_path(loaded.resolve(suite.data), True)):
            problems.append((("suites", name, "data"), problem))
        if suite.generation and suite.generation.tokenizer and \
                (problem := unusable_path(loaded.resolve(suite.generation.tokenizer), True)):
            problems.append((("suites", name, "generation", "tokenizer"), problem))
    try:
        from apscheduler.triggers.cron import CronTrigger

        CronTrigger.from_crontab(config.schedule.nightly, timezone="UTC")
    except ValueError as exc:
        problems.append((("schedule", "nightly"), f"not a valid crontab expression ({exc})"))
    out = []
    for path, message in problems:
        line, path = lines.locate(path)
        out.append(f"{lines.source}:{line}: {format_path(path)}: {message}")
    return out


def load_config(path: str | Path, check_files: bool = True) -> LoadedConfig:
    """Parse and validate a config file; raises ConfigError listing every problem found."""
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError([f"{source}: cannot read config ({exc.strerror or exc})"]) from exc
    try:
        located = _Located(text, source)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        raise ConfigError([f"{where}: invalid YAML ({getattr(exc, 'problem', None) or exc})"]) from exc
    if not isinstance(located.data, dict):
        raise ConfigError([f"{source}:1: (top level): expected a mapping with 'version: 1', targets, models, suites"])
    errors = list(located.errors)
    try:
        config = Config.model_validate(located.data)
    except ValidationError as exc:
        for error in exc.errors():
            line, field = located.locate(error["loc"])
            errors.append(f"{source}:{line}: {format_path(field)}: {_message(error, field)}")
        raise ConfigError(errors) from exc
    if os.environ.get(LEDGER_URL_VARIABLE):  # a database URL with credentials comes from a Secret, not the file
        config = config.model_copy(update={"ledger": os.environ[LEDGER_URL_VARIABLE]})
    digest = hashlib.sha256(json.dumps(config.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()
    loaded = LoadedConfig(config=config, path=path.resolve(), hash=digest[:16])
    if check_files:
        errors += _cross_references(config, located, loaded)
    if errors:
        raise ConfigError(errors)
    return loaded
