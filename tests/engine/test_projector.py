"""The tiny projector (tests/support/tiny_projector.py) against llama.cpp's mtmd library
as llama-cpp-python 0.3.36 binds it: groundwork for images (issue 15). It loads next
to the tiny text model, turns a 32x32 image into 4 embeddings of the text model's
width, different images give different embeddings, and a projector whose output width
does not match the model is refused at load."""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import llama_cpp.mtmd_cpp as M  # noqa: TID253 - the test drives mtmd directly
import numpy as np
import pytest

from localserve.engine.llama import Model
from tests.support.tiny_gguf import write_tiny_gguf
from tests.support.tiny_projector import write_tiny_projector


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Model]:
    loaded = Model([write_tiny_gguf(tmp_path_factory.mktemp("vision") / "tiny.gguf")])
    yield loaded
    loaded.close()


def context(model: Model, projector: Path) -> Any:
    params = M.mtmd_context_params_default()
    params.use_gpu = False
    params.n_threads = 2
    params.warmup = False
    return M.mtmd_init_from_file(str(projector).encode(), model.handle, params)


def image_embeddings(ctx: Any, rgb: bytes, side: int = 32) -> tuple[list[int], np.ndarray]:
    """Chunk sizes of a prompt around one image, and the image's embeddings."""
    bitmap = M.mtmd_bitmap_init(side, side, (ctypes.c_ubyte * len(rgb)).from_buffer_copy(rgb))
    prompt = f"Look: {M.mtmd_default_marker().decode()} what is it?".encode()
    text = M.mtmd_input_text(prompt, len(prompt), True, True)
    chunks = M.mtmd_input_chunks_init()
    try:
        bitmaps = (M.mtmd_bitmap_p_ctypes * 1)(bitmap)
        assert M.mtmd_tokenize(ctx, chunks, ctypes.byref(text), bitmaps, 1) == 0
        sizes, embeddings = [], np.zeros(0)
        for i in range(M.mtmd_input_chunks_size(chunks)):
            chunk = M.mtmd_input_chunks_get(chunks, i)
            count = M.mtmd_input_chunk_get_n_tokens(chunk)
            sizes.append(count)
            if M.mtmd_input_chunk_get_type(chunk) == M.MTMD_INPUT_CHUNK_TYPE_IMAGE:
                assert M.mtmd_encode_chunk(ctx, chunk) == 0
                pointer = M.mtmd_get_output_embd(ctx)
                embeddings = np.ctypeslib.as_array(pointer, shape=(count * 64,)).copy()
        return sizes, embeddings
    finally:
        M.mtmd_input_chunks_free(chunks)
        M.mtmd_bitmap_free(bitmap)


def test_tiny_projector_encodes_images_for_the_tiny_model(model: Model, tmp_path: Path) -> None:
    ctx = context(model, write_tiny_projector(tmp_path / "proj.gguf", text_embd=model.n_embd))
    assert ctx
    try:
        gradient = bytes((i * 7) % 256 for i in range(32 * 32 * 3))
        noise = np.random.default_rng(1).integers(0, 256, 32 * 32 * 3, dtype=np.uint8).tobytes()
        sizes, first = image_embeddings(ctx, gradient)
        assert len(sizes) == 3 and sizes[1] == 4  # text, 4 image tokens, text
        _, second = image_embeddings(ctx, noise)
        assert first.shape == second.shape == (4 * model.n_embd,)
        assert np.all(np.isfinite(first)) and not np.allclose(first, second)
    finally:
        M.mtmd_free(ctx)


def test_a_projector_for_another_width_is_refused(model: Model, tmp_path: Path) -> None:
    wrong = write_tiny_projector(tmp_path / "wide.gguf", text_embd=model.n_embd * 2)
    assert not context(model, wrong)
