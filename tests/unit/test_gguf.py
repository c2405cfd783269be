"""The GGUF header reader and validator (localserve.store.gguf) and the tiny test model."""

from __future__ import annotations

import contextlib
import hashlib
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from localserve.errors import InvalidGGUFError
from localserve.store.gguf import (
    ArraySummary,
    GGUFInfo,
    parameter_size_label,
    read_gguf,
    read_gguf_from,
    read_gguf_model,
)
from localserve.store.gguf import parser as gguf_parser
from tests.support import bad_gguf as bad
from tests.support.bad_gguf import (
    ARRAY,
    BOOL,
    F32,
    FLOAT32,
    INT32,
    Q4_K,
    STRING,
    UINT8,
    UINT32,
    UINT64,
    arr,
    gguf_bytes,
    gguf_string,
    kv,
    simple_gguf,
    tensor_info,
)
from tests.support.tiny_gguf import (
    CHATML_TEMPLATE,
    IM_END,
    tiny_vocab,
    write_split_gguf,
    write_tiny_gguf,
)

N_TINY_TENSORS = 3 + 9 * 2  # token_embd, output_norm, output + 9 per layer


def _write(tmp_path: Path, data: bytes, name: str = "x.gguf") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _parse(data: bytes) -> GGUFInfo:
    return read_gguf_from(
        lambda offset, length: data[offset : offset + length], len(data), "mem.gguf"
    )


@pytest.fixture(scope="session")
def tiny_bytes(tiny_gguf_path: Path) -> bytes:
    return tiny_gguf_path.read_bytes()


# -- the tiny model --------------------------------------------------------------------------


def test_reads_the_tiny_model(tiny_gguf_path: Path) -> None:
    info = read_gguf(tiny_gguf_path)
    assert info.version == 3
    assert info.architecture == "llama"
    assert info.model_name == "tiny-llama"
    assert len(info.tensors) == N_TINY_TENSORS
    assert info.context_length == 2048
    assert (info.block_count, info.embedding_length, info.head_count, info.head_count_kv) == (
        2,
        64,
        4,
        2,
    )
    assert info.key_length == info.value_length == 16  # embedding_length // head_count
    assert info.sliding_window is None
    assert info.chat_template == CHATML_TEMPLATE
    assert info.tokenizer_model == "llama"
    assert info.vocab_size == len(tiny_vocab().tokens)
    assert (info.bos_token_id, info.eos_token_id) == (1, 2)
    assert info.metadata["tokenizer.ggml.eot_token_id"] == tiny_vocab().im_end
    assert (info.file_type, info.quantization) == (0, "F32")
    assert info.license is None
    assert info.split_count == 1
    assert info.alignment == 32
    assert info.data_offset % 32 == 0

    vocab = len(tiny_vocab().tokens)
    per_layer = 2 * 64 + 64 * 64 * 2 + 2 * (32 * 64) + 3 * 64 * 128
    assert info.parameter_count == 2 * vocab * 64 + 64 + 2 * per_layer
    assert info.layer_bytes == {0: per_layer * 4, 1: per_layer * 4}
    assert set(info.non_layer_bytes) == {"token_embd.weight", "output_norm.weight", "output.weight"}
    assert sum(info.layer_bytes.values()) + sum(info.non_layer_bytes.values()) == info.weights_bytes
    slack = info.file_size - info.data_offset - info.weights_bytes
    assert 0 <= slack < info.alignment * len(info.tensors)  # only alignment padding

    embd = next(t for t in info.tensors if t.name == "token_embd.weight")
    assert (embd.shape, embd.type_name, embd.offset, embd.n_bytes) == (
        (64, vocab),
        "F32",
        0,
        64 * vocab * 4,
    )

    shown = info.model_info()
    assert shown["general.parameter_count"] == info.parameter_count
    assert shown["tokenizer.ggml.tokens"] is None  # long arrays are null, as in Ollama
    assert shown["llama.context_length"] == 2048
    assert isinstance(info.metadata["tokenizer.ggml.tokens"], ArraySummary)
    assert info.metadata["tokenizer.ggml.tokens"] == ArraySummary("string", vocab)


