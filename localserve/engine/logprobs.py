"""Token log-probabilities, for the requests that ask (``logprobs``, ``top_logprobs``).

The distribution is the model's own at that step: a log-softmax of the raw logits
the token was sampled from (before temperature, top-k and the rest of the chain), as
OpenAI and vLLM report them. Computed only for jobs that ask, so the others pay
nothing; for Gemma's 262k vocabulary it is well under a millisecond a token.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from localserve.engine.llama import Model

MAX_TOP = 20


def token_logprob(
    model: Model, logits: np.ndarray[Any, np.dtype[np.float32]], token: int, top: int
) -> dict[str, Any]:
    """``{"token", "logprob", "bytes", "top_logprobs"}`` for ``token`` (Ollama's and
    OpenAI's chat shape; the routes reshape it for the legacy completions API)."""
    peak = float(logits.max())
    scratch = _scratch(len(logits))
    np.subtract(logits, peak, out=scratch)
    np.exp(scratch, out=scratch)
    log_total = peak + float(np.log(scratch.sum(dtype=np.float64)))
    entry = _entry(model, token, float(logits[token]) - log_total)
    best: list[dict[str, Any]] = []
    if top > 0:
        for candidate in _top(logits, min(top, MAX_TOP), peak):
            best.append(_entry(model, candidate, float(logits[candidate]) - log_total))
    entry["top_logprobs"] = best
    return entry


_scratch_buffers: dict[int, np.ndarray[Any, np.dtype[np.float32]]] = {}


def _scratch(size: int) -> np.ndarray[Any, np.dtype[np.float32]]:
    """One reusable buffer per vocabulary size (the engine thread is the only caller):
    no 1 MiB allocation per token."""
    buffer = _scratch_buffers.get(size)
    if buffer is None:
        buffer = _scratch_buffers[size] = np.empty(size, dtype=np.float32)
    return buffer


def _top(logits: np.ndarray[Any, np.dtype[np.float32]], count: int, peak: float) -> list[int]:
    """The ``count`` likeliest tokens, likeliest first. A full argpartition over a
    262k vocabulary costs ~3 ms a token; the likeliest ones are almost always within a
    few nats of the peak, so that short list is partitioned instead when it is long
    enough."""
    near = np.flatnonzero(logits > peak - _NEAR)
    if len(near) >= count:
        chosen = near[np.argpartition(logits[near], -count)[-count:]]
    else:
        chosen = np.argpartition(logits, -count)[-count:]
    return sorted((int(t) for t in chosen), key=lambda t: -float(logits[t]))


# Logits further than this below the peak have probability under e^-_NEAR of the top.
_NEAR = 12.0


def _entry(model: Model, token: int, logprob: float) -> dict[str, Any]:
    piece = model.piece(token)
    return {
        "token": piece.decode("utf-8", "replace"),
        "logprob": logprob,
        "bytes": list(piece),
    }
