"""Generative suites' inputs: a tokenizer for step models and the prompts file (JSONL)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from runners.datacheck import DataError


@dataclass(frozen=True)
class CharTokenizer:
    """One token per character, from a vocabulary file: {"type": "characters", "tokens": [...], "pad": "\\u0000"}."""

    tokens: tuple[str, ...]
    pad: str

    @classmethod
    def load(cls, path: str | Path) -> "CharTokenizer":
        try:
            spec = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: cannot read the tokenizer vocabulary ({exc})") from exc
        if not isinstance(spec, dict) or spec.get("type") != "characters" or not isinstance(spec.get("tokens"), list):
            raise DataError(f"{path}: a tokenizer vocabulary needs \"type\": \"characters\" and a \"tokens\" list")
        tokens = tuple(spec["tokens"])
        if any(not isinstance(t, str) or len(t) != 1 for t in tokens) or len(set(tokens)) != len(tokens):
            raise DataError(f"{path}: \"tokens\" must be distinct single characters")
        pad = spec.get("pad", tokens[0])
        if pad not in tokens:
            raise DataError(f"{path}: pad {pad!r} is not one of the tokens")
        return cls(tokens, pad)

    @cached_property
    def index(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.tokens)}

    @property
    def pad_id(self) -> int:
        return self.index[self.pad]

    def token_id(self, token: str) -> int:
        return self.index[token]

    def encode(self, text: str, where: str) -> list[int]:
        index = self.index
        unknown = sorted({ch for ch in text if ch not in index})
        if unknown:
            raise DataError(f"{where}: characters {unknown} are not in the model's vocabulary")
        return [index[ch] for ch in text]

    def decode(self, ids) -> str:
        ids = ids.tolist() if hasattr(ids, "tolist") else ids  # python ints index a tuple far faster
        return "".join(map(self.tokens.__getitem__, ids))


# exact: the stripped text equals the reference; normalized: equal after case folding and
# dropping punctuation and extra spaces; contains: the normalized reference appears in the
# normalized text as whole words (for chat models that answer in a sentence).
MATCH_MODES = ("exact", "normalized", "contains")


def normalize(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.casefold()).split())


def matches(text: str, reference: str, mode: str) -> bool:
    if mode == "exact":
        return text.strip() == reference.strip()
    answer, expected = normalize(text), normalize(reference)
    if mode == "normalized":
        return answer == expected
    return bool(expected) and f" {expected} " in f" {answer} "


@dataclass
class Prompt:
    text: str
    slices: dict[str, str]
    reference: str | None = None
    format: dict[str, Any] | None = None  # {"json": true} | {"json_schema": {...}} | {"regex": "..."}
    max_new_tokens: int | None = None  # a cap below the suite's, for prompts whose answers are short
    match: str = "exact"  # how the answer meets its reference: exact, normalized, contains


@dataclass
class PromptSet:
    path: str
    prompts: list[Prompt] = field(default_factory=list)

    def column(self, dimension: str) -> list[str]:
        return [p.slices[dimension] for p in self.prompts]

    def caps(self, max_new_tokens: int) -> list[int]:
        """Each prompt's token budget: its own cap, never above the suite's."""
        return [min(p.max_new_tokens or max_new_tokens, max_new_tokens) for p in self.prompts]


def _format_spec(value: Any, where: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if value == "json":
        return {"json": True}
    if isinstance(value, dict) and len(value) == 1:
        (kind, arg), = value.items()
        if kind == "regex":
            try:
                re.compile(arg)
            except (re.error, TypeError) as exc:
                raise DataError(f"{where}: \"format\".regex is not a valid regular expression ({exc})") from exc
            return value
        if kind == "json_schema" and isinstance(arg, dict):
            return value
        if kind == "json" and arg is True:
            return value
    raise DataError(f"{where}: \"format\" must be \"json\", {{\"json_schema\": {{...}}}} or {{\"regex\": \"...\"}}")


def load_prompts(path: str | Path, slices: tuple[str, ...] | list[str]) -> PromptSet:
    """Read a prompts file: one JSON object per line with "prompt", every slice column, and
    optionally "reference" and "format". Errors name the file and the line."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the prompts file ({exc})") from exc
    out = PromptSet(str(path))
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise DataError(f"{where}: not a JSON object ({exc})") from exc
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
            raise DataError(f"{where}: each line needs a string \"prompt\"")
        missing = [s for s in slices if s not in row]
        if missing:
            raise DataError(f"{where}: slice columns {missing} are missing")
        reference = row.get("reference")
        if reference is not None and not isinstance(reference, str):
            raise DataError(f"{where}: \"reference\" must be a string")
        cap = row.get("max_new_tokens")
        if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap < 1):
            raise DataError(f"{where}: \"max_new_tokens\" must be a positive integer")
        match = row.get("match", "exact")
        if match not in MATCH_MODES:
            raise DataError(f"{where}: \"match\" must be one of {', '.join(MATCH_MODES)}")
        out.prompts.append(Prompt(row["prompt"], {s: str(row[s]) for s in slices}, reference,
                                  _format_spec(row.get("format"), where), cap, match))
    if not out.prompts:
        raise DataError(f"{path}: no prompts")
    return out
