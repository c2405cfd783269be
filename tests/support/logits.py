"""The model's own distributions, recomputed in the test process: every position's raw
logits from one decode of a token sequence (engine/llama.py's ``Context.logits``), and a
float64 log-softmax of them, to hold reported log-probabilities against."""

from __future__ import annotations

from typing import Any

import numpy as np

from localserve.engine.llama import Batch, Context, Model
from localserve.runtime.options import LoadOptions


def raw_logits(model: Model, tokens: list[int]) -> np.ndarray[Any, np.dtype[np.float64]]:
    """One row of logits per token (row i predicts token i + 1), from one decode."""
    context = Context(
        model, LoadOptions(num_ctx=max(256, len(tokens)), num_parallel=1), n_threads=2
    )
    batch = Batch(len(tokens))
    try:
        batch.add(tokens, 0, 0, True, want_all_logits=True)
        assert context.decode(batch) == 0
        return np.stack([context.logits(row).astype(np.float64) for row in range(len(tokens))])
    finally:
        batch.close()
        context.close()


def log_softmax(logits: np.ndarray[Any, np.dtype[np.float64]]) -> np.ndarray[Any, Any]:
    peak = logits.max(axis=-1, keepdims=True)
    return logits - (peak + np.log(np.exp(logits - peak).sum(axis=-1, keepdims=True)))


def sequence_logprobs(model: Model, tokens: list[int]) -> list[float]:
    """Each token's log-probability after the ones before it (from the second on)."""
    table = log_softmax(raw_logits(model, tokens))
    return [float(table[i - 1, token]) for i, token in enumerate(tokens) if i]
