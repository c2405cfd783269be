"""Token log-probabilities, for the requests that ask (``logprobs``, ``top_logprobs``).

The distribution is the model's own at that step: a log-softmax of the raw logits
the token was sampled from (before temperature, top-k and the rest of the chain), as
OpenAI and vLLM report them. Computed only for jobs that ask, so the others pay
nothing; for Gemma's 262k vocabulary it is about a millisecond a token.
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
    row = logits.astype(np.float64)
    peak = float(row.max())
    log_total = peak + float(np.log(np.exp(row - peak).sum()))
    entry = _entry(model, token, float(row[token]) - log_total)
    best: list[dict[str, Any]] = []
    if top > 0:
        count = min(top, MAX_TOP, len(row))
        picked = np.argpartition(row, -count)[-count:]
        for candidate in sorted(picked.tolist(), key=lambda t: -row[t]):
            best.append(_entry(model, int(candidate), float(row[candidate]) - log_total))
    entry["top_logprobs"] = best
    return entry


def _entry(model: Model, token: int, logprob: float) -> dict[str, Any]:
    piece = model.piece(token)
    return {
        "token": piece.decode("utf-8", "replace"),
        "logprob": logprob,
        "bytes": list(piece),
    }
