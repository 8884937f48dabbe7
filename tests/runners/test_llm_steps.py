"""The baseline's distribution as generation records it (top-K and the rest) against the full
teacher-forced KL: equal when K covers the vocabulary, never above it, and close for a peaked
distribution; the real-model numbers are in tests/runners/test_llm.py."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from runners.backends.lm_decode import top_and_rest  # noqa: E402
from runners.backends.transformers_lm import Continuations, _kl_over_recorded  # noqa: E402


def recorded(base_logits, k: int) -> Continuations:
    """What generation keeps of these per-step logits (one prompt, one row per step)."""
    ids, logp, rest = (t.numpy() for t in top_and_rest(base_logits, k))
    return Continuations(np.zeros((1, len(base_logits)), np.int64), np.array([len(base_logits)], np.int32),
                         ids.astype(np.int32), logp, rest)


def full_kl(base_logits, cand_logits) -> np.ndarray:
    base, cand = torch.log_softmax(base_logits, -1), torch.log_softmax(cand_logits, -1)
    return (base.exp() * (base - cand)).sum(-1).numpy()


@pytest.fixture
def logits():
    generator = torch.Generator().manual_seed(0)
    # Peaked like a language model's next-token distribution: a few likely tokens, a long tail.
    base = torch.randn(130, 500, generator=generator) * 3
    cand = base + torch.randn(130, 500, generator=generator) * 0.3
    return base, cand


def test_recording_the_whole_vocabulary_gives_the_full_kl(logits) -> None:
    base, cand = logits
    steps = recorded(base, 500)
    assert np.all(np.isneginf(steps.rest_logp))
    got = _kl_over_recorded(steps, slice(0, 130), torch.log_softmax(cand, -1), chunk=64)
    np.testing.assert_allclose(got, full_kl(base, cand), rtol=1e-4, atol=1e-7)


def test_a_top_k_record_never_overstates_the_kl_and_stays_close(logits) -> None:
    base, cand = logits
    exact = full_kl(base, cand)
    coarse = {k: _kl_over_recorded(recorded(base, k), slice(0, 130), torch.log_softmax(cand, -1), chunk=50)
              for k in (8, 64)}
    for values in coarse.values():
        assert np.all(values <= exact + 1e-6)
    # More tokens kept: closer to the full KL.
    assert np.abs(coarse[64] - exact).mean() < np.abs(coarse[8] - exact).mean()
    assert np.abs(coarse[64] - exact).mean() < 0.1 * exact.mean()


def test_a_non_finite_candidate_makes_a_non_finite_kl(logits) -> None:
    base, cand = logits
    cand = cand.clone()
    cand[3, :] = float("nan")
    got = _kl_over_recorded(recorded(base, 16), slice(0, 130), torch.log_softmax(cand, -1))
    assert np.isnan(got[3]) and np.isfinite(np.delete(got, 3)).all()
