"""Greedy decoding of a batch of prompts with a KV cache, each row retired from the batch (and from
the cache) as soon as it ends: at the end-of-sequence token or at its own token budget.

`model.generate` runs a batch until its longest row ends, every finished row still computed at
every step. Prompts of a suite have different budgets (a short answer 16 tokens, prose 256) and
end at different points, so a batch here mixes budgets and shrinks as rows end: the work is
about the tokens actually produced. The steps are `generate`'s greedy ones (left padding,
positions from the attention mask, float32 scores, argmax), in a loop of our own.

torch and transformers are imported inside the functions: importing this module loads neither.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from runners.backends.base import ArtifactError


@dataclass
class DecodedBatch:
    """One batch's outputs, row for row: new tokens (padded with the end-of-sequence id), how many
    were produced, and where asked for, the top-K record of every produced step."""

    tokens: np.ndarray  # (rows, max budget) int64
    lengths: np.ndarray  # (rows,) int32
    top_ids: np.ndarray | None = None  # (rows, max budget, K) int32
    top_logp: np.ndarray | None = None  # (rows, max budget, K) float32
    rest_logp: np.ndarray | None = None  # (rows, max budget) float32
    row_steps: int = 0  # rows computed, summed over the steps: the work done


def top_and_rest(scores: Any, k: int) -> tuple[Any, Any, Any]:
    """The top-K token ids and log-probabilities of each row, and the log of the probability
    outside them (float32 throughout)."""
    import torch

    log_probs = torch.log_softmax(scores.float(), dim=-1)
    top = log_probs.topk(min(k, log_probs.shape[-1]), dim=-1)
    rest = torch.logsumexp(log_probs.scatter(1, top.indices, float("-inf")), dim=-1)
    return top.indices, top.values, rest


def decode_greedy(model: Any, prompts: list[list[int]], budgets: list[int], eos_id: int, device: str,
                  record_top: int = 0) -> DecodedBatch:
    """Greedy continuations of `prompts` (one batch), row r producing at most budgets[r] tokens."""
    import torch
    from transformers import DynamicCache

    rows, longest = len(prompts), max(budgets)
    width = max(len(p) for p in prompts)
    ids = torch.full((rows, width), eos_id, dtype=torch.long)
    mask = torch.zeros((rows, width), dtype=torch.long)
    for r, prompt in enumerate(prompts):
        ids[r, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
        mask[r, width - len(prompt):] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)

    out = DecodedBatch(np.full((rows, longest), eos_id, np.int64), np.zeros(rows, np.int32))
    budget = torch.tensor(budgets, dtype=torch.long)
    active = torch.arange(rows)  # which of the batch's rows each cache row holds
    cache = DynamicCache(config=model.config)
    cache_arg = _cache_argument(model)
    step_inputs = {"input_ids": ids, "position_ids": positions}
    with torch.inference_mode():
        for step in range(longest):
            logits = model(**step_inputs, attention_mask=mask, use_cache=True, logits_to_keep=1,
                           **{cache_arg: cache}).logits
            scores = logits[:, -1, :].float()
            out.row_steps += len(active)
            chosen = scores.argmax(dim=-1)
            picked = chosen.cpu().numpy()
            where = active.numpy()
            out.tokens[where, step] = picked
            out.lengths[where] = step + 1
            if record_top:
                _record(out, where, step, longest, top_and_rest(scores, record_top))
            going = torch.from_numpy(picked != eos_id) & (budget[active] > step + 1)
            if not bool(going.any()):
                break
            if not bool(going.all()):  # retire the ended rows from the batch and the cache
                keep = torch.nonzero(going).squeeze(1)
                on_device = keep.to(device)
                cache.batch_select_indices(on_device)
                active, chosen = active[keep], chosen[on_device]
                mask, positions = mask[on_device], positions[on_device]
            mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=-1)
            positions = positions[:, -1:] + 1
            step_inputs = {"input_ids": chosen[:, None], "position_ids": positions}
    return out


def _record(out: DecodedBatch, where: np.ndarray, step: int, longest: int, record: tuple[Any, Any, Any]) -> None:
    """Keep one step's top-K record of the rows in `where` (the arrays sized at the first step, by
    the K the scores allow)."""
    top_ids, top_logp, rest = (t.cpu().numpy() for t in record)
    if out.top_ids is None:
        rows, k = len(out.lengths), top_ids.shape[1]
        out.top_ids = np.zeros((rows, longest, k), np.int32)
        out.top_logp = np.zeros((rows, longest, k), np.float32)
        out.rest_logp = np.zeros((rows, longest), np.float32)
    out.top_ids[where, step], out.top_logp[where, step], out.rest_logp[where, step] = top_ids, top_logp, rest


def _cache_argument(model: Any) -> str:
    """The name the model's forward takes its KV cache by: `cache` from transformers 5.24,
    `past_key_values` before (an unknown keyword would vanish into **kwargs, uncached)."""
    import inspect

    parameters = inspect.signature(model.forward).parameters
    for name in ("cache", "past_key_values"):
        if name in parameters:
            return name
    raise ArtifactError(f"{type(model).__name__}.forward takes no KV cache argument (cache or past_key_values)")
