"""A causal LLM through transformers: batched greedy generation with a KV cache, and a
teacher-forced scoring pass that compares two models over the same token contexts.

The artifact is a model folder (`save_pretrained`, optionally with a quantization config that
transformers reloads, e.g. torchao's) or a GGUF file (transformers dequantizes it to float:
its numerics are transformers' own, not llama.cpp's kernels). Options: `dtype` (float32,
bfloat16, float16), `device` (cpu, cuda, cuda:N), `threads`, and `recipe` (a quantization
applied at load, runners/backends/recipes.py). torch and transformers are imported on load.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runners.backends.base import ArtifactError, BackendUnavailable
from runners.backends.recipes import apply_recipe

DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class Continuations:
    """Greedy outputs: `tokens` padded with the end-of-sequence id; `lengths` count it where it
    was produced (an output cut at max_new_tokens has none)."""

    tokens: np.ndarray  # (prompts, max_new_tokens) int64
    lengths: np.ndarray  # (prompts,) int32


@dataclass
class ForcedComparison:
    """Per prompt, per position of the baseline's continuation: KL(baseline || candidate) and
    whether the candidate's top-1 token is the baseline's, both over identical contexts."""

    kl: list[np.ndarray]
    top1: list[np.ndarray]


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
    """One loaded model (and its tokenizer); use as a context manager to release it."""

    def __init__(self, path: str | Path, options: dict[str, Any]) -> None:
        self.path = Path(path)
        self.options = dict(options)
        dtype = self.options.get("dtype", "float32")
        if dtype not in DTYPES:
            raise ArtifactError(f"transformers dtype {dtype!r} is not one of {', '.join(DTYPES)}")
        self.dtype_name = dtype
        self.model: Any = None
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
            self.tokenizer = AutoTokenizer.from_pretrained(source, **extra)
            model = AutoModelForCausalLM.from_pretrained(source, dtype=getattr(torch, self.dtype_name), **extra)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise ArtifactError(f"{self.path}: transformers cannot load the model ({exc})") from exc
        model = model.to(self.device).eval()
        if self.options.get("recipe"):
            model = apply_recipe(self.options["recipe"], model)
        self.model = model
        self.eos_id = self._eos_id()
        return self

    def __exit__(self, *exc: object) -> None:
        self.model = self.tokenizer = None

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
    def generate(self, prompts: list[list[int]], caps: list[int], batch_size: int) -> Continuations:
        """Greedy generation with the KV cache, in left-padded batches of prompts with the same token
        budget (a batch runs as long as its longest budget)."""
        import torch

        tokens = np.full((len(prompts), max(caps)), self.eos_id, dtype=np.int64)
        lengths = np.zeros(len(prompts), dtype=np.int32)
        for rows in _batches(caps, batch_size):
            budget = max(caps[r] for r in rows)
            width = max(len(prompts[r]) for r in rows)
            ids = torch.full((len(rows), width), self.eos_id, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for i, r in enumerate(rows):
                ids[i, width - len(prompts[r]):] = torch.tensor(prompts[r])
                mask[i, width - len(prompts[r]):] = 1
            with torch.inference_mode():
                out = self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                          max_new_tokens=budget, do_sample=False, temperature=None,
                                          top_p=None, top_k=None, pad_token_id=self.eos_id,
                                          eos_token_id=self.eos_id)
            new = out[:, width:].cpu().numpy()
            for i, r in enumerate(rows):
                row = new[i][:caps[r]]
                stops = np.flatnonzero(row == self.eos_id)
                length = int(stops[0]) + 1 if len(stops) else len(row)
                tokens[r, :length] = row[:length]
                lengths[r] = length
        return Continuations(tokens, lengths)

    # -- teacher forcing --------------------------------------------------------------------------
    def forced_log_probs(self, prompt: list[int], continuation: np.ndarray) -> Any:
        """log p(next token) at every position of `continuation` given the prompt and the
        continuation so far: one forward pass, logits kept only for those positions."""
        import torch

        ids = torch.tensor([list(prompt) + continuation.tolist()], dtype=torch.long, device=self.device)
        with torch.inference_mode():
            logits = self.model(input_ids=ids, logits_to_keep=len(continuation) + 1).logits[0, :-1]
        return torch.log_softmax(logits.float(), dim=-1)


def compare_forced(baseline: CausalLM, candidate: CausalLM, prompts: list[list[int]],
                   continuations: Continuations) -> ForcedComparison:
    """Both models scored on the baseline's own continuation, prompt by prompt, so no more than
    one prompt's positions x vocabulary of log-probabilities is alive at a time."""
    import torch

    kl, top1 = [], []
    for prompt, tokens, length in zip(prompts, continuations.tokens, continuations.lengths):
        continuation = tokens[:length]
        if not len(continuation):
            kl.append(np.zeros(0))
            top1.append(np.zeros(0, bool))
            continue
        base = baseline.forced_log_probs(prompt, continuation)
        cand = candidate.forced_log_probs(prompt, continuation).to(base.device)
        kl.append((base.exp() * (base - cand)).sum(dim=-1).clamp_min(0).cpu().numpy().astype(np.float64))
        top1.append((cand.argmax(dim=-1) == base.argmax(dim=-1)).cpu().numpy())
        del base, cand
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return ForcedComparison(kl, top1)


def _batches(caps: list[int], batch_size: int) -> list[list[int]]:
    """Row indices in batches of one token budget each, in the prompts file's order."""
    out: list[list[int]] = []
    for budget in sorted(set(caps)):
        rows = [r for r, cap in enumerate(caps) if cap == budget]
        out += [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]
    return out
