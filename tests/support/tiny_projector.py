"""A tiny random-weight image projector (``mmproj``) GGUF for llama.cpp's mtmd library.

Projector type ``gemma3`` (a SigLIP-style vision tower, average pooling, a soft
embedding norm and an input projection), sized so that its output width equals the
text model's embedding width. The tensor names, shapes and metadata keys follow the
vendored llama.cpp's ``tools/mtmd/clip-impl.h`` and ``clip.cpp`` (read there, written
here); ``../shared/NOTES-mtmd.md`` has the facts that were checked. With the defaults
an image becomes ((image_size / patch_size) / scale_factor)^2 = 4 tokens.
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
