"""The external family: an evaluation harness's reported metrics (lm-evaluation-harness) compared."""
