"""Greedy generation with a step model: the last `context` tokens in, next-token logits out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

Step = Callable[[np.ndarray], np.ndarray]  # (rows, context) int64 -> (rows, vocab) logits


@dataclass
class Generation:
    """Generated tokens, STOP-padded after each output's stop; `lengths` count the stop itself;
    `logits` are the raw step outputs (for per-step KL), kept unless asked not to."""

    tokens: np.ndarray  # (prompts, max_new_tokens) int32
    lengths: np.ndarray  # (prompts,) int32
    logits: np.ndarray | None  # (prompts, max_new_tokens, vocab) float32 where kept; 0 past a stop


def greedy_generate(step: Step, prompts: list[list[int]], *, context: int, max_new_tokens: int, stop_id: int,
                    pad_id: int, batch_size: int, keep_logits: bool = True) -> Generation:
    """Generate every prompt greedily, all prompts still running batched into one step call.

    Deterministic: argmax with the first index on ties, the same rows in the same order."""
    count = len(prompts)
    sequence = np.full((count, context + max_new_tokens), pad_id, dtype=np.int64)
    for row, ids in enumerate(prompts):
        tail = ids[-context:]
        sequence[row, context - len(tail):context] = tail
    lengths = np.full(count, max_new_tokens, dtype=np.int32)
    kept = None
    running = np.arange(count)
    # The loop does as little per step as a plain greedy loop: one model call per batch of
    # running prompts, argmax, and the logits copied out; everything else happens once, after.
    for t in range(max_new_tokens):
        if not len(running):
            break
        window = sequence[running, t:t + context]
        if len(running) <= batch_size:
            logits = step(window)
        else:
            logits = np.concatenate([step(window[i:i + batch_size]) for i in range(0, len(running), batch_size)])
        if keep_logits:
            if kept is None:
                kept = np.zeros((count, max_new_tokens, logits.shape[-1]), dtype=np.float32)
            kept[running, t] = logits
        chosen = logits.argmax(axis=-1)
        sequence[running, context + t] = chosen
        stopped = chosen == stop_id
        lengths[running[stopped]] = t + 1
        running = running[~stopped]
    tokens = sequence[:, context:].astype(np.int32)
    past_stop = np.arange(max_new_tokens)[None, :] >= lengths[:, None]
    tokens[past_stop] = stop_id
    return Generation(tokens=tokens, lengths=lengths, logits=kept)


def apply_caps(generation: Generation, caps: list[int], stop_id: int) -> Generation:
    """Cut each output at its prompt's own token budget (a prompt's cap below the suite's)."""
    limits = np.array(caps, dtype=np.int32)
    lengths = np.minimum(generation.lengths, limits)
    tokens = generation.tokens.copy()
    tokens[np.arange(tokens.shape[1])[None, :] >= lengths[:, None]] = stop_id
    logits = generation.logits
    if logits is not None:
        logits = logits.copy()
        logits[np.arange(logits.shape[1])[None, :] >= lengths[:, None]] = 0.0
    return Generation(tokens=tokens, lengths=lengths, logits=logits)
