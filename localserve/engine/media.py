"""Images and audio in, through llama.cpp's multimodal library (mtmd).

A model with a projector (``mmproj`` GGUF) reads media: the projector turns an image
or a sound into embeddings of the text model's width, which are decoded into the
sequence's KV cells like tokens. ``mtmd_tokenize`` splits a prompt whose text holds
one marker per medium into chunks: text tokens, then a medium, then text again.

The batching loop (engine.py) keeps seeing a prompt as a flat list of ints: each
medium stands in it as placeholder ids, one per position it takes, negative (no
real token is) and derived from the medium's sha256 (mtmd names a bitmap by the
hash of its bytes). So the same image in the next turn gives the same placeholders,
and the prefix cache reuses its cells instead of encoding it again, with no
special case; a different image differs at its first placeholder.

Why not ``mtmd_helper_eval_chunks`` for the whole prompt: it decodes one sequence
alone, start to end. Here each medium is one step of the loop (encode, then decode
its embeddings), and the text around it goes into the shared batch with everyone
else's tokens, so one request's image stalls other streams for one medium at most.
"""

from __future__ import annotations

import ctypes
import secrets
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp.llama_cpp as L  # noqa: TID253 - the engine owns llama_cpp
import llama_cpp.mtmd_cpp as M  # noqa: TID253 - the engine owns llama_cpp

from localserve.engine.llama import Context, Model, init_backend
from localserve.errors import EngineError, InvalidOptionError

PLACEHOLDER_SPACE = 1 << 62
_MIN_SAMPLES = 2  # mtmd.cpp asserts a sound holds more than one float


@dataclass(eq=False)
class MediaChunk:
    """One image or sound of a prompt, owned by the prompt's jobs; freed with them."""

    handle: Any  # mtmd_input_chunk*, a copy this object owns
    kind: str  # "image" or "audio"
    n_tokens: int  # embeddings (KV cells)
    n_pos: int  # positions (fewer than cells for M-RoPE models)
    digest: str  # sha256 of the medium's bytes, from mtmd

    def __post_init__(self) -> None:
        weakref.finalize(self, M.mtmd_input_chunk_free, self.handle)

    def placeholders(self) -> list[int]:
        base = int(self.digest[:15] or "0", 16)
        return [-1 - (base + i) % PLACEHOLDER_SPACE for i in range(self.n_pos)]


@dataclass(frozen=True)
class MediaPrompt:
    """Prompt ids with placeholders, and where each medium starts in them."""

    tokens: list[int]
    media: dict[int, MediaChunk]


def _route_logs() -> None:
    """mtmd and its helper print to stderr by default; send them where llama.cpp's go."""
    from localserve.engine.llama import _backend

    forward = _backend.get("log")
    if forward is not None and not _backend.get("mtmd_log"):
        M.mtmd_log_set(forward, ctypes.c_void_p(0))
        M.mtmd_helper_log_set(forward, ctypes.c_void_p(0))
        _backend["mtmd_log"] = True


