"""A tiny random-weight LoRA adapter GGUF for the tiny test model (tiny_gguf.py).

The layout is what the vendored llama.cpp's ``src/llama-adapter.cpp`` reads and what
its ``convert_lora_to_gguf.py`` writes: ``general.type`` "adapter", ``adapter.type``
"lora", ``adapter.lora.alpha`` (float32), and for each base tensor ``W`` it modifies a
pair ``W.lora_a`` / ``W.lora_b``. In ggml's ne order (numpy shapes are reversed), for a
base matrix of ne (n_in, n_out): ``lora_a`` is (n_in, rank) and ``lora_b`` (rank, n_out),
and llama.cpp adds ``scale x alpha / rank x B(A x)`` to ``W x``. ``token_embd.weight``
is the exception: ``lora_a`` is (rank, n_vocab) and ``lora_b`` (rank, n_embd), since the
rows of A are looked up by token like the embeddings themselves.

The weights are random and large (the base model's are 0.02 x N(0, 1); the default
update is several times that), so greedy output of the tiny model visibly changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import gguf
import numpy as np

from tests.support.tiny_gguf import finish_gguf, tiny_vocab

# Matrices of each block of the tiny model, by short name: (n_in, n_out) in ne order,
# as functions of (n_embd, n_embd_kv, n_ff).
_BLOCK_MATRICES = {
    "attn_q": lambda e, kv, ff: (e, e),
    "attn_k": lambda e, kv, ff: (e, kv),
    "attn_v": lambda e, kv, ff: (e, kv),
    "attn_output": lambda e, kv, ff: (e, e),
    "ffn_gate": lambda e, kv, ff: (e, ff),
    "ffn_up": lambda e, kv, ff: (e, ff),
    "ffn_down": lambda e, kv, ff: (ff, e),
}
# Targets outside the blocks: the output projection and the token embeddings.
_TOP_LEVEL = ("output", "token_embd")


def _base_shapes(
    base: Path | None,
    n_layer: int,
    n_embd: int,
    n_head: int,
    n_head_kv: int,
    n_ff: int,
) -> dict[str, tuple[int, ...]]:
    """Base tensor name -> ne shape: read from ``base`` or computed as write_tiny_gguf makes them."""
    if base is not None:
        from localserve.store.gguf import read_gguf

        return {t.name: t.shape for t in read_gguf(base).tensors}
    n_embd_kv = n_embd // n_head * n_head_kv
    n_vocab = len(tiny_vocab().tokens)
    shapes: dict[str, tuple[int, ...]] = {
        "token_embd.weight": (n_embd, n_vocab),
        "output.weight": (n_embd, n_vocab),
    }
    for i in range(n_layer):
        for short, shape in _BLOCK_MATRICES.items():
            shapes[f"blk.{i}.{short}.weight"] = shape(n_embd, n_embd_kv, n_ff)
    return shapes


def lora_targets(shapes: dict[str, tuple[int, ...]], targets: Sequence[str]) -> list[str]:
    """The base tensors ``targets`` names: a block matrix ("attn_q") in every block, or
    "output" / "token_embd"."""
    names = []
    for target in targets:
        if target in _TOP_LEVEL:
            names.append(f"{target}.weight")
            continue
        found = sorted(
            (n for n in shapes if n.startswith("blk.") and n.endswith(f".{target}.weight")),
            key=lambda n: int(n.split(".")[1]),
        )
        if not found:
            raise ValueError(f"the base model has no {target!r} matrices")
        names += found
    return names


def write_tiny_lora(
    path: str | Path,
    *,
    base: Path | None = None,
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 4,
    n_head_kv: int = 2,
    n_ff: int = 128,
    rank: int = 4,
    alpha: float | None = 8.0,
    seed: int = 0,
    targets: Sequence[str] = ("attn_q", "attn_v", "ffn_up", "ffn_down"),
    std: float = 0.2,
    architecture: str = "llama",
    dtype: str = "f32",
    name: str = "tiny-lora",
) -> Path:
    """Write a LoRA adapter for the tiny model to ``path``; same arguments, same bytes.

    The shapes come from ``base`` (a GGUF model) when given, else from the model
    write_tiny_gguf makes with these dimensions. ``targets``: block matrices ("attn_q",
    "ffn_up"...) modified in every block, and/or "output", "token_embd". A and B are
    ``std`` x N(0, 1); ``alpha`` None leaves the key out (llama.cpp then scales by the
    adapter scale alone). ``architecture`` is the base architecture it claims.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    shapes = _base_shapes(base, n_layer, n_embd, n_head, n_head_kv, n_ff)
    rng = np.random.default_rng(seed)
    float_type = np.float16 if dtype == "f16" else np.float32

    def weights(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape, dtype=np.float32) * std).astype(float_type)

    tensors: list[tuple[str, np.ndarray]] = []
    for target in lora_targets(shapes, targets):
        first, second = shapes[target][0], shapes[target][1]
        # numpy shapes: ggml's ne reversed.
        if target == "token_embd.weight":  # ne: base (n_embd, n_vocab)
            a, b = weights(second, rank), weights(first, rank)
        else:  # ne: base (n_in, n_out); A (n_in, rank); B (rank, n_out)
            a, b = weights(rank, first), weights(second, rank)
        tensors += [(f"{target}.lora_a", a), (f"{target}.lora_b", b)]

    writer = gguf.GGUFWriter(path, architecture)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_name(name)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    if alpha is not None:
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    finish_gguf(writer, tensors)
    return path
