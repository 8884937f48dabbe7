"""The teacher-forced pass over groups of prompts (right-padded rows in one forward pass, logits
only at the continuation positions) against each prompt scored alone, on small randomly
initialised transformers models saved as real model folders: the same log-probabilities, so the
same KL and top-1 agreement, whichever way the prompts are grouped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from runners.backends.lm_decode import top_and_rest  # noqa: E402
from tests.runners.tiny_llm import VOCAB, tiny_model  # noqa: E402
from runners.backends.transformers_lm import (CausalLM, Continuations, _forced_groups,  # noqa: E402
                                              _keeps_masked_positions, _kl_over_recorded, compare_forced)

@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("tiny")
    with CausalLM(tiny_model(root / "base", 0), {"threads": 1}) as base, \
            CausalLM(tiny_model(root / "cand", 1), {"threads": 1}) as cand:
        yield base, cand


def inputs(seed: int = 0) -> tuple[list[list[int]], Continuations]:
    """Prompts of uneven lengths, continuations of uneven lengths (one empty), none with the
    end-of-sequence id inside."""
    rng = np.random.default_rng(seed)
    prompt_lengths, lengths = [3, 9, 1, 14, 6, 2, 11], np.array([5, 17, 0, 2, 30, 8, 1], np.int32)
    prompts = [rng.integers(2, VOCAB, n).tolist() for n in prompt_lengths]
    tokens = np.full((len(prompts), int(lengths.max())), 1, np.int64)
    for r, n in enumerate(lengths):
        tokens[r, :n] = rng.integers(2, VOCAB, n)
    return prompts, Continuations(tokens, lengths)


def alone(model: CausalLM, prompts, made: Continuations) -> list:
    return [model.forced_log_probs(p, made.tokens[r, :made.lengths[r]]) if made.lengths[r] else None
            for r, p in enumerate(prompts)]


def test_this_transformers_keeps_logits_at_masked_positions() -> None:
    # Otherwise the grouped pass falls back to one row at a time, and the tests below prove less.
    assert _keeps_masked_positions()


def test_groups_are_consecutive_bounded_and_skip_empty_continuations() -> None:
    lengths = np.array([5, 17, 0, 2, 30, 8, 1])
    groups = _forced_groups(lengths, positions=24, max_rows=3)
    assert groups == [[0, 1, 3], [4], [5, 6]]  # 5 + 17 + 2 fill 24; 30 positions alone, over the bound
    assert _forced_groups(lengths, positions=1000, max_rows=3) == [[0, 1, 3], [4, 5, 6]]


def test_a_block_of_prompts_gives_each_prompt_its_own_log_probabilities(pair) -> None:
    base, _ = pair
    prompts, made = inputs()
    rows = [r for r in range(len(prompts)) if made.lengths[r]]
    block = base.forced_block([prompts[r] for r in rows], [made.tokens[r, :made.lengths[r]] for r in rows])
    expected = torch.cat([e for e in alone(base, prompts, made) if e is not None])
    assert block.shape == expected.shape == (int(made.lengths.sum()), VOCAB)
    torch.testing.assert_close(block, expected, rtol=0, atol=2e-5)
    torch.testing.assert_close(block.exp().sum(-1), torch.ones(block.shape[0]), rtol=0, atol=1e-5)


@pytest.mark.parametrize("positions,max_rows", [(1, 1), (24, 3), (4096, 16)])
def test_the_full_vocabulary_comparison_is_the_same_however_prompts_are_grouped(pair, positions, max_rows) -> None:
    base, cand = pair
    prompts, made = inputs(1)
    got = compare_forced(base, cand, prompts, made, positions=positions, max_rows=max_rows)
    for r, (b, c) in enumerate(zip(alone(base, prompts, made), alone(cand, prompts, made))):
        if b is None:
            assert len(got.kl[r]) == 0 and len(got.top1[r]) == 0
            continue
        np.testing.assert_allclose(got.kl[r], (b.exp() * (b - c)).sum(-1).clamp_min(0).numpy(), rtol=1e-4, atol=1e-6)
        np.testing.assert_array_equal(got.top1[r], (b.argmax(-1) == c.argmax(-1)).numpy())
    assert np.concatenate(got.kl).mean() > 0  # two different models: something to measure


def test_the_recorded_comparison_is_the_same_however_prompts_are_grouped(pair) -> None:
    base, cand = pair
    prompts, made = inputs(2)
    # The baseline's distribution as generation would record it: top 8 and the rest, per position.
    rows = torch.cat([b for b in alone(base, prompts, made) if b is not None])
    ids, logp, rest = (t.numpy() for t in top_and_rest(rows, 8))
    ids = ids.astype(np.int32)
    steps = Continuations(made.tokens, made.lengths, ids, logp, rest)
    grouped = compare_forced(base, cand, prompts, steps, positions=24, max_rows=3)
    single = compare_forced(base, cand, prompts, steps, positions=1, max_rows=1)
    offset = 0
    for r, c in enumerate(alone(cand, prompts, made)):
        if c is None:
            continue
        n = int(made.lengths[r])
        expected = _kl_over_recorded(steps, slice(offset, offset + n), c)
        offset += n
        for got in (grouped, single):
            np.testing.assert_allclose(got.kl[r], expected, rtol=1e-4, atol=1e-6)
            np.testing.assert_array_equal(got.top1[r], c.argmax(-1).numpy() == made.tokens[r, :n])