class Projector:
    """A loaded projector (mtmd context) bound to its text model."""

    def __init__(self, path: Path, model: Model, *, n_threads: int, use_gpu: bool) -> None:
        init_backend()
        _route_logs()
        params = M.mtmd_context_params_default()
        params.use_gpu = use_gpu
        params.n_threads = n_threads
        params.print_timings = False
        params.warmup = False
        # A marker nobody can type: a user's text that happens to hold mtmd's default
        # "<__media__>" stays text instead of asking for an image that is not there.
        self._marker_bytes = f"<__media_{secrets.token_hex(8)}__>".encode()
        params.media_marker = self._marker_bytes
        handle = M.mtmd_init_from_file(str(path).encode(), model.handle, params)
        if not handle:
            raise EngineError(
                f"llama.cpp could not load the projector {path.name}: "
                "it does not match the model or is damaged (see the runner log)"
            )
        self.handle = handle
        self.model = model
        self.marker = self._marker_bytes.decode()
        self.vision = bool(M.mtmd_support_vision(handle))
        self.audio = bool(M.mtmd_support_audio(handle))
        self.encoded = 0  # media encoded since load (the prefix cache saves the rest)

    def close(self) -> None:
        if self.handle:
            M.mtmd_free(self.handle)
            self.handle = None

    @property
    def capabilities(self) -> list[str]:
        return (["vision"] if self.vision else []) + (["audio"] if self.audio else [])

    def tokenize(self, text: str, media: Sequence[bytes], *, add_special: bool) -> MediaPrompt:
        """Split ``text`` (one marker per medium, in order) into ids and media chunks."""
        bitmaps = [self._bitmap(data, number) for number, data in enumerate(media)]
        chunks = M.mtmd_input_chunks_init()
        try:
            encoded = text.encode("utf-8")
            source = M.mtmd_input_text(encoded, len(encoded), add_special, True)
            array = (M.mtmd_bitmap_p_ctypes * max(1, len(bitmaps)))(*bitmaps)
            rc = M.mtmd_tokenize(self.handle, chunks, ctypes.byref(source), array, len(bitmaps))
            if rc == 1:
                raise InvalidOptionError(
                    "the chat template did not place every image: "
                    f"{text.count(self.marker)} places for {len(bitmaps)} images"
                )
            if rc != 0:
                raise InvalidOptionError("an image could not be prepared for the model")
            return self._flatten(chunks)
        finally:
            M.mtmd_input_chunks_free(chunks)
            for bitmap in bitmaps:
                M.mtmd_bitmap_free(bitmap)

    def _bitmap(self, data: bytes, number: int) -> Any:
        buffer = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        bitmap = M.mtmd_helper_bitmap_init_from_buf(self.handle, buffer, len(data), False)
        if not bitmap:
            raise InvalidOptionError(f"image {number + 1} could not be decoded")
        if M.mtmd_bitmap_is_audio(bitmap) and not self.audio:
            M.mtmd_bitmap_free(bitmap)
            raise InvalidOptionError("the model does not support audio")
        if not M.mtmd_bitmap_is_audio(bitmap) and not self.vision:
            M.mtmd_bitmap_free(bitmap)
            raise InvalidOptionError("the model does not support images")
        if M.mtmd_bitmap_is_audio(bitmap) and M.mtmd_bitmap_get_nx(bitmap) < _MIN_SAMPLES:
            # mtmd_tokenize aborts the whole process (GGML_ASSERT) on a sound of one
            # sample or none: a valid WAV with no frames must not take the runner down.
            M.mtmd_bitmap_free(bitmap)
            raise InvalidOptionError(f"sound {number + 1} is too short: it has almost no samples")
        return bitmap

    def _flatten(self, chunks: Any) -> MediaPrompt:
        tokens: list[int] = []
        media: dict[int, MediaChunk] = {}
        for i in range(M.mtmd_input_chunks_size(chunks)):
            chunk = M.mtmd_input_chunks_get(chunks, i)
            kind = M.mtmd_input_chunk_get_type(chunk)
            if kind == M.MTMD_INPUT_CHUNK_TYPE_TEXT:
                count = ctypes.c_size_t(0)
                pointer = M.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(count))
                tokens.extend(pointer[i] for i in range(count.value))
                continue
            raw_id = M.mtmd_input_chunk_get_id(chunk)
            owned = MediaChunk(
                handle=M.mtmd_input_chunk_copy(chunk),
                kind="audio" if kind == M.MTMD_INPUT_CHUNK_TYPE_AUDIO else "image",
                n_tokens=int(M.mtmd_input_chunk_get_n_tokens(chunk)),
                n_pos=int(M.mtmd_input_chunk_get_n_pos(chunk)),
                digest=(raw_id or b"").decode("ascii", "replace"),
            )
            media[len(tokens)] = owned
            tokens.extend(owned.placeholders())
        return MediaPrompt(tokens, media)

    def evaluate(self, chunk: MediaChunk, context: Context, n_past: int, seq: int) -> int:
        """Encode one medium and decode its embeddings into ``seq`` at ``n_past``;
        returns llama.cpp's status (0: done, 1: no room in the KV cache)."""
        new_n_past = L.llama_pos(0)
        rc = int(
            M.mtmd_helper_eval_chunk_single(
                self.handle,
                context.handle,
                chunk.handle,
                n_past,
                seq,
                context.shape.n_batch,
                False,
                ctypes.byref(new_n_past),
            )
        )
        if rc == 0:
            self.encoded += 1
        return rc
