"""Small randomly initialised transformers models, saved as real model folders, for tests of the
transformers runner's mechanics (generation, teacher forcing) that need no real LLM."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

VOCAB = 96
EOS = 1


def tiny_model(folder: Path, seed: int, initializer_range: float = 0.02) -> Path:
    """A two-layer Llama with a word-level tokenizer, saved as save_pretrained does. A wider
    `initializer_range` gives peaked next-token distributions (clear argmax margins)."""
    from tokenizers import Tokenizer, models

    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                      eos_token_id=EOS, bos_token_id=0, pad_token_id=EOS,
                                      initializer_range=initializer_range)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    vocabulary = {f"t{i}": i for i in range(VOCAB)}
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocabulary, "t0")),
                                                     eos_token=f"t{EOS}")
    tokenizer.save_pretrained(folder)
    return folder
