"""Ollama's ``options`` object, split into what loads a model and what samples a request.

Known options with the wrong type or a value out of range are a 400; an unknown
option is a 400 too (a typo such as ``temprature`` would otherwise silently do
nothing). Options Ollama accepts but llama.cpp's sampler chain here does not use
(mirostat, typical_p...) are accepted and ignored, so existing clients keep working.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from localserve.errors import InvalidOptionError
from localserve.runtime.options import LoadOptions, SamplingOptions

LOAD_KEYS = {"num_ctx", "num_batch", "num_gpu", "num_thread", "kv_cache_type", "flash_attention"}
SAMPLING_KEYS = {
    "temperature", "top_k", "top_p", "min_p", "repeat_penalty", "repeat_last_n",
    "presence_penalty", "frequency_penalty", "seed", "num_predict", "stop",
    "ignore_eos",  # localserve (and llama-server) extension: fixed-length output
    "speculative",  # localserve: false turns speculative drafts off for a request
    "think_budget",  # localserve: tokens of thinking before the block is closed; -1 none
}  # fmt: skip
# Accepted for compatibility with Ollama clients, without effect here.
IGNORED_KEYS = {
    "num_keep", "typical_p", "tfs_z", "mirostat", "mirostat_tau", "mirostat_eta",
    "penalize_newline", "numa", "low_vram", "vocab_only", "use_mmap", "use_mlock",
    "main_gpu", "num_gqa", "f16_kv", "logits_all", "embedding_only", "rope_frequency_base",
    "rope_frequency_scale",
}  # fmt: skip


@dataclass(frozen=True)
class SplitOptions:
    load: LoadOptions
    sampling: SamplingOptions


def split_options(
    options: dict[str, Any] | None,
    *,
    num_ctx: int,
    num_parallel: int,
    overrides: dict[str, Any] | None = None,
    kv_cache_type: str = "f16",
    flash_attention: str = "auto",
    speculative: str = "ngram",
    draft_p_min: float = 0.75,
    swa_full: bool = False,
    cache_reuse: int = 0,
) -> SplitOptions:
    """Validate ``options`` (plus wire-level ``overrides`` such as OpenAI's max_tokens)."""
    given = dict(options or {})
    if not isinstance(options, dict | None):
        raise InvalidOptionError("options must be a JSON object")
    given.update({k: v for k, v in (overrides or {}).items() if v is not None})
    unknown = sorted(set(given) - LOAD_KEYS - SAMPLING_KEYS - IGNORED_KEYS)
    if unknown:
        raise InvalidOptionError(
            f"unknown option {unknown[0]!r}", hint="see the options list in docs/api.md"
        )
    load_values: dict[str, Any] = {
        "num_ctx": num_ctx,
        "num_parallel": num_parallel,
        "kv_cache_type": kv_cache_type,
        "flash_attention": flash_attention,
        "speculative": speculative,
        "draft_p_min": draft_p_min,
        "swa_full": swa_full,
        "cache_reuse": cache_reuse,
    }
    for key in LOAD_KEYS & set(given):
        if given[key] is not None:
            load_values[key] = given[key]
    asked = given.get("num_ctx")
    if asked is not None and (isinstance(asked, bool) or not isinstance(asked, int) or asked < 16):
        # 0 is how the daemon itself says "the planner's choice"; a request names a size.
        raise InvalidOptionError(f"num_ctx must be an integer of at least 16, got {asked!r}")
    batch = load_values.get("num_batch")
    if isinstance(batch, int) and not isinstance(batch, bool) and 0 < batch < num_parallel:
        # llama.cpp aborts the whole runner (GGML_ASSERT on n_outputs_max) when a decode
        # call cannot hold one token of every sequence.
        raise InvalidOptionError(
            f"num_batch must be at least {num_parallel}, the sequences decoded together, "
            f"got {batch}",
            hint="raise num_batch or lower LOCALSERVE_NUM_PARALLEL",
        )
    sampling_values = {k: given[k] for k in SAMPLING_KEYS & set(given) if given[k] is not None}
    if "stop" in sampling_values:
        stop = sampling_values["stop"]
        if isinstance(stop, str):
            sampling_values["stop"] = [stop]
        elif not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise InvalidOptionError("stop must be a string or a list of strings")
    try:
        load = LoadOptions.from_dict(load_values)
        sampling = SamplingOptions.from_dict(sampling_values)
    except TypeError as exc:
        raise InvalidOptionError(f"invalid options: {exc}") from None
    return SplitOptions(load, sampling)
