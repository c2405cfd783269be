"""The thin layer over llama-cpp-python's low-level bindings (``llama_cpp.llama_cpp``).

Everything here is a small, typed wrapper of a C call; the batching loop in
engine.py decides what to call when. llama-cpp-python is pinned exactly because
these names change between its releases (see NOTES-llama-cpp in the design notes).
Only the engine package imports llama_cpp.
"""

from __future__ import annotations

import ctypes
import logging
import math
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp.llama_cpp as L  # noqa: TID253 - the engine owns llama_cpp
import numpy as np

from localserve.config import (
    PLAIN_KV_CACHE_TYPES,
    check_kv_flash_attention,
    flash_attention_mode,
    kv_cache_type,
)
from localserve.errors import EngineError, InvalidOptionError
from localserve.runtime.options import LoadOptions


def _close_devnull_at_exit() -> None:
    """llama-cpp-python opens /dev/null twice when it is imported (llama_cpp._utils,
    for its high-level classes' output suppression) and never closes it, so every
    process that imports it ends with "ResourceWarning: unclosed file". Close them at
    exit, once nothing can use them any more."""
    import atexit

    from llama_cpp import _utils

    for handle in (getattr(_utils, "outnull_file", None), getattr(_utils, "errnull_file", None)):
        if handle is not None:
            atexit.register(handle.close)


_close_devnull_at_exit()

log = logging.getLogger("localserve.llama")

_backend_lock = threading.Lock()
_backend: dict[str, Any] = {}  # "log": the log callback, kept alive while llama.cpp holds it
_LEVELS = {
    1: logging.DEBUG,
    2: logging.INFO,
    3: logging.WARNING,
    4: logging.ERROR,
    5: logging.DEBUG,
}

# ggml's type ids for the KV cache types (ggml.h, enum ggml_type); the bindings have no
# GGML_TYPE_BF16, which is 30 there.
GGML_KV_TYPES: dict[str, int] = {
    "f32": L.GGML_TYPE_F32,
    "f16": L.GGML_TYPE_F16,
    "bf16": 30,
    "q8_0": L.GGML_TYPE_Q8_0,
    "q4_0": L.GGML_TYPE_Q4_0,
    "q4_1": L.GGML_TYPE_Q4_1,
    "iq4_nl": L.GGML_TYPE_IQ4_NL,
    "q5_0": L.GGML_TYPE_Q5_0,
    "q5_1": L.GGML_TYPE_Q5_1,
}
FLASH_ATTN_TYPES: dict[str, int] = {
    "auto": L.LLAMA_FLASH_ATTN_TYPE_AUTO,
    "on": L.LLAMA_FLASH_ATTN_TYPE_ENABLED,
    "off": L.LLAMA_FLASH_ATTN_TYPE_DISABLED,
}
# Lists that llama.cpp's log lines are appended to while a caller listens (see
# _init_context); only the thread that made the call reads them.
_log_listeners: list[list[str]] = []


def _init_context(model: Model, params: Any) -> tuple[Any, list[str]]:
    """``llama_init_from_model``, and the log lines llama.cpp wrote meanwhile: what it
    decided and has no call for (flash attention on or off, the sliding-window cache's
    size)."""
    lines: list[str] = []
    _log_listeners.append(lines)
    try:
        return L.llama_init_from_model(model.handle, params), lines
    finally:
        _log_listeners.remove(lines)


