"""A tiny random-weight image projector (``mmproj``) GGUF for llama.cpp's mtmd library.

Projector type ``gemma3`` (a SigLIP-style vision tower, average pooling, a soft
embedding norm and an input projection), sized so that its output width equals the
text model's embedding width. The tensor names, shapes and metadata keys follow the
vendored llama.cpp's ``tools/mtmd/clip-impl.h`` and ``clip.cpp`` (read there, written
here); ``../shared/NOTES-mtmd.md`` has the facts that were checked. With the defaults
an image becomes ((image_size / patch_size) / scale_factor)^2 = 4 tokens.

``write_tiny_audio_projector`` writes a sound projector of type ``ultravox``: a
Whisper-style encoder (two 1-D convolutions, a transformer over 1500 positions), frames
stacked ``stack_factor`` at a time, then an RMS norm, a SwiGLU and a linear layer to the
text model's width. mtmd's Whisper preprocessor cuts any sound into 30 s windows of
3000 mel frames (a shorter sound is padded with silence), the second convolution halves
them, so each window becomes 1500 / stack_factor embeddings: 25 with the defaults, the
same for every sound up to 30 s. Ultravox wraps a sound in no text of its own.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from tests.support.tiny_gguf import finish_gguf


def write_tiny_projector(
    path: str | Path,
    *,
    text_embd: int = 64,
    width: int = 32,
    ffn: int = 48,  # must differ from ``width``: clip.cpp swaps up and down otherwise
    blocks: int = 1,
    heads: int = 2,
    image_size: int = 32,
    patch_size: int = 8,
    scale_factor: int = 2,
    seed: int = 0,
) -> Path:
    """Write the projector to ``path``; same arguments, same bytes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    def weights(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float32)

    def ones(size: int) -> np.ndarray:
        return np.ones(size, dtype=np.float32)

    def zeros(size: int) -> np.ndarray:
        return np.zeros(size, dtype=np.float32)

    writer = gguf.GGUFWriter(path, "clip")
    writer.add_name("tiny-projector")
    writer.add_bool("clip.has_vision_encoder", True)
    writer.add_string("clip.projector_type", "gemma3")
    vision = "clip.vision."
    writer.add_uint32(vision + "embedding_length", width)
    writer.add_uint32(vision + "feed_forward_length", ffn)
    writer.add_uint32(vision + "block_count", blocks)
    writer.add_uint32(vision + "projection_dim", text_embd)
    writer.add_uint32(vision + "attention.head_count", heads)
    writer.add_float32(vision + "attention.layer_norm_epsilon", 1e-6)
    writer.add_uint32(vision + "image_size", image_size)
    writer.add_uint32(vision + "patch_size", patch_size)
    writer.add_array(vision + "image_mean", [0.5, 0.5, 0.5])
    writer.add_array(vision + "image_std", [0.5, 0.5, 0.5])
    writer.add_uint32(vision + "projector.scale_factor", scale_factor)

    patches = (image_size // patch_size) ** 2
    # numpy shapes are ggml's ne reversed.
    tensors: list[tuple[str, np.ndarray]] = [
        ("v.patch_embd.weight", weights(width, 3, patch_size, patch_size)),
        ("v.patch_embd.bias", zeros(width)),
        ("v.position_embd.weight", weights(patches, width)),
    ]
    for i in range(blocks):
        block = f"v.blk.{i}."
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            tensors += [(block + name + ".weight", weights(width, width))]
            tensors += [(block + name + ".bias", zeros(width))]
        tensors += [
            (block + "ln1.weight", ones(width)),
            (block + "ln1.bias", zeros(width)),
            (block + "ln2.weight", ones(width)),
            (block + "ln2.bias", zeros(width)),
            (block + "ffn_up.weight", weights(ffn, width)),
            (block + "ffn_up.bias", zeros(ffn)),
            (block + "ffn_down.weight", weights(width, ffn)),
            (block + "ffn_down.bias", zeros(width)),
        ]
    tensors += [
        ("v.post_ln.weight", ones(width)),
        ("v.post_ln.bias", zeros(width)),
        ("mm.soft_emb_norm.weight", ones(width)),
        # ne[0] is the text model's width: the projector's output must match it.
        ("mm.input_projection.weight", weights(width, text_embd)),
    ]
    finish_gguf(writer, tensors)
    return path


AUDIO_POSITIONS = 1500  # a 30 s window of 3000 mel frames after the stride-2 convolution


def write_tiny_audio_projector(
    path: str | Path,
    *,
    text_embd: int = 64,
    width: int = 32,
    ffn: int = 48,  # differs from ``width``, as for images (clip.cpp's up/down swap check)
    blocks: int = 1,
    heads: int = 2,
    mel_bins: int = 16,
    stack_factor: int = 60,  # must divide 1500 so that mtmd's count and the graph agree
    hidden: int = 64,
    seed: int = 0,
) -> Path:
    """Write an ``ultravox``-type audio projector to ``path``; same arguments, same bytes."""
    if AUDIO_POSITIONS % stack_factor:
        raise ValueError(f"stack_factor must divide {AUDIO_POSITIONS}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    def weights(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float32)

    def ones(size: int) -> np.ndarray:
        return np.ones(size, dtype=np.float32)

    def zeros(*shape: int) -> np.ndarray:
        return np.zeros(shape, dtype=np.float32)

    writer = gguf.GGUFWriter(path, "clip")
    writer.add_name("tiny-audio-projector")
    writer.add_bool("clip.has_audio_encoder", True)
    writer.add_string("clip.projector_type", "ultravox")
    audio = "clip.audio."
    writer.add_uint32(audio + "num_mel_bins", mel_bins)
    writer.add_uint32(audio + "embedding_length", width)
    writer.add_uint32(audio + "feed_forward_length", ffn)
    writer.add_uint32(audio + "block_count", blocks)
    writer.add_uint32(audio + "projection_dim", text_embd)
    writer.add_uint32(audio + "attention.head_count", heads)
    writer.add_float32(audio + "attention.layer_norm_epsilon", 1e-5)
    writer.add_uint32(audio + "projector.stack_factor", stack_factor)

    stacked = width * stack_factor
    # numpy shapes are ggml's ne reversed: a convolution kernel is (out, in, kernel size),
    # its bias (out, 1) so that it broadcasts over the frames.
    tensors: list[tuple[str, np.ndarray]] = [
        ("a.conv1d.1.weight", weights(width, mel_bins, 3)),
        ("a.conv1d.1.bias", zeros(width, 1)),
        ("a.conv1d.2.weight", weights(width, width, 3)),
        ("a.conv1d.2.bias", zeros(width, 1)),
        ("a.position_embd.weight", weights(AUDIO_POSITIONS, width)),
    ]
    for i in range(blocks):
        block = f"a.blk.{i}."
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            tensors += [(block + name + ".weight", weights(width, width))]
            if name != "attn_k":  # Whisper's key projection has no bias (clip.cpp asserts it)
                tensors += [(block + name + ".bias", zeros(width))]
        tensors += [
            (block + "ln1.weight", ones(width)),
            (block + "ln1.bias", zeros(width)),
            (block + "ln2.weight", ones(width)),
            (block + "ln2.bias", zeros(width)),
            (block + "ffn_up.weight", weights(ffn, width)),
            (block + "ffn_up.bias", zeros(ffn)),
            (block + "ffn_down.weight", weights(width, ffn)),
            (block + "ffn_down.bias", zeros(width)),
        ]
    tensors += [
        ("a.post_ln.weight", ones(width)),
        ("a.post_ln.bias", zeros(width)),
        ("mm.a.norm_pre.weight", ones(stacked)),
        ("mm.a.mlp.1.weight", weights(2 * hidden, stacked)),  # SwiGLU: gate and value halves
        ("mm.a.norm_mid.weight", ones(hidden)),
        # ne[1] is the text model's width: the projector's output must match it.
        ("mm.a.mlp.2.weight", weights(text_embd, hidden)),
    ]
    finish_gguf(writer, tensors)
    return path
