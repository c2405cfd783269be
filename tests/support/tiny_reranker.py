"""A tiny cross-encoder reranker GGUF for the rerank tests, and its fixture.

``write_tiny_reranker`` writes a ``bert``-architecture model with random weights, shaped
like the rerankers llama.cpp runs with rank pooling (bge-reranker, ms-marco MiniLM): a
non-causal encoder, ``{arch}.pooling_type`` 4 (LLAMA_POOLING_TYPE_RANK) and the
classification head that pooling applies to the first token's hidden state: ``cls``
(a dense layer, then tanh) and ``cls.output`` (one label: the relevance score). It uses
the tiny llama model's SentencePiece vocabulary (tests/support/tiny_gguf.py) with
llama.cpp's pair format switched on: BOS query EOS SEP document EOS, SEP being EOS as
in XLM-RoBERTa. ``rerank_template`` adds a ``tokenizer.chat_template.rerank`` (as
llama.cpp's converter writes for Qwen3-Reranker), which then formats the pair instead.

The scores are meaningless but real compute: different documents score differently,
and the same pair always scores the same. Same arguments, same bytes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import gguf
import numpy as np
import pytest

from tests.support.tiny_gguf import BOS_ID, EOS_ID, UNK_ID, finish_gguf, tiny_vocab

__all__ = ["RERANK_TEMPLATE", "tiny_reranker_path", "write_tiny_reranker"]

ARCH = "bert"
POOLING_RANK = 4
# A template in the shape of the one llama.cpp's converter writes: {query} and
# {document} are replaced by the texts, and its special tokens are parsed.
RERANK_TEMPLATE = "<|im_start|>query: {query}\ndocument: {document}<|im_end|>"


def _tensors(
    n_vocab: int, n_layer: int, n_embd: int, n_ff: int, n_ctx_train: int, seed: int
) -> Iterator[tuple[str, np.ndarray]]:
    """The encoder's and the head's tensors (numpy shapes: ggml's reversed), all F32."""
    rng = np.random.default_rng(seed)

    def matrix(rows: int, cols: int, scale: float = 0.1) -> np.ndarray:
        return rng.standard_normal((rows, cols), dtype=np.float32) * scale

    def norm() -> tuple[np.ndarray, np.ndarray]:
        return np.ones(n_embd, dtype=np.float32), np.zeros(n_embd, dtype=np.float32)

    def bias(n: int) -> np.ndarray:
        return rng.standard_normal(n, dtype=np.float32) * 0.02

    yield "token_embd.weight", matrix(n_vocab, n_embd, 1.0)
    yield "token_types.weight", matrix(2, n_embd, 0.02)
    yield "position_embd.weight", matrix(n_ctx_train, n_embd, 0.02)
    weight, shift = norm()
    yield "token_embd_norm.weight", weight
    yield "token_embd_norm.bias", shift
    for i in range(n_layer):
        for part in ("q", "k", "v"):
            yield f"blk.{i}.attn_{part}.weight", matrix(n_embd, n_embd)
            yield f"blk.{i}.attn_{part}.bias", bias(n_embd)
        yield f"blk.{i}.attn_output.weight", matrix(n_embd, n_embd)
        yield f"blk.{i}.attn_output.bias", bias(n_embd)
        weight, shift = norm()
        yield f"blk.{i}.attn_output_norm.weight", weight
        yield f"blk.{i}.attn_output_norm.bias", shift
        yield f"blk.{i}.ffn_up.weight", matrix(n_ff, n_embd)
        yield f"blk.{i}.ffn_up.bias", bias(n_ff)
        yield f"blk.{i}.ffn_down.weight", matrix(n_embd, n_ff)
        yield f"blk.{i}.ffn_down.bias", bias(n_embd)
        weight, shift = norm()
        yield f"blk.{i}.layer_output_norm.weight", weight
        yield f"blk.{i}.layer_output_norm.bias", shift
    # The classification head: dense + tanh, then one output (the score).
    yield "cls.weight", matrix(n_embd, n_embd, 0.5)
    yield "cls.bias", bias(n_embd)
    yield "cls.output.weight", matrix(1, n_embd, 1.0)
    yield "cls.output.bias", np.zeros(1, dtype=np.float32)


def write_tiny_reranker(
    path: str | Path,
    *,
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 4,
    n_ff: int = 128,
    n_ctx_train: int = 512,
    seed: int = 7,
    rerank_template: str | None = None,
    name: str = "tiny-reranker",
) -> Path:
    """Write a tiny random-weight BERT reranker to ``path``; same arguments, same bytes.
    ``rerank_template``: a ``tokenizer.chat_template.rerank`` to format pairs with."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    vocab = tiny_vocab()
    writer = gguf.GGUFWriter(path, ARCH)
    writer.add_name(name)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_context_length(n_ctx_train)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_layer_norm_eps(1e-12)
    writer.add_causal_attention(False)
    writer.add_pooling_type(gguf.PoolingType(POOLING_RANK))
    writer.add_vocab_size(len(vocab.tokens))

    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(list(vocab.tokens))
    writer.add_token_scores(list(vocab.scores))
    writer.add_token_types(list(vocab.types))
    writer.add_token_type_count(2)
    writer.add_unk_token_id(UNK_ID)
    writer.add_bos_token_id(BOS_ID)
    writer.add_eos_token_id(EOS_ID)
    writer.add_sep_token_id(EOS_ID)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(True)
    writer.add_add_sep_token(True)
    writer.add_add_space_prefix(False)
    if rerank_template is not None:
        writer.add_chat_template([{"name": "rerank", "template": rerank_template}])
    tensors = list(_tensors(len(vocab.tokens), n_layer, n_embd, n_ff, n_ctx_train, seed))
    finish_gguf(writer, tensors)
    return path


@pytest.fixture(scope="session")
def tiny_reranker_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny reranker, written once per session. Do not modify it."""
    return write_tiny_reranker(tmp_path_factory.mktemp("tiny-reranker") / "tiny-reranker.gguf")
