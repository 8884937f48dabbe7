"""A causal LLM through transformers: batched greedy generation with a KV cache, and a
teacher-forced scoring pass that compares two models over the same token contexts.

The artifact is a model folder (`save_pretrained`, optionally with a quantization config that
transformers reloads, e.g. torchao's) or a GGUF file (transformers dequantizes it to float:
its numerics are transformers' own, not llama.cpp's kernels). Options: `dtype` (float32,
bfloat16, float16), `device` (cpu, cuda, cuda:N), `threads`, and `recipe` (a quantization
applied at load, runners/backends/recipes.py). torch and transformers are imported on load.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runners.backends.base import ArtifactError, BackendUnavailable
from runners.backends.lm_decode import decode_greedy
from runners.backends.recipes import apply_recipe

DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class Continuations:
    """Greedy outputs: `tokens` padded with the end-of-sequence id; `lengths` count it where it
    was produced (an output cut at max_new_tokens has none). Where generation recorded them, the
    model's own distribution at every produced position, compactly (`lm_decode.top_and_rest`): its top-K
    token ids and log-probabilities and the log of the probability left outside them, rows
    concatenated prompt after prompt (lengths[0] rows for the first prompt, and so on)."""

    tokens: np.ndarray  # (prompts, max_new_tokens) int64
    lengths: np.ndarray  # (prompts,) int32
    top_ids: np.ndarray | None = None  # (lengths.sum(), K) int32
    top_logp: np.ndarray | None = None  # (lengths.sum(), K) float32
    rest_logp: np.ndarray | None = None  # (lengths.sum(),) float32


@dataclass
class ForcedComparison:
    """Per prompt, per position of the baseline's continuation: KL(baseline || candidate) and
    whether the candidate's top-1 token is the baseline's, both over identical contexts."""

    kl: list[np.ndarray]
    top1: list[np.ndarray]
    baseline_from: str = ""  # how the baseline's distribution was had, for the provenance


def _quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # models are local files: never reach for a hub
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for name in ("transformers", "torchao", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # "Loading weights" bars in a job's stderr
    except ImportError:
        pass


def _source(path: Path) -> tuple[str, dict[str, Any]]:
    """from_pretrained's (directory, extra kwargs) for a model folder or a GGUF file."""
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ArtifactError(f"{path}: a model folder needs config.json (a save_pretrained folder)")
        return str(path), {}
    if path.is_file() and path.suffix == ".gguf":
        return str(path.parent), {"gguf_file": path.name}
    if path.exists():
        raise ArtifactError(f"{path}: a transformers artifact is a model folder or a .gguf file")
    raise ArtifactError(f"{path}: model artifact not found")