def init_backend() -> None:
    """Initialise llama.cpp once per process and route its log lines to ``logging``."""
    with _backend_lock:
        if _backend:
            return

        @L.llama_log_callback  # type: ignore[untyped-decorator]
        def forward(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
            message = text.decode("utf-8", "replace").rstrip()
            for listener in _log_listeners:
                listener.append(message)
            if message:
                log.log(_LEVELS.get(level, logging.DEBUG), "%s", message)

        _backend["log"] = forward
        L.llama_log_set(forward, ctypes.c_void_p(0))
        L.llama_backend_init()


def supports_gpu_offload() -> bool:
    init_backend()
    return bool(L.llama_supports_gpu_offload())


class Model:
    """A loaded GGUF (weights only; contexts hold the KV cache)."""

    def __init__(
        self,
        paths: Sequence[Path],
        *,
        n_gpu_layers: int = -1,
        tensor_split: Sequence[int] = (),
        cpu_repack: bool = True,
    ) -> None:
        """``tensor_split``: offloaded layers per device, in llama.cpp's device order
        (the plan's split); empty for llama.cpp's own, in proportion to free memory.
        ``cpu_repack``: let the CPU keep weights in its repacked layouts (llama.cpp's
        "extra buffer types"), faster kernels that sum in another order; off, the CPU
        computes as an RPC worker's plain CPU backend does (LOCALSERVE_CPU_REPACK)."""
        init_backend()
        params = L.llama_model_default_params()
        params.n_gpu_layers = n_gpu_layers
        params.use_extra_bufts = cpu_repack
        if any(tensor_split):
            # Read during the load only, llama_max_devices() floats of it.
            split = (ctypes.c_float * max(int(L.llama_max_devices()), len(tensor_split)))(
                *map(float, tensor_split)
            )
            params.tensor_split = ctypes.cast(split, ctypes.POINTER(ctypes.c_float))
        # With no layers offloaded, llama.cpp would still create a GPU context and
        # compute buffers on it (op offload): ~0.5 GiB of VRAM that /api/ps cannot
        # show, measured on an H200. An empty, NULL-terminated device list keeps a
        # CPU-only load off the GPU entirely. The list is read during the load only.
        no_devices = (ctypes.c_void_p * 1)(None)
        if n_gpu_layers == 0:
            params.devices = ctypes.addressof(no_devices)
        if len(paths) == 1:
            handle = L.llama_model_load_from_file(str(paths[0]).encode(), params)
        else:
            array = (ctypes.c_char_p * len(paths))(*[str(p).encode() for p in paths])
            handle = L.llama_model_load_from_splits(array, len(paths), params)
        if not handle:
            raise EngineError(
                f"llama.cpp could not load {Path(paths[0]).name} (see the runner log)"
            )
        self.handle = handle
        self.n_gpu_layers = n_gpu_layers
        self.vocab = L.llama_model_get_vocab(handle)
        self.n_vocab = int(L.llama_vocab_n_tokens(self.vocab))
        self.n_ctx_train = int(L.llama_model_n_ctx_train(handle))
        self.n_embd = int(L.llama_model_n_embd(handle))
        self.add_bos = bool(L.llama_vocab_get_add_bos(self.vocab))
        self.n_swa = int(L.llama_model_n_swa(handle))
        self.is_recurrent = bool(L.llama_model_is_recurrent(handle))
        # Whether its positions are plain RoPE, which cells can be moved in (not M-RoPE,
        # whose positions have several dimensions).
        self.rope_shifts = int(L.llama_model_rope_type(handle)) in (
            L.LLAMA_ROPE_TYPE_NONE,
            L.LLAMA_ROPE_TYPE_NORM,
            L.LLAMA_ROPE_TYPE_NEOX,
        )
        self.has_encoder = bool(L.llama_model_has_encoder(handle))
        self.has_decoder = bool(L.llama_model_has_decoder(handle))
        self._pieces: dict[int, bytes] = {}
        self._eog: list[int] | None = None
        # LoRA adapters loaded onto this model (LoraAdapter), applied to every context
        # made from it afterwards; freed with it.
        self.adapters: list[LoraAdapter] = []

    def close(self) -> None:
        """Free the model and its adapters (close every context made from it first)."""
        for adapter in list(self.adapters):
            adapter.close()
        if self.handle:
            L.llama_model_free(self.handle)
            self.handle = None

    # --------------------------------------------------------------- metadata

    def meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(4096)
        n = L.llama_model_meta_val_str(self.handle, key.encode(), buf, len(buf))
        if n < 0:
            return None
        if n >= len(buf):
            buf = ctypes.create_string_buffer(n + 1)
            L.llama_model_meta_val_str(self.handle, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", "replace")

    def chat_template(self, name: str | None = None) -> str | None:
        """The GGUF's chat template; ``name`` a named one (``tokenizer.chat_template.NAME``,
        e.g. "rerank")."""
        raw = L.llama_model_chat_template(self.handle, name.encode() if name else None)
        return raw.decode("utf-8", "replace") if raw else None

    def token_text(self, token: int) -> str:
        """A special token's text as the tokenizer knows it (e.g. ``<s>``), for templates."""
        if token < 0:
            return ""
        return self.piece(token, special=True).decode("utf-8", "replace")

    def vocabulary(self) -> list[bytes]:
        """Every token's text as the vocabulary stores it (``▁the``, ``<0x0A>``): what
        two models must agree on to share token ids. Read directly, not rendered."""
        text = L.llama_vocab_get_text
        return [text(self.vocab, token) or b"" for token in range(self.n_vocab)]

    @property
    def bos(self) -> int:
        return int(L.llama_vocab_bos(self.vocab))

    @property
    def eos(self) -> int:
        return int(L.llama_vocab_eos(self.vocab))

    @property
    def sep(self) -> int:
        return int(L.llama_vocab_sep(self.vocab))

    @property
    def add_eos(self) -> bool:
        return bool(L.llama_vocab_get_add_eos(self.vocab))

    @property
    def add_sep(self) -> bool:
        return bool(L.llama_vocab_get_add_sep(self.vocab))

    @property
    def n_cls_out(self) -> int:
        """Outputs of a classification head (rank pooling's scores; 1 for most rerankers)."""
        return int(L.llama_model_n_cls_out(self.handle))

    def is_eog(self, token: int) -> bool:
        return bool(L.llama_vocab_is_eog(self.vocab, token))

    def eog_tokens(self) -> list[int]:
        if self._eog is None:
            self._eog = [t for t in range(self.n_vocab) if L.llama_vocab_is_eog(self.vocab, t)]
        return self._eog

    # ------------------------------------------------------------------- text

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool = True) -> list[int]:
        data = text.encode("utf-8")
        capacity = len(data) + 16
        buf = (L.llama_token * capacity)()
        n = L.llama_tokenize(self.vocab, data, len(data), buf, capacity, add_special, parse_special)
        if n < 0:
            capacity = -n
            buf = (L.llama_token * capacity)()
            n = L.llama_tokenize(
                self.vocab, data, len(data), buf, capacity, add_special, parse_special
            )
        if n < 0:
            raise EngineError("tokenization failed")
        return list(buf[:n])

    def fim_tokens(self) -> tuple[int, int, int] | None:
        """Fill-in-the-middle prefix, suffix and middle tokens, if the vocabulary has them."""
        found = (
            int(L.llama_vocab_fim_pre(self.vocab)),
            int(L.llama_vocab_fim_suf(self.vocab)),
            int(L.llama_vocab_fim_mid(self.vocab)),
        )
        return None if min(found) < 0 else found

    def piece(self, token: int, *, special: bool = False) -> bytes:
        """The bytes a token stands for (cached: the same token is decoded again and again)."""
        key = token if not special else -1 - token
        cached = self._pieces.get(key)
        if cached is not None:
            return cached
        buf = ctypes.create_string_buffer(64)
        n = L.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = L.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        data = buf.raw[: max(0, n)]
        self._pieces[key] = data
        return data


class LoraAdapter:
    """A LoRA adapter GGUF loaded onto a model (check it first: store/adapter.py).

    llama.cpp keeps the adapter's weights next to the base tensors they update (on the
    GPU for offloaded layers) and registers the adapter with the model: an adapter
    still registered when the model is freed is deleted with it, and
    ``llama_adapter_lora_free`` unregisters it first. So it is freed either way exactly
    once: by ``close`` (which ``Model.close`` calls first) while the model lives, never
    after. Contexts hold bare pointers to the adapters applied to them: close those
    contexts before the adapter.

    ``scale`` is what contexts made from the model apply it with by default (llama.cpp
    multiplies the update by ``scale x alpha / rank``; 0 turns it off).
    """

    def __init__(self, model: Model, path: Path, *, scale: float = 1.0) -> None:
        if not math.isfinite(scale):
            raise EngineError(f"the scale of adapter {path.name} must be a finite number")
        handle = L.llama_adapter_lora_init(model.handle, str(path).encode())
        if not handle:
            raise EngineError(
                f"llama.cpp could not load the LoRA adapter {path.name} (see the runner log)"
            )
        self.handle: Any = handle
        self.model = model
        self.path = path
        self.scale = float(scale)
        model.adapters.append(self)

    def close(self) -> None:
        if self.handle and self.model.handle:  # after the model, llama.cpp freed it already
            L.llama_adapter_lora_free(self.handle)
        self.handle = None
        if self in self.model.adapters:
            self.model.adapters.remove(self)


@dataclass(frozen=True)
class ContextShape:
    """What llama.cpp actually gave us (it may round or cap what we asked for)."""

    n_ctx: int
    n_ctx_seq: int
    n_batch: int
    n_ubatch: int
    n_seq_max: int
    # Cells of the sliding-window layers' own cache (llama.cpp's iSWA cache), as
    # llama.cpp logged it; 0: the model has none.
    swa_cells: int = 0


class Context:
    """A llama.cpp context: the KV cache and the compute buffers for one model."""

    def __init__(
        self,
        model: Model,
        options: LoadOptions,
        *,
        n_threads: int,
        embeddings: bool = False,
        pooling: int | None = None,
        n_ctx: int | None = None,
        adapters: Sequence[tuple[LoraAdapter, float]] | None = None,
    ) -> None:
        """``adapters``: the LoRA adapters and scales to apply; None applies the model's
        (``model.adapters``, each at its own scale)."""
        params = L.llama_context_default_params()
        params.n_seq_max = options.num_parallel
        # Unified KV: one pool of cells for all sequences (``n_ctx`` when given, e.g. for
        # embeddings, where the inputs of one batch share a context's worth of cells).
        params.n_ctx = n_ctx or options.num_ctx * options.num_parallel
        params.n_batch = options.num_batch
        params.n_ubatch = min(options.num_ubatch, options.num_batch)
        params.n_threads = n_threads
        params.n_threads_batch = n_threads
        # One KV pool shared by all sequences: any sequence may use any cell, and
        # copying a cached prefix from one sequence to another costs nothing.
        params.kv_unified = True
        # Sliding-window layers keep only their window (llama.cpp's iSWA cache), unless
        # ``swa_full`` asks for a cache as long as the pool. Either way llama.cpp may
        # overwrite cells behind a sequence's window: the engine checks a sequence's
        # lowest position before it continues one from a shorter prefix (and keeps
        # checkpoints of the window for that).
        params.swa_full = options.swa_full
        # The KV cache's type (K and V alike) and flash attention: llama.cpp reads a
        # quantized V cache only through flash attention (config.check_kv_flash_attention refuses "off").
        kv_type = kv_cache_type(options.kv_cache_type)
        flash = flash_attention_mode(options.flash_attention)
        check_kv_flash_attention(kv_type, flash)
        params.type_k = params.type_v = GGML_KV_TYPES[kv_type]
        params.flash_attn_type = FLASH_ATTN_TYPES[flash]
        if flash == "auto" and kv_type not in PLAIN_KV_CACHE_TYPES:
            _check_flash_attention(model, kv_type, n_threads)
        params.embeddings = embeddings
        if pooling is not None:
            params.pooling_type = pooling
        params.no_perf = True
        handle, lines = _init_context(model, params)
        if not handle:
            if kv_type != "f16" or flash != "auto":
                raise EngineError(
                    f"llama.cpp could not create a context with a {kv_type} KV cache and "
                    f"flash attention {flash} (see the runner log)"
                )
            raise EngineError("llama.cpp could not create a context (out of memory?)")
        self.handle = handle
        self.model = model
        self.kv_cache_type = kv_type
        self.memory = L.llama_get_memory(handle)
        self.shape = ContextShape(
            n_ctx=int(L.llama_n_ctx(handle)),
            n_ctx_seq=int(L.llama_n_ctx_seq(handle)),
            n_batch=int(L.llama_n_batch(handle)),
            n_ubatch=int(L.llama_n_ubatch(handle)),
            n_seq_max=int(L.llama_n_seq_max(handle)),
            swa_cells=_swa_cells(lines),
        )
        # Whether cells may be shifted to other positions (llama_memory_seq_add): not with
        # a window-sized cache, recurrent state or M-RoPE (llama_memory_can_shift).
        self.can_shift = bool(L.llama_memory_can_shift(self.memory))
        if adapters is None:
            adapters = [(adapter, adapter.scale) for adapter in model.adapters]
        if adapters:
            self.set_adapters(adapters)

    def close(self) -> None:
        if self.handle:
            L.llama_free(self.handle)
            self.handle = None

    def set_adapters(self, adapters: Sequence[tuple[LoraAdapter, float]]) -> None:
        """Apply exactly these LoRA adapters at these scales (none: an empty list).
        llama.cpp re-plans its graph at the next decode; a scale of 0 is no adapter."""
        n = len(adapters)
        if any(adapter.handle is None for adapter, _ in adapters):
            raise EngineError("a LoRA adapter was used after it was closed")
        handles = (L.llama_adapter_lora_p_ctypes * n)(*[a.handle for a, _ in adapters])
        scales = (ctypes.c_float * n)(*[float(s) for _, s in adapters])
        L.llama_set_adapters_lora(self.handle, handles if n else None, n, scales if n else None)

    def decode(self, batch: Batch) -> int:
        return int(L.llama_decode(self.handle, batch.struct))

    def encode(self, batch: Batch) -> int:
        """For encoder-only models (BERT-style embedders), which cannot ``decode``."""
        return int(L.llama_encode(self.handle, batch.struct))

    # KV memory, by sequence id. Only the engine thread may call these (rule 7).

    def seq_rm(self, seq: int, p0: int = -1, p1: int = -1) -> bool:
        return bool(L.llama_memory_seq_rm(self.memory, seq, p0, p1))

    def seq_cp(self, src: int, dst: int, p0: int = -1, p1: int = -1) -> None:
        L.llama_memory_seq_cp(self.memory, src, dst, p0, p1)

    def seq_pos_max(self, seq: int) -> int:
        return int(L.llama_memory_seq_pos_max(self.memory, seq))

    def seq_pos_min(self, seq: int) -> int:
        """The lowest position ``seq`` holds (-1: none). With a sliding window, that of
        the window's cache: llama.cpp overwrites cells that fell out of the window."""
        return int(L.llama_memory_seq_pos_min(self.memory, seq))

    def seq_add(self, seq: int, p0: int, p1: int, delta: int) -> None:
        """Move ``seq``'s cells at positions [p0, p1) by ``delta`` (RoPE re-applied by
        llama.cpp at the next decode); only where ``can_shift``."""
        L.llama_memory_seq_add(self.memory, seq, p0, p1, delta)

    def seq_state(self, seq: int, *, window_only: bool = False) -> bytes:
        """A copy of one sequence's KV cells, to keep in host memory; ``window_only``:
        just the sliding-window layers' cells (a checkpoint of the window)."""
        flags = L.LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY if window_only else 0
        size = int(L.llama_state_seq_get_size_ext(self.handle, seq, flags))
        buffer = (ctypes.c_uint8 * size)()
        written = int(L.llama_state_seq_get_data_ext(self.handle, buffer, size, seq, flags))
        return bytes(memoryview(buffer)[:written])

    def set_seq_state(self, seq: int, state: bytes, *, window_only: bool = False) -> bool:
        """Put a copy from ``seq_state`` back as ``seq`` (replacing what it held in those
        layers); False when llama.cpp finds no room for it."""
        flags = L.LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY if window_only else 0
        buffer = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
        return int(L.llama_state_seq_set_data_ext(self.handle, buffer, len(state), seq, flags)) > 0

    def clear(self) -> None:
        L.llama_memory_clear(self.memory, True)

    def logits(self, row: int) -> np.ndarray[Any, np.dtype[np.float32]]:
        pointer = L.llama_get_logits_ith(self.handle, row)
        if not pointer:
            raise EngineError(f"no logits for batch row {row}")
        return np.ctypeslib.as_array(pointer, shape=(self.model.n_vocab,))

    def pooled(self, seq: int, width: int) -> np.ndarray[Any, np.dtype[np.float32]]:
        """The pooled output of ``seq`` after the last decode, ``width`` floats: n_embd for
        a pooled embedding, n_cls_out for rank pooling's classification head."""
        pointer = L.llama_get_embeddings_seq(self.handle, seq)
        if not pointer:
            raise EngineError("the model returned no pooled output")
        return np.ctypeslib.as_array(pointer, shape=(width,))

    def embedding(self, seq: int) -> list[float]:
        vector = self.pooled(seq, self.model.n_embd).astype(np.float64)
        norm = float(np.linalg.norm(vector))
        return [float(x) for x in (vector / norm if norm > 0 else vector)]


_SWA_CACHE = re.compile(r"creating\s+SWA KV cache, size = (\d+) cells")


def _swa_cells(lines: Sequence[str]) -> int:
    """The sliding-window cache's size from llama.cpp's log of a context's creation."""
    for line in lines:
        found = _SWA_CACHE.search(line)
        if found:
            return int(found.group(1))
    return 0


def _on_gpu(model: Model) -> bool:
    """Whether llama.cpp put any of the model's layers on a GPU."""
    return model.n_gpu_layers != 0 and supports_gpu_offload()


def _check_flash_attention(model: Model, kv_type: str, n_threads: int) -> None:
    """With "auto" and a quantized V cache, llama.cpp turns flash attention on without
    asking the backend (llama_init_from_model), skipping the check "auto" otherwise
    makes: where the GPU backend has no flash-attention kernel, ggml would quietly run
    every layer's attention on the CPU, copying the cache across each step. The CPU
    backend always has one; on a GPU, ask llama.cpp and refuse clearly instead."""
    if _on_gpu(model) and not flash_attention_supported(model, n_threads=n_threads):
        raise InvalidOptionError(
            f"a {kv_type} V cache needs flash attention, which this llama.cpp build "
            "cannot run on the GPU for this model",
            hint="use kv_cache_type f16, or flash_attention on to run the attention on "
            "the CPU instead (slow)",
        )


def flash_attention_supported(model: Model, *, n_threads: int = 1) -> bool:
    """Whether llama.cpp's "auto" turns flash attention on for ``model`` on the devices
    its layers went to: a throwaway context (256 cells, f16, one-token batches) is made
    with "auto", and llama.cpp's verdict read from its log (it has no call for it)."""
    params = L.llama_context_default_params()
    params.n_ctx = 256
    params.n_batch = params.n_ubatch = 1
    params.n_seq_max = 1
    params.n_threads = params.n_threads_batch = n_threads
    params.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_AUTO
    params.no_perf = True
    handle, lines = _init_context(model, params)
    if not handle:
        raise EngineError("llama.cpp could not create a context (out of memory?)")
    L.llama_free(handle)
    return not any("Flash Attention not supported" in line for line in lines)


class Batch:
    """A llama_batch allocated once and refilled every step (rule: never more tokens than it holds)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.struct = L.llama_batch_init(capacity, 0, 1)
        # numpy views over the C arrays: filling a 512-token prompt chunk field by
        # field through ctypes would cost milliseconds per step.
        self.token = np.ctypeslib.as_array(self.struct.token, shape=(capacity,))
        self.pos = np.ctypeslib.as_array(self.struct.pos, shape=(capacity,))
        self.n_seq_id = np.ctypeslib.as_array(self.struct.n_seq_id, shape=(capacity,))
        self.logits = np.ctypeslib.as_array(
            ctypes.cast(self.struct.logits, ctypes.POINTER(ctypes.c_int8)), shape=(capacity,)
        )
        self.seq_ids = [
            np.ctypeslib.as_array(self.struct.seq_id[i], shape=(1,)) for i in range(capacity)
        ]
        self.n_tokens = 0

    def clear(self) -> None:
        self.n_tokens = 0
        self.struct.n_tokens = 0

    def add(
        self,
        tokens: Sequence[int],
        start_pos: int,
        seq: int,
        want_last_logits: bool,
        *,
        want_all_logits: bool = False,
    ) -> None:
        n = len(tokens)
        i = self.n_tokens
        if i + n > self.capacity:
            raise EngineError("batch overflow")  # a bug in the caller, never user input
        self.token[i : i + n] = tokens
        self.pos[i : i + n] = np.arange(start_pos, start_pos + n, dtype=np.int32)
        self.n_seq_id[i : i + n] = 1
        self.logits[i : i + n] = 1 if want_all_logits else 0
        for row in range(i, i + n):
            self.seq_ids[row][0] = seq
        if want_last_logits:
            self.logits[i + n - 1] = 1
        self.n_tokens = i + n
        self.struct.n_tokens = self.n_tokens

    def close(self) -> None:
        L.llama_batch_free(self.struct)