def test_f16_model_reports_f16(make_gguf: Callable[..., Path]) -> None:
    info = read_gguf(make_gguf("half.gguf", dtype="f16"))
    assert info.quantization == "F16"
    types = {t.name: t.type_name for t in info.tensors}
    assert types["blk.0.attn_q.weight"] == "F16"
    assert types["blk.0.attn_norm.weight"] == "F32"


def test_quantization_falls_back_to_the_biggest_tensor_type() -> None:
    data = simple_gguf([("norm", (256,), F32), ("big", (256, 8), Q4_K)])
    info = _parse(data)
    assert info.file_type is None
    assert info.quantization == "Q4_K"  # 8 * 144 bytes beat 256 * 4


def test_writing_is_deterministic(tmp_path: Path) -> None:
    def digest(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    a = write_tiny_gguf(tmp_path / "a.gguf", seed=7)
    first = digest(a)
    assert digest(write_tiny_gguf(tmp_path / "a.gguf", seed=7)) == first
    assert digest(write_tiny_gguf(tmp_path / "b.gguf", seed=7)) == first
    assert digest(write_tiny_gguf(tmp_path / "c.gguf", seed=8)) != first


def test_short_arrays_are_kept_as_lists() -> None:
    data = simple_gguf(
        extra_kvs=[
            kv("x.tags", ARRAY, arr(STRING, ["a", "b\xe9"])),
            kv("x.per_layer", ARRAY, arr(INT32, list(range(100)))),
            kv("x.flags", ARRAY, arr(BOOL, [True, False])),
            kv("x.long_strings", ARRAY, arr(STRING, ["t"] * 65)),
            kv("x.long_numbers", ARRAY, arr(FLOAT32, [0.5] * 1025)),
            kv("x.bad_utf8", STRING, b"ok \xff"),
        ]
    )
    meta = _parse(data).metadata
    assert meta["x.tags"] == ["a", "b\xe9"]
    assert meta["x.per_layer"] == list(range(100))  # per-layer values survive
    assert meta["x.flags"] == [True, False]
    assert meta["x.long_strings"] == ArraySummary("string", 65)
    assert meta["x.long_numbers"] == ArraySummary("float32", 1025)
    assert meta["x.bad_utf8"] == "ok \ufffd"


def test_per_layer_head_counts() -> None:
    data = simple_gguf(
        extra_kvs=[
            kv("llama.embedding_length", UINT32, 64),
            kv("llama.attention.head_count", UINT32, 4),
            kv("llama.attention.head_count_kv", ARRAY, arr(INT32, [1, 2, 0])),
        ]
    )
    info = _parse(data)
    assert info.head_count_kv == [1, 2, 0]
    assert info.key_length == 16


@pytest.mark.parametrize(
    ("n", "label"),
    [
        (268098176, "268.10M"),
        (7241732096, "7.24B"),
        (950, "950"),
        (1500, "1.50K"),
        (999_999_999, "1.00B"),
        (0, "0"),
    ],
)
def test_parameter_size_label(n: int, label: str) -> None:
    assert parameter_size_label(n) == label


# -- Gemma 3 270M ----------------------------------------------------------------------------


@pytest.mark.slow
def test_reads_gemma(gemma_gguf_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    started = time.perf_counter()
    info = read_gguf(gemma_gguf_path)
    elapsed = time.perf_counter() - started
    with capsys.disabled():
        print(
            f"\nGemma 3 270M header ({info.data_offset / 1e6:.1f} MB) parsed in {elapsed * 1000:.0f} ms"
        )
    assert elapsed < 5  # typically ~0.03 s; generous for slow CI machines

    assert info.architecture == "gemma3"
    assert info.block_count == 18
    assert (info.head_count, info.head_count_kv) == (4, 1)
    assert info.key_length == info.value_length == 256
    assert info.sliding_window == 512
    assert info.vocab_size == 262144
    assert info.quantization == "Q4_K_M"
    assert info.chat_template is None
    assert info.license == "gemma"
    assert parameter_size_label(info.parameter_count).startswith("268")
    assert info.data_offset > 6_000_000
    assert sorted(info.layer_bytes) == list(range(18))
    assert info.weights_bytes == sum(info.layer_bytes.values()) + sum(info.non_layer_bytes.values())
    assert info.non_layer_bytes["token_embd.weight"] > 100_000_000  # the 262k-row embedding
    assert 0 <= info.file_size - info.data_offset - info.weights_bytes < 32 * len(info.tensors)


@pytest.mark.slow
def test_read_at_reads_only_the_header(gemma_gguf_path: Path) -> None:
    reads: list[tuple[int, int]] = []
    with gemma_gguf_path.open("rb") as f:

        def read_at(offset: int, length: int) -> bytes:
            reads.append((offset, length))
            f.seek(offset)
            return f.read(length)

        size = gemma_gguf_path.stat().st_size
        info = read_gguf_from(read_at, size, "remote.gguf")
    assert info == read_gguf(gemma_gguf_path)
    assert reads[0] == (0, 256 << 10)
    total = sum(length for _, length in reads)
    assert info.data_offset <= total < 16 << 20  # a few MB of a 253 MB file
    assert len(reads) <= 8  # doubling chunks, not one read per field


# -- split models ----------------------------------------------------------------------------


def test_split_model_is_merged(tmp_path: Path, tiny_gguf_path: Path) -> None:
    parts = write_split_gguf(tmp_path, "x", n_parts=2)
    assert [p.name for p in parts] == ["x-00001-of-00002.gguf", "x-00002-of-00002.gguf"]
    whole = read_gguf(tiny_gguf_path)
    info = read_gguf_model(parts)
    assert info.split_count == 2
    assert info.architecture == "llama"
    assert info.chat_template == CHATML_TEMPLATE
    assert [t.name for t in info.tensors] == [t.name for t in whole.tensors]
    assert {t.part for t in info.tensors} == {0, 1}
    assert info.parameter_count == whole.parameter_count
    assert info.weights_bytes == whole.weights_bytes
    assert info.file_size == sum(p.stat().st_size for p in parts)
    second = read_gguf(parts[1])
    assert second.metadata["split.no"] == 1
    assert second.chat_template is None
    assert next(t.offset for t in info.tensors if t.part == 1) == 0  # offsets are per part


def test_single_file_model(tiny_gguf_path: Path) -> None:
    assert read_gguf_model([tiny_gguf_path]) == read_gguf(tiny_gguf_path)


def test_split_model_needs_every_part_in_order(tmp_path: Path) -> None:
    parts = write_split_gguf(tmp_path, "x", n_parts=3)
    with pytest.raises(InvalidGGUFError, match="split model has 3 parts but 1 were given"):
        read_gguf_model(parts[:1])
    with pytest.raises(InvalidGGUFError, match=r"part 1 of 3 has split\.no 1") as caught:
        read_gguf_model([parts[1], parts[0], parts[2]])
    assert caught.value.path == str(parts[1])


def test_model_needs_architecture_and_tensors(tmp_path: Path) -> None:
    with pytest.raises(InvalidGGUFError, match=r"general\.architecture is missing"):
        read_gguf_model(
            [_write(tmp_path, gguf_bytes([], [tensor_info("w", (4,), F32, 0)], data=b"\0" * 16))]
        )
    with pytest.raises(InvalidGGUFError, match="no tensors"):
        read_gguf_model([_write(tmp_path, simple_gguf(tensors=()))])


def test_not_a_regular_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidGGUFError, match="not a regular file"):
        read_gguf(tmp_path)


# -- malformed and hostile files ---------------------------------------------------------------


def _own(data: bytes) -> Callable[[bytes], bytes]:
    return lambda _: data


TWO = [("a", (32,), F32), ("b", (32,), F32)]

BAD_FILES: list[tuple[str, Callable[[bytes], bytes], str]] = [
    ("empty", _own(b""), "truncated header"),
    ("tiny", _own(b"GG"), "truncated header"),
    ("bad magic", lambda good: bad.with_magic(good, b"GGUX"), "bad magic b'GGUX'"),
    ("text", _own(b"this is not a gguf file" * 100), "bad magic b'this'"),
    ("version 1", lambda good: bad.with_version(good, 1), "GGUF version 1 is not supported"),
    ("version 4", lambda good: bad.with_version(good, 4), "GGUF version 4 is not supported"),
    ("big endian", lambda good: bad.with_version(good, 3 << 24), "big-endian"),
    (
        "tensor count absurd",
        lambda good: bad.with_counts(good, n_tensors=2**40),
        "tensor count 2^40 is absurd",
    ),
    (
        "tensor count too big for file",
        _own(bad.with_counts(simple_gguf(), n_tensors=100_000)),
        "tensor count 100000 cannot fit",
    ),
    (
        "kv count absurd",
        lambda good: bad.with_counts(good, n_kv=2**64 - 1),
        "metadata count 1.8e19 is absurd",
    ),
    (
        "kv count too big for file",
        _own(bad.with_counts(simple_gguf(), n_kv=1000)),
        "metadata count 1000 cannot fit",
    ),
    ("cut in metadata", lambda good: good[:60], "truncated header"),
    (
        "cut in tensor infos",
        lambda good: good[: bad.layout(good).header_end - 10],
        "truncated header",
    ),
    (
        "string length huge",
        lambda good: bad.with_string_length(good, "general.name", 2**63),
        "string length 2^63 exceeds the file",
    ),
    (
        "string length odd",
        lambda good: bad.with_string_length(good, "general.name", 9 * 10**18),
        "string length 9e18 exceeds the file",
    ),
    (
        "string length past end",
        lambda good: bad.with_string_length(good, "tokenizer.chat_template", len(good)),
        "exceeds the file",
    ),
    (
        "key length huge",
        lambda good: bad.with_key_length(good, "general.name", 2**62),
        "key length 2^62 exceeds the file",
    ),
    (
        "key too long",
        _own(simple_gguf(extra_kvs=[kv("k" * 70000, UINT8, 1)])),
        "key length 70000 exceeds the 65535-byte limit",
    ),
    (
        "key not utf-8",
        _own(simple_gguf(extra_kvs=[kv(b"\xff\xfe", UINT8, 1)])),
        "key 1 is not valid UTF-8",
    ),
    ("key empty", _own(simple_gguf(extra_kvs=[kv(b"", UINT8, 1)])), "key 1 is empty"),
    (
        "duplicate key",
        _own(simple_gguf(extra_kvs=[kv("general.architecture", STRING, "x")])),
        "duplicate key 'general.architecture'",
    ),
    (
        "unknown value type",
        _own(simple_gguf(extra_kvs=[gguf_string("k") + struct.pack("<I", 13) + b"\0" * 8])),
        "key 'k' has unknown value type 13",
    ),
    (
        "array of arrays",
        _own(
            simple_gguf(
                extra_kvs=[
                    gguf_string("k")
                    + struct.pack("<IIQ", ARRAY, ARRAY, 1)
                    + struct.pack("<IQ", UINT8, 0)
                ]
            )
        ),
        "key 'k' is an array of arrays",
    ),
    (
        "unknown array item type",
        _own(simple_gguf(extra_kvs=[gguf_string("k") + struct.pack("<IIQ", ARRAY, 77, 0)])),
        "array 'k' has unknown item type 77",
    ),
    (
        "numeric array too long",
        _own(simple_gguf(extra_kvs=[gguf_string("k") + struct.pack("<IIQ", ARRAY, UINT32, 2**40)])),
        "array 'k' of 2^40 uint32 exceeds the file",
    ),
    (
        "string array too long",
        _own(simple_gguf(extra_kvs=[gguf_string("k") + struct.pack("<IIQ", ARRAY, STRING, 2**61)])),
        "array 'k' of 2^61 strings exceeds the file",
    ),
    (
        "string in long array too long",
        lambda good: bad.patch(
            good, bad.string_item_at(good, "tokenizer.ggml.tokens", 100), "<Q", 2**50
        ),
        "item of 'tokenizer.ggml.tokens': string length 2^50 exceeds the file",
    ),
    (
        "alignment huge",
        _own(simple_gguf(extra_kvs=[kv("general.alignment", UINT32, 2**30)])),
        "alignment 2^30 is not a power of two up to 1 MiB",
    ),
    (
        "alignment odd",
        _own(simple_gguf(extra_kvs=[kv("general.alignment", UINT32, 48)])),
        "alignment 48 is not a power of two",
    ),
    (
        "alignment zero",
        _own(simple_gguf(extra_kvs=[kv("general.alignment", UINT32, 0)])),
        "alignment 0 is not a power of two",
    ),
    (
        "alignment type",
        _own(simple_gguf(extra_kvs=[kv("general.alignment", UINT64, 32)])),
        "general.alignment must be a uint32, not uint64",
    ),
    (
        "architecture type",
        _own(gguf_bytes([kv("general.architecture", UINT8, 1)])),
        "general.architecture must be a string",
    ),
    (
        "tokens not strings",
        _own(simple_gguf(extra_kvs=[kv("tokenizer.ggml.tokens", ARRAY, arr(INT32, [1, 2]))])),
        "tokenizer.ggml.tokens must be an array of string",
    ),
    (
        "scores wrong type",
        _own(
            simple_gguf(
                extra_kvs=[
                    kv("tokenizer.ggml.tokens", ARRAY, arr(STRING, ["a", "b"])),
                    kv("tokenizer.ggml.scores", ARRAY, arr(UINT8, [1, 2])),
                ]
            )
        ),
        "tokenizer.ggml.scores must be an array of float32",
    ),
    (
        "scores too short",
        _own(
            simple_gguf(
                extra_kvs=[
                    kv("tokenizer.ggml.tokens", ARRAY, arr(STRING, ["a", "b"])),
                    kv("tokenizer.ggml.scores", ARRAY, arr(FLOAT32, [0.0])),
                ]
            )
        ),
        "tokenizer.ggml.scores has 1 entries for 2 tokens",
    ),
    (
        "tensor name too long",
        _own(simple_gguf([("n" * 64, (32,), F32)])),
        "tensor name length 64 exceeds the 63-byte limit",
    ),
    (
        "tensor name not utf-8",
        _own(simple_gguf([(b"\xc3", (32,), F32)])),
        "tensor 0's name is not valid UTF-8",
    ),
    (
        "duplicate tensor",
        _own(simple_gguf([("a", (32,), F32), ("a", (32,), F32)])),
        "duplicate tensor 'a'",
    ),
    (
        "no dimensions",
        lambda good: bad.with_tensor_field(good, "output.weight", "n_dims", 0),
        "'output.weight' has 0 dimensions, not 1 to 4",
    ),
    (
        "five dimensions",
        lambda good: bad.with_tensor_field(good, "output.weight", "n_dims", 5),
        "has 5 dimensions",
    ),
    (
        "dimension zero",
        lambda good: bad.with_tensor_field(good, "output.weight", "dim0", 0),
        "'output.weight' has an empty dimension",
    ),
    (
        "too many elements",
        _own(
            gguf_bytes(
                [kv("general.architecture", STRING, "llama")],
                [tensor_info("a", (2**31, 2**31), F32, 0)],
            )
        ),
        "'a' has 2^62 elements, too many",
    ),
    (
        "removed ggml type",
        lambda good: bad.with_tensor_field(good, "output.weight", "type", 31),
        "'output.weight' has unknown ggml type 31",
    ),
    (
        "unknown ggml type",
        lambda good: bad.with_tensor_field(good, "output.weight", "type", 2**31),
        "unknown ggml type 2^31",
    ),
    (
        "row not whole blocks",  # a Q4_K row must be a whole number of 256-element blocks
        _own(
            gguf_bytes(
                [kv("general.architecture", STRING, "llama")],
                [tensor_info("q", (100, 2), Q4_K, 0)],
                data=b"\0" * 4096,
            )
        ),
        "tensor 'q' rows of 100 are not a multiple of Q4_K's block size 256",
    ),
    (
        "misaligned offset",
        _own(bad.with_tensor_field(simple_gguf(TWO), "b", "offset", 130)),
        "tensor 'b' offset 130 is not a multiple of the alignment 32",
    ),
    (
        "offset past end",
        lambda good: bad.with_tensor_field(good, "output.weight", "offset", 2**40),
        "tensor 'output.weight' data ends past the end of the file",
    ),
    (
        "data cut",
        lambda good: good[:-100],
        "tensor 'output.weight' data ends past the end of the file",
    ),
    (
        "overlap",
        _own(bad.with_tensor_field(simple_gguf(TWO), "b", "offset", 0)),
        "tensor 'b' overlaps tensor 'a'",
    ),
    (
        "gap",
        _own(bad.with_tensor_field(simple_gguf([*TWO, ("c", (64,), F32)]), "b", "offset", 256)),
        "tensor 'b' is at offset 256, expected 128 (tensors must be packed in order)",
    ),
]


@pytest.mark.parametrize(("make", "reason"), [pytest.param(m, r, id=i) for i, m, r in BAD_FILES])
def test_malformed_file_is_rejected(
    make: Callable[[bytes], bytes], reason: str, tiny_bytes: bytes, tmp_path: Path
) -> None:
    data = make(tiny_bytes)
    with pytest.raises(InvalidGGUFError) as caught:
        read_gguf(_write(tmp_path, data))
    assert reason in caught.value.reason
    assert "\n" not in caught.value.reason
    assert caught.value.path.endswith("x.gguf")
    with pytest.raises(InvalidGGUFError) as again:  # the same through read_at
        _parse(data)
    assert again.value.reason == caught.value.reason


def test_the_fixtures_are_valid_before_breaking(tiny_bytes: bytes) -> None:
    _parse(tiny_bytes)
    _parse(simple_gguf(TWO))
    _parse(simple_gguf([*TWO, ("c", (64,), F32)]))
    _parse(simple_gguf(alignment=64))


def _virtual_file(header: bytes, size: int) -> Callable[[int, int], bytes]:
    """A huge sparse file: ``header`` then zeros up to ``size``."""

    def read_at(offset: int, length: int) -> bytes:
        length = max(0, min(length, size - offset))
        chunk = header[offset : offset + length]
        return chunk + b"\0" * (length - len(chunk))

    return read_at


def test_string_over_64_mib_is_refused_even_in_a_huge_file() -> None:
    header = gguf_bytes(
        [gguf_string("general.name") + struct.pack("<I", STRING) + struct.pack("<Q", 65 << 20)]
    )
    with pytest.raises(InvalidGGUFError, match="string length 68157440 exceeds the 64 MiB limit"):
        read_gguf_from(_virtual_file(header, 1 << 40), 1 << 40, "huge.gguf")


def test_header_size_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    # Many 1 MiB strings: each allowed, together more header than we will buffer.
    monkeypatch.setattr(gguf_parser, "MAX_HEADER_BYTES", 4 << 20)
    data = gguf_bytes([kv(f"k{i}", STRING, b"x" * (1 << 20)) for i in range(5)])
    with pytest.raises(InvalidGGUFError, match="header is larger than 4 MiB"):
        _parse(data)


def test_file_shorter_than_its_size(tiny_bytes: bytes) -> None:
    short = tiny_bytes[:3000]
    with pytest.raises(InvalidGGUFError, match="file ends at byte 3000, short of its size"):
        read_gguf_from(
            lambda offset, length: short[offset : offset + length], len(tiny_bytes), "cut.gguf"
        )


def _rejections(variants: Iterator[bytes]) -> list[str]:
    """Parse each variant: success or InvalidGGUFError are fine, anything else fails the test."""
    reasons = []
    for data in variants:
        try:
            _parse(data)
        except InvalidGGUFError as exc:
            reasons.append(exc.reason)
    assert all(reason and "\n" not in reason for reason in reasons)
    return reasons


def test_random_corruption_only_ever_raises_invalid_gguf(tiny_bytes: bytes) -> None:
    header_end = _parse(tiny_bytes).data_offset
    rejected = _rejections(bad.mutations(tiny_bytes, seed=1234, count=300, region=header_end))
    assert len(rejected) > 100  # most corruptions are caught; the rest changed a value harmlessly
    small = simple_gguf(
        TWO, extra_kvs=[kv("k", ARRAY, arr(STRING, ["a", "bc"])), kv("f", FLOAT32, 1.5)]
    )
    _rejections(bad.mutations(small, seed=99, count=300))


# -- llama.cpp loads what we write ------------------------------------------------------------


@contextlib.contextmanager
def _llama(path: Path) -> Iterator[object]:
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=256, verbose=False)
    try:
        yield llm
    finally:
        llm.close()