class CausalLM:
    """One loaded model (and its tokenizer); use as a context manager to release it. A
    `tokenizer` given is used instead of loading the folder's own (a recipe candidate is the
    baseline's own folder: one tokenizer for both). With `lazy`, the weights load when first
    used: a baseline whose outputs come from the cache is only ever asked to decode."""

    def __init__(self, path: str | Path, options: dict[str, Any], tokenizer: Any = None, lazy: bool = False) -> None:
        self.path = Path(path)
        self.options = dict(options)
        self.given_tokenizer = tokenizer
        self.lazy = lazy
        dtype = self.options.get("dtype", "float32")
        if dtype not in DTYPES:
            raise ArtifactError(f"transformers dtype {dtype!r} is not one of {', '.join(DTYPES)}")
        self.dtype_name = dtype
        self._model: Any = None
        self._eos: int | None = None
        self.tokenizer: Any = None

    def __enter__(self) -> "CausalLM":
        _quiet_libraries()
        import torch

        # A Ray worker starts with OMP_NUM_THREADS=1; a job has its target's cores (one job at a
        # time per target by default), and generation is the expensive part.
        torch.set_num_threads(int(self.options.get("threads") or len(os.sched_getaffinity(0))))
        source, extra = _source(self.path)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = self.options.get("device", "cpu")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendUnavailable(f"{self.path}: device {self.device} requested, but torch sees no CUDA device")
        try:
            self.tokenizer = self.given_tokenizer or AutoTokenizer.from_pretrained(source, **extra)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise ArtifactError(f"{self.path}: transformers cannot load the tokenizer ({exc})") from exc
        self._source = (source, extra)
        if not self.lazy:
            self._load()
        return self

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        source, extra = self._source
        try:
            model = AutoModelForCausalLM.from_pretrained(source, dtype=getattr(torch, self.dtype_name), **extra)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise ArtifactError(f"{self.path}: transformers cannot load the model ({exc})") from exc
        model = model.to(self.device).eval()
        if self.options.get("recipe"):
            model = apply_recipe(self.options["recipe"], model)
        self._model = model
        self._eos = self._eos_id()

    @property
    def model(self) -> Any:
        if self._model is None:
            self._load()
        return self._model

    @property
    def eos_id(self) -> int:
        if self._eos is None:
            self._load()
        return self._eos  # type: ignore[return-value]

    @property
    def loaded(self) -> bool:
        """Whether the weights were loaded (with `lazy`, only once something needed them)."""
        return self._model is not None

    def __exit__(self, *exc: object) -> None:
        self._model = self.tokenizer = None

    def _eos_id(self) -> int:
        eos = self.model.generation_config.eos_token_id
        if isinstance(eos, list):
            eos = eos[0] if eos else None
        eos = eos if eos is not None else self.tokenizer.eos_token_id
        if eos is None:
            raise ArtifactError(f"{self.path}: the model names no end-of-sequence token")
        return int(eos)

    # -- prompts ----------------------------------------------------------------------------------
    def encode_prompts(self, texts: list[str], chat_template: bool, system_prompt: str | None) -> list[list[int]]:
        """Token ids per prompt: through the model's chat template, or the raw text."""
        if not chat_template:
            return [self.tokenizer(t, add_special_tokens=True)["input_ids"] for t in texts]
        if not getattr(self.tokenizer, "chat_template", None):
            raise ArtifactError(f"{self.path}: the tokenizer has no chat template (set generation.chat_template: false)")
        out = []
        for text in texts:
            messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + \
                       [{"role": "user", "content": text}]
            rendered = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            out.append(self.tokenizer(rendered, add_special_tokens=False)["input_ids"])
        return out

    def decode(self, ids: np.ndarray) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)

    # -- generation -------------------------------------------------------------------------------
    def generate(self, prompts: list[list[int]], caps: list[int], batch_size: int, record_top: int = 0) -> Continuations:
        """Greedy generation with the KV cache, in left-padded batches of at most `batch_size`
        prompts, longest budgets first; a row leaves its batch as soon as it ends
        (runners/backends/lm_decode.py). With `record_top` K > 0, the model's distribution at
        every step is kept as its top-K and the mass outside (Continuations)."""
        tokens = np.full((len(prompts), max(caps)), self.eos_id, dtype=np.int64)
        lengths = np.zeros(len(prompts), dtype=np.int32)
        recorded: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        for rows in _batches(caps, batch_size):
            made = decode_greedy(self.model, [prompts[r] for r in rows], [caps[r] for r in rows], self.eos_id,
                                 self.device, record_top)
            for i, r in enumerate(rows):
                length = int(made.lengths[i])
                tokens[r, :length] = made.tokens[i, :length]
                lengths[r] = length
                if record_top:
                    recorded[r] = (made.top_ids[i, :length], made.top_logp[i, :length],  # type: ignore[index]
                                   made.rest_logp[i, :length])  # type: ignore[index]
        if not record_top:
            return Continuations(tokens, lengths)
        ordered = [recorded[r] for r in range(len(prompts))]
        return Continuations(tokens, lengths, *(np.concatenate([o[k] for o in ordered]) for k in range(3)))

    # -- teacher forcing --------------------------------------------------------------------------
    def forced_log_probs(self, prompt: list[int], continuation: np.ndarray) -> Any:
        """log p(next token) at every position of `continuation` given the prompt and the
        continuation so far: one forward pass, logits kept only for those positions."""
        return self.forced_block([prompt], [continuation])

    def forced_block(self, prompts: list[list[int]], continuations: list[np.ndarray]) -> Any:
        """`forced_log_probs` of several prompts in one forward pass: rows right-padded (causal
        attention: a real position never sees the padding after it) with an attention mask, and
        logits computed only at the positions that predict a continuation token, rows after rows
        ((sum of continuation lengths, vocabulary) log-probabilities, normalised in place)."""
        import torch

        width = max(len(p) + len(c) for p, c in zip(prompts, continuations))
        ids = torch.full((len(prompts), width), self.eos_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        keep = torch.zeros((len(prompts), width), dtype=torch.bool)
        for i, (prompt, continuation) in enumerate(zip(prompts, continuations)):
            row = list(prompt) + continuation.tolist()
            ids[i, :len(row)] = torch.tensor(row)
            mask[i, :len(row)] = 1
            keep[i, len(prompt) - 1:len(row) - 1] = True  # the position before each continuation token
        with torch.inference_mode():
            logits = None
            if len(prompts) > 1 and _keeps_masked_positions():
                logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                    logits_to_keep=keep.to(self.device), use_cache=False).logits
                if tuple(logits.shape[:-1]) != (int(keep.sum()),):  # a model that slices its own way
                    logits = None
            if logits is None:  # one row at a time, the last positions of each
                parts = []
                for i in range(len(prompts)):
                    n = int(keep[i].sum())
                    out = self.model(input_ids=ids[i:i + 1, :int(mask[i].sum())].to(self.device),
                                     logits_to_keep=n + 1, use_cache=False).logits
                    parts.append(out[0, :n])
                logits = parts[0] if len(parts) == 1 else torch.cat(parts)
            logits = logits.float()
            for start in range(0, logits.shape[0], 64):  # in place, in chunks: no second block of this size
                part = logits[start:start + 64]
                part.sub_(torch.logsumexp(part, dim=-1, keepdim=True))
        return logits


