"""Greedy generation with a step model: the last `context` tokens in, next-token logits out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

Step = Callable[[np.ndarray], np.ndarray]  # (rows, context) int64 -> (rows, vocab) logits


@dataclass
class Generation:
    """Generated tokens, STOP-padded after each output's stop; `lengths` count the stop itself."""

    tokens: np.ndarray  # (prompts, max_new_tokens) int32
    lengths: np.ndarray  # (prompts,) int32
    log_probs: np.ndarray | None  # (prompts, max_new_tokens, vocab) float32 where kept; 0 past a stop


def greedy_generate(step: Step, prompts: list[list[int]], *, context: int, max_new_tokens: int, stop_id: int,
                    pad_id: int, batch_size: int, keep_log_probs: bool = True) -> Generation:
    """Generate every prompt greedily, all prompts still running batched into one step call.

    Deterministic: argmax with the first index on ties, the same rows in the same order."""
    count = len(prompts)
    sequence = np.full((count, context + max_new_tokens), pad_id, dtype=np.int64)
    for row, ids in enumerate(prompts):
        tail = ids[-context:]
        sequence[row, context - len(tail):context] = tail
    lengths = np.full(count, max_new_tokens, dtype=np.int32)
    log_probs = None
    running = np.arange(count)
    for t in range(max_new_tokens):
        if not len(running):
            break
        window = sequence[running, t:t + context]
        logits = np.concatenate([step(window[i:i + batch_size]) for i in range(0, len(running), batch_size)])
        logits = logits.reshape(len(running), -1).astype(np.float32, copy=False)
        if keep_log_probs:
            if log_probs is None:
                log_probs = np.zeros((count, max_new_tokens, logits.shape[1]), dtype=np.float32)
            shifted = logits - logits.max(axis=1, keepdims=True)
            log_probs[running, t] = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        chosen = logits.argmax(axis=1)
        sequence[running, context + t] = chosen
        stopped = chosen == stop_id
        lengths[running[stopped]] = t + 1
        running = running[~stopped]
    tokens = sequence[:, context:].astype(np.int32)
    past_stop = np.arange(max_new_tokens)[None, :] >= lengths[:, None]
    tokens[past_stop] = stop_id
    return Generation(tokens=tokens, lengths=lengths, log_probs=log_probs)
