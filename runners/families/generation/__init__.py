"""The generation family: both models generate on the same prompts; behaviour and drift are judged."""
