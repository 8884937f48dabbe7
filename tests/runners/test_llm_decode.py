"""Greedy decoding with rows retired as they end (runners/backends/lm_decode.py), on small random
transformers models saved as real folders: each row's output is what `model.generate` gives
that prompt alone, whatever the batch holds, and the work done is the tokens produced."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from runners.backends.lm_decode import decode_greedy, top_and_rest  # noqa: E402
from runners.backends.transformers_lm import CausalLM  # noqa: E402
from tests.runners.tiny_llm import EOS, VOCAB, tiny_model  # noqa: E402


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory):
    # Peaked distributions, so that a float rounding never decides an argmax; seed 3 produces the
    # end-of-sequence token early in some rows (checked below), so both ways a row ends are met.
    folder = tiny_model(tmp_path_factory.mktemp("tiny") / "lm", seed=3, initializer_range=0.3)
    with CausalLM(folder, {"threads": 1}) as lm:
        yield lm


def prompts_and_budgets(seed: int = 0) -> tuple[list[list[int]], list[int]]:
    rng = np.random.default_rng(seed)
    lengths, budgets = [3, 9, 1, 14, 6, 2, 11, 5], [40, 7, 25, 1, 40, 12, 3, 30]
    return [rng.integers(2, VOCAB, n).tolist() for n in lengths], budgets


def generate_alone(lm: CausalLM, prompt: list[int], budget: int) -> tuple[list[int], torch.Tensor]:
    """transformers' own greedy generation of one prompt (no padding), cut after the end token,
    and the scores of each step."""
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        out = lm.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=budget,
                                do_sample=False, temperature=None, top_p=None, top_k=None, pad_token_id=EOS,
                                eos_token_id=EOS, output_scores=True, return_dict_in_generate=True)
    new = out.sequences[0, len(prompt):].tolist()
    if EOS in new:
        new = new[:new.index(EOS) + 1]
    return new, torch.cat(out.scores)[:len(new)]


def test_each_row_is_what_generate_gives_its_prompt_alone(model: CausalLM) -> None:
    prompts, budgets = prompts_and_budgets()
    made = decode_greedy(model.model, prompts, budgets, EOS, "cpu", record_top=5)
    ended_early = 0
    for r, (prompt, budget) in enumerate(zip(prompts, budgets)):
        expected, scores = generate_alone(model, prompt, budget)
        n = int(made.lengths[r])
        assert made.tokens[r, :n].tolist() == expected, f"row {r}"
        assert (made.tokens[r, n:] == EOS).all()
        ended_early += n < budget
        ids, logp, rest = (t.numpy() for t in top_and_rest(scores, 5))
        np.testing.assert_array_equal(made.top_ids[r, :n], ids)
        np.testing.assert_allclose(made.top_logp[r, :n], logp, atol=1e-4)
        np.testing.assert_allclose(made.rest_logp[r, :n], rest, atol=1e-4)
    assert ended_early >= 1  # some row met the end-of-sequence token before its budget


def test_rows_leave_the_batch_as_they_end(model: CausalLM) -> None:
    prompts, budgets = prompts_and_budgets(1)
    seen: list[int] = []
    hook = model.model.register_forward_pre_hook(lambda _, args, kwargs: seen.append(kwargs["input_ids"].shape[0]),
                                                 with_kwargs=True)
    try:
        made = decode_greedy(model.model, prompts, budgets, EOS, "cpu")
    finally:
        hook.remove()
    # Every row computed at a step produced a token there: no step is spent on an ended row.
    assert made.row_steps == sum(seen) == int(made.lengths.sum())
    assert seen[0] == len(prompts) and seen == sorted(seen, reverse=True)
    assert len(seen) == int(made.lengths.max()) < sum(budgets)


def test_batches_put_the_longest_budgets_together_and_keep_each_rows_output(model: CausalLM) -> None:
    prompts, budgets = prompts_and_budgets(2)
    whole = model.generate(prompts, budgets, batch_size=len(prompts))
    in_threes = model.generate(prompts, budgets, batch_size=3)
    np.testing.assert_array_equal(whole.tokens, in_threes.tokens)
    np.testing.assert_array_equal(whole.lengths, in_threes.lengths)
    assert (whole.lengths <= np.array(budgets)).all()