@functools.cache
def _keeps_masked_positions() -> bool:
    """Whether this transformers computes logits only at the positions of a boolean mask (a 2D
    boolean `logits_to_keep`, rows flattened one after another): tried on a small tensor."""
    import torch

    try:
        from transformers.modeling_utils import slice_logits_to_keep

        kept = slice_logits_to_keep(torch.zeros(1, 3, 2), torch.tensor([[True, False, True]]))
    except (ImportError, IndexError, RuntimeError, TypeError):
        return False
    return tuple(kept.shape) == (2, 2)


# The forced pass runs prompts together up to this many kept positions (each a row of the
# vocabulary's log-probabilities: 49k floats, 200 KB for SmolLM2): a few hundred MB at most.
FORCED_POSITIONS = 512
FORCED_ROWS = 16


def _forced_groups(lengths: np.ndarray, positions: int, max_rows: int) -> list[list[int]]:
    """Consecutive prompts with a continuation, grouped for one forward pass each: at most
    `max_rows` rows and `positions` kept positions (a longer continuation alone)."""
    groups: list[list[int]] = []
    current: list[int] = []
    kept = 0
    for r, length in enumerate(lengths):
        if not length:
            continue
        if current and (len(current) == max_rows or kept + int(length) > positions):
            groups.append(current)
            current, kept = [], 0
        current.append(r)
        kept += int(length)
    return groups + ([current] if current else [])