def test_llama_cpp_tokenizes_any_text(tiny_gguf_path: Path) -> None:
    from llama_cpp import Llama, llama_vocab_is_eog

    text = "Hello world! Café naïve résumé 🙂 日本語 ½ \t\n end"
    with _llama(tiny_gguf_path) as llm:
        assert isinstance(llm, Llama)
        tokens = llm.tokenize(text.encode(), add_bos=False)
        assert llm.detokenize(tokens).decode() == text
        assert tiny_vocab().tokens.index("▁world") in tokens  # word pieces are used
        chat = llm.tokenize(f"<|im_start|>user\nhi{IM_END}".encode(), add_bos=False, special=True)
        assert chat[0] == tiny_vocab().im_start
        assert chat[-1] == tiny_vocab().im_end
        vocab = llm._model.vocab
        assert llama_vocab_is_eog(vocab, tiny_vocab().im_end)
        assert llama_vocab_is_eog(vocab, 2)
        assert not llama_vocab_is_eog(vocab, tiny_vocab().im_start)
        assert llm.metadata["tokenizer.chat_template"] == CHATML_TEMPLATE


def test_llama_cpp_generates_deterministically(
    tiny_gguf_path: Path, make_gguf: Callable[..., Path]
) -> None:
    texts = []
    for path in (tiny_gguf_path, tiny_gguf_path, make_gguf("f16.gguf", dtype="f16")):
        with _llama(path) as llm:
            out = llm.create_completion("The sky is", max_tokens=8, temperature=0)  # type: ignore[attr-defined]
            assert out["usage"]["completion_tokens"] > 0
            texts.append(out["choices"][0]["text"])
    assert texts[0] == texts[1]


def test_llama_cpp_loads_a_split_model(tmp_path: Path) -> None:
    parts = write_split_gguf(tmp_path, "x", n_parts=3)
    with _llama(parts[0]) as llm:
        out = llm.create_completion("Hello", max_tokens=4, temperature=0)  # type: ignore[attr-defined]
        assert out["usage"]["completion_tokens"] > 0


def test_llama_cpp_agrees_on_the_metadata_keys(tiny_gguf_path: Path) -> None:
    with _llama(tiny_gguf_path) as llm:
        theirs = set(llm.metadata)  # type: ignore[attr-defined]
    ours = read_gguf(tiny_gguf_path).metadata
    # llama-cpp-python leaves out the long arrays (tokens, scores, types), as model_info nulls them.
    assert set(ours) - theirs == {k for k, v in ours.items() if isinstance(v, ArraySummary)}
    assert theirs <= set(ours)
