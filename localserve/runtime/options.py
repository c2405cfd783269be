"""What a runner is loaded with, and what each request samples with.

Plain dataclasses so they cross the daemon/runner pipe as JSON. Load options fix
the llama.cpp context (changing one means a reload); sampling options are per
request and never reload anything. The server maps Ollama's and OpenAI's fields
onto these; ``validate()`` catches what no wire schema can (ranges, NaN).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from localserve.config import (
    check_kv_flash_attention,
    flash_attention_mode,
    kv_cache_type,
)
from localserve.errors import InvalidOptionError


def default_threads() -> int:
    """Physical cores available to us: llama.cpp's decode is memory-bound and
    hyper-threads only add contention (llama.cpp picks the same default)."""
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        available = os.cpu_count() or 1
    cores: set[tuple[str, str]] = set()
    try:
        with open("/proc/cpuinfo") as handle:
            physical = core = ""
            for line in handle:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "physical id":
                    physical = value.strip()
                elif key == "core id":
                    core = value.strip()
                    cores.add((physical, core))
    except OSError:
        pass
    return max(1, min(available, len(cores) or available))


SPECULATIVE = ("off", "ngram")


@dataclass(frozen=True)
class LoadOptions:
    # Tokens per sequence; 0: chosen when the model loads, from its training length and
    # the memory there is (plan/context.py), when nothing else sets it.
    num_ctx: int = 4096
    num_parallel: int = 4  # sequences decoded together
    num_batch: int = 2048  # tokens per llama_decode call at most
    num_ubatch: int = 512  # tokens per compute step inside a decode
    num_gpu: int = -1  # layers on the GPU; -1 = as many as fit (the planner's choice)
    num_thread: int = 0  # 0 = physical cores
    # A long prompt is fed in pieces of this many tokens while other sequences are
    # generating, so they keep getting tokens (chunked prefill).
    prefill_chunk: int = 512
    # Speculative decoding (engine/speculate.py): "ngram" drafts from the sequence's
    # own prompt and output; "off" decodes one token per step; any other value names
    # a draft model in the store (the daemon passes its file with the load).
    speculative: str = "ngram"
    # A draft model's guess is kept while its probability is at least this.
    draft_p_min: float = 0.75
    # The K and V cache's type (KV_CACHE_TYPES) and whether attention runs as llama.cpp's
    # fused flash-attention kernel ("auto": where the backend has it).
    kv_cache_type: str = "f16"
    flash_attention: str = "auto"
    # Sliding-window layers (Gemma, gpt-oss) keep a cache as long as the pool, as every
    # other layer (llama.cpp's ``swa_full``), instead of the window's: more memory, but
    # any cached prefix is reusable and cache_reuse applies (LOCALSERVE_SWA_FULL).
    swa_full: bool = False
    # Reuse cached cells past a span that changed, by shifting their positions
    # (llama-server's --cache-reuse): the shortest run of matching tokens worth it; 0 is
    # off. An approximation: those cells were computed after the old span
    # (LOCALSERVE_CACHE_REUSE).
    cache_reuse: int = 0

    def validate(self) -> LoadOptions:
        if self.num_ctx != 0:
            _check_int("num_ctx", self.num_ctx, 16, 1 << 22)
        _check_int("num_parallel", self.num_parallel, 1, 256)
        _check_int("num_batch", self.num_batch, 1, 1 << 16)
        _check_int("num_ubatch", self.num_ubatch, 1, 1 << 16)
        _check_int("num_gpu", self.num_gpu, -1, 100_000)
        _check_int("num_thread", self.num_thread, 0, 1024)
        _check_int("prefill_chunk", self.prefill_chunk, 1, 1 << 16)
        _check_float("draft_p_min", self.draft_p_min, 0.0, 1.0)
        _check_int("cache_reuse", self.cache_reuse, 0, 1 << 22)
        if not isinstance(self.swa_full, bool):
            raise InvalidOptionError(f"swa_full must be true or false, got {self.swa_full!r}")
        if not isinstance(self.speculative, str) or not self.speculative.strip():
            raise InvalidOptionError(
                f"speculative must be {' or '.join(SPECULATIVE)} or the name of a draft "
                f"model, got {self.speculative!r}"
            )
        kv = kv_cache_type(self.kv_cache_type)
        flash = flash_attention_mode(self.flash_attention)
        check_kv_flash_attention(kv, flash)
        if (kv, flash) != (self.kv_cache_type, self.flash_attention):
            return replace(self, kv_cache_type=kv, flash_attention=flash)
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoadOptions:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known}).validate()


@dataclass(frozen=True)
class SamplingOptions:
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.9
    min_p: float = 0.0
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int = -1  # -1: a random seed per request
    num_predict: int = -1  # -1: until end of generation or the context is full
    stop: tuple[str, ...] = field(default_factory=tuple)
    # Never end on an end-of-generation token (fixed-length benchmarks; llama-server
    # has the same switch).
    ignore_eos: bool = False
    # False: no speculative drafts for this request (LoadOptions.speculative decides
    # whether the model drafts at all).
    speculative: bool = True
    # Tokens a thinking model may reason before its thinking block is closed for it
    # (engine/thinking_budget.py); -1: no budget. Every API's budget field lands here.
    think_budget: int = -1

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    def validate(self) -> SamplingOptions:
        _check_float("temperature", self.temperature, 0.0, 100.0)
        _check_int("top_k", self.top_k, 0, 1 << 30)
        _check_float("top_p", self.top_p, 0.0, 1.0)
        _check_float("min_p", self.min_p, 0.0, 1.0)
        _check_float("repeat_penalty", self.repeat_penalty, 0.0, 100.0)
        _check_int("repeat_last_n", self.repeat_last_n, -1, 1 << 20)
        _check_float("presence_penalty", self.presence_penalty, -100.0, 100.0)
        _check_float("frequency_penalty", self.frequency_penalty, -100.0, 100.0)
        _check_int("seed", self.seed, -(1 << 63), (1 << 64) - 1)
        _check_int("num_predict", self.num_predict, -2, 1 << 30)
        if not isinstance(self.speculative, bool):
            raise InvalidOptionError(f"speculative must be true or false, got {self.speculative!r}")
        if self.think_budget != -1:  # -1 is "no budget"; a budget is 0 tokens or more
            _check_int("think_budget", self.think_budget, 0, 1 << 30)
        if len(self.stop) > 16 or any(not isinstance(s, str) or len(s) > 1000 for s in self.stop):
            raise InvalidOptionError("stop: at most 16 strings of up to 1000 characters")
        return self

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["stop"] = list(self.stop)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SamplingOptions:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if "stop" in values:
            stop = values["stop"]
            values["stop"] = (stop,) if isinstance(stop, str) else tuple(stop or ())
        return cls(**values).validate()


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidOptionError(f"{name} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise InvalidOptionError(f"{name} must be between {low} and {high}, got {value}")


def _check_float(name: str, value: object, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidOptionError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or not low <= value <= high:
        raise InvalidOptionError(f"{name} must be between {low} and {high}, got {value}")