def compare_forced(baseline: CausalLM, candidate: CausalLM, prompts: list[list[int]], continuations: Continuations,
                   positions: int = FORCED_POSITIONS, max_rows: int = FORCED_ROWS) -> ForcedComparison:
    """The candidate scored teacher-forced on the baseline's own continuation, a group of
    consecutive prompts per forward pass (_forced_groups: its positions x vocabulary alive at a
    time), against the baseline's distribution at the same positions: as its generation recorded
    it (top-K and the rest: the KL between the two distributions over those K tokens and "any
    other", never above the full KL and equal to it when the rest is empty; top-1 is the
    baseline's greedy token itself), or else from a teacher-forced pass of the baseline too (full
    vocabulary)."""
    import torch

    lengths = continuations.lengths
    kl: list[np.ndarray] = [np.zeros(0) for _ in prompts]
    top1: list[np.ndarray] = [np.zeros(0, bool) for _ in prompts]
    starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)  # rows of the recorded steps
    recorded = continuations.top_ids is not None
    for rows in _forced_groups(lengths, positions, max_rows):
        conts = [continuations.tokens[r, :lengths[r]] for r in rows]
        tokens = np.concatenate(conts)
        cand = candidate.forced_block([prompts[r] for r in rows], conts)
        if recorded:
            step_kl = _kl_over_recorded(continuations, slice(int(starts[rows[0]]), int(starts[rows[-1] + 1])), cand)
            step_top1 = cand.argmax(dim=-1).cpu().numpy() == tokens
        else:
            base = baseline.forced_block([prompts[r] for r in rows], conts).to(cand.device)
            step_kl = np.concatenate([(b.exp() * (b - c)).sum(dim=-1).clamp_min(0).cpu().numpy()
                                      for b, c in zip(base.split(64), cand.split(64))])
            step_top1 = (cand.argmax(dim=-1) == base.argmax(dim=-1)).cpu().numpy()
            del base
        del cand
        bounds = np.cumsum([len(c) for c in conts])[:-1]
        for r, k, t in zip(rows, np.split(step_kl.astype(np.float64), bounds), np.split(step_top1, bounds)):
            kl[r], top1[r] = k, t
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    how = (f"its generation's top {continuations.top_ids.shape[1]} log-probabilities and the rest" if recorded
           else "a teacher-forced pass, full vocabulary")
    return ForcedComparison(kl, top1, how)


def _kl_over_recorded(steps: Continuations, span: slice, cand: Any, chunk: int = 64) -> np.ndarray:
    """KL(baseline || candidate) per position over the baseline's recorded top-K tokens and the
    rest (the candidate's rest is what its full distribution leaves outside those K); `chunk`
    positions at a time, so the temporaries stay small next to the candidate's log-probabilities."""
    import torch

    out = []
    for start in range(0, cand.shape[0], chunk):
        rows = slice(span.start + start, min(span.start + start + chunk, span.stop))
        ids = torch.from_numpy(steps.top_ids[rows]).to(cand.device).long()
        base_top = torch.from_numpy(steps.top_logp[rows]).to(cand.device).double()
        base_rest = torch.from_numpy(steps.rest_logp[rows]).to(cand.device).double()
        part = cand[start:start + chunk]
        cand_top = part.gather(1, ids).double()
        cand_rest = torch.logsumexp(part.scatter(1, ids, float("-inf")), dim=-1).double()
        inside = (base_top.exp() * (base_top - cand_top)).sum(dim=-1)
        # An empty rest (probability 0) contributes nothing, whatever the candidate puts there.
        rest = torch.where(torch.isneginf(base_rest), torch.zeros_like(base_rest),
                           base_rest.exp() * (base_rest - cand_rest))
        out.append((inside + rest).clamp_min(0).cpu().numpy())
    return np.concatenate(out)


def _batches(caps: list[int], batch_size: int) -> list[list[int]]:
    """Row indices in batches of at most `batch_size`, the longest budgets first (in the prompts
    file's order among equal budgets): rows that run long share their batch, and the short ones
    that join them leave it early."""
    order = sorted(range(len(caps)), key=lambda r: -caps[r])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
