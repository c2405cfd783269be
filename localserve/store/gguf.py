"""Read and validate the header of a GGUF file without trusting it.

This module owns localserve's knowledge of the GGUF format: the header layout, the
ggml tensor types and llama.cpp's file-type names, and the checks a file must pass
before llama.cpp is allowed to open it. llama.cpp's own reader trusts many fields
(a string length becomes an allocation, a tensor table is indexed by a count read from
the file, a wrongly typed tokenizer array is read as floats), so every count, length,
type and offset is checked here first, and anything we would not hand to llama.cpp is
rejected with :class:`InvalidGGUFError` carrying a one-line reason. Two kinds of GGUF
are told apart: a model (``read_gguf_model``) and a multimodal projector (``mmproj``,
``read_projector``); each refuses the other with :class:`WrongGGUFKindError`, and
``read_gguf_model`` refuses a LoRA adapter too (store/adapter.py reads those).

Reads are bounded and incremental: the header is fetched in growing chunks through a
``read_at(offset, length)`` callable, so the same code parses a local file or a remote
one through HTTP Range requests, and never reads tensor data. Stdlib only.

Layout (little-endian, versions 2 and 3)::

    "GGUF" | u32 version | u64 n_tensors | u64 n_kv
    n_kv x   (string key, u32 value_type, value)
    n_tensors x (string name, u32 n_dims, u64 dims[n_dims], u32 ggml_type, u64 offset)
    padding to `general.alignment` | tensor data (offsets relative to here)

A string is a u64 byte length then that many UTF-8 bytes; an array is a u32 item type,
a u64 count, then the items.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Final, NoReturn

from localserve.errors import InvalidGGUFError, WrongGGUFKindError

__all__ = [
    "FILE_TYPE_NAMES",
    "GGML_TYPES",
    "ArraySummary",
    "GGMLType",
    "GGUFInfo",
    "ProjectorInfo",
    "TensorInfo",
    "parameter_size_label",
    "projector_of",
    "read_gguf",
    "read_gguf_from",
    "read_gguf_model",
    "read_projector",
]

MAGIC: Final = b"GGUF"
# general.architecture of a multimodal projector (mmproj), which llama.cpp's mtmd loads
# next to a model and llama.cpp cannot load as one.
PROJECTOR_ARCHITECTURE: Final = "clip"
SUPPORTED_VERSIONS: Final = (2, 3)
DEFAULT_ALIGNMENT: Final = 32
MAX_ALIGNMENT: Final = 1 << 20
MAX_TENSORS: Final = 1 << 20
MAX_KV: Final = 1 << 20
MAX_STRING: Final = 64 << 20
MAX_KEY: Final = 65535
# GGML_MAX_NAME is 64 including the terminating NUL; llama.cpp refuses longer names.
MAX_TENSOR_NAME: Final = 63
MAX_DIMS: Final = 4
MAX_ELEMENTS: Final = 1 << 62
# Real headers are a few MB (Gemma 3: 6.5 MB for 262k tokens); this stops a hostile
# file from making us buffer gigabytes of "header".
MAX_HEADER_BYTES = 256 << 20
FIRST_READ: Final = 256 << 10
# Metadata arrays up to LIST_LIMIT items are kept as lists; longer ones (token lists,
# scores, merges) become an ArraySummary. Numeric arrays outside tokenizer.* may be
# longer, so that per-layer values (head_count_kv of an 80-layer model) survive.
LIST_LIMIT: Final = 64
NUMBER_LIST_LIMIT: Final = 1024

_HEADER_SIZE: Final = 24  # magic, version, n_tensors, n_kv
# Smallest possible encodings, used to bound counts by the bytes left in the file.
_MIN_KV_SIZE: Final = 8 + 4 + 1  # empty key, type, one-byte value
_MIN_TENSOR_INFO_SIZE: Final = 8 + 4 + 8 + 4 + 8  # empty name, n_dims, one dim, type, offset

_U32: Final = struct.Struct("<I")
_U64: Final = struct.Struct("<Q")

# GGUF value types: id -> (name, struct format character); 8 and 9 are composite.
_STRING: Final = 8
_ARRAY: Final = 9
_SCALARS: Final[dict[int, tuple[str, str]]] = {
    0: ("uint8", "B"),
    1: ("int8", "b"),
    2: ("uint16", "H"),
    3: ("int16", "h"),
    4: ("uint32", "I"),
    5: ("int32", "i"),
    6: ("float32", "f"),
    7: ("bool", "?"),
    10: ("uint64", "Q"),
    11: ("int64", "q"),
    12: ("float64", "d"),
}
_SCALAR_STRUCTS: Final = {t: struct.Struct("<" + code) for t, (_, code) in _SCALARS.items()}
_VALUE_TYPE_NAMES: Final = {
    **{t: n for t, (n, _) in _SCALARS.items()},
    _STRING: "string",
    _ARRAY: "array",
}


@dataclass(frozen=True)
class GGMLType:
    """A ggml tensor type: ``block_size`` elements are stored in ``type_size`` bytes."""

    id: int
    name: str
    block_size: int
    type_size: int


def _ggml_types(*rows: tuple[int, str, int, int]) -> dict[int, GGMLType]:
    return {i: GGMLType(i, name, block, size) for i, name, block, size in rows}


# Every type the pinned llama.cpp (llama-cpp-python 0.3.36) can load, with block size and
# bytes per block as its ggml library reports them (ggml_blck_size / ggml_type_size).
# Ids 4, 5, 31-33 and 36-38 belonged to removed types and are refused.
# Note: the `gguf` Python package says Q8_1 blocks are 40 bytes; ggml says 36.
GGML_TYPES: Final = _ggml_types(
    (0, "F32", 1, 4),
    (1, "F16", 1, 2),
    (2, "Q4_0", 32, 18),
    (3, "Q4_1", 32, 20),
    (6, "Q5_0", 32, 22),
    (7, "Q5_1", 32, 24),
    (8, "Q8_0", 32, 34),
    (9, "Q8_1", 32, 36),
    (10, "Q2_K", 256, 84),
    (11, "Q3_K", 256, 110),
    (12, "Q4_K", 256, 144),
    (13, "Q5_K", 256, 176),
    (14, "Q6_K", 256, 210),
    (15, "Q8_K", 256, 292),
    (16, "IQ2_XXS", 256, 66),
    (17, "IQ2_XS", 256, 74),
    (18, "IQ3_XXS", 256, 98),
    (19, "IQ1_S", 256, 50),
    (20, "IQ4_NL", 32, 18),
    (21, "IQ3_S", 256, 110),
    (22, "IQ2_S", 256, 82),
    (23, "IQ4_XS", 256, 136),
    (24, "I8", 1, 1),
    (25, "I16", 1, 2),
    (26, "I32", 1, 4),
    (27, "I64", 1, 8),
    (28, "F64", 1, 8),
    (29, "IQ1_M", 256, 56),
    (30, "BF16", 1, 2),
    (34, "TQ1_0", 256, 54),
    (35, "TQ2_0", 256, 66),
    (39, "MXFP4", 32, 17),
    (40, "NVFP4", 64, 36),
    (41, "Q1_0", 128, 18),
    (42, "Q2_0", 64, 18),
)

# llama.cpp's LLAMA_FTYPE enum (general.file_type) without the LLAMA_FTYPE_MOSTLY_ prefix.
FILE_TYPE_NAMES: Final[dict[int, str]] = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    4: "Q4_1_SOME_F16",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    19: "IQ2_XXS",
    20: "IQ2_XS",
    21: "Q2_K_S",
    22: "IQ3_XS",
    23: "IQ3_XXS",
    24: "IQ1_S",
    25: "IQ4_NL",
    26: "IQ3_S",
    27: "IQ3_M",
    28: "IQ2_S",
    29: "IQ2_M",
    30: "IQ4_XS",
    31: "IQ1_M",
    32: "BF16",
    36: "TQ1_0",
    37: "TQ2_0",
    38: "MXFP4_MOE",
    39: "NVFP4",
    40: "Q1_0",
    41: "Q2_0",
}
_FTYPE_GUESSED: Final = 1024  # llama.cpp ORs this in for in-memory guesses

# Keys llama.cpp reads as raw arrays of a fixed type (gguf_get_arr_data / _arr_str assert
# the type or index past the end), so a wrong type or a short array would crash it.
_TOKENS_KEY: Final = "tokenizer.ggml.tokens"
_TOKEN_ARRAYS: Final = {
    _TOKENS_KEY: _STRING,
    "tokenizer.ggml.scores": 6,  # float32
    "tokenizer.ggml.token_type": 5,  # int32
    "tokenizer.ggml.merges": _STRING,
}


@dataclass(frozen=True)
class ArraySummary:
    """Stands in for a long metadata array (a 262k-token vocabulary) that is not kept."""

    item_type: str
    count: int


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's entry in the header; ``offset`` is relative to its part's data start."""

    name: str
    shape: tuple[int, ...]
    ggml_type: int
    type_name: str
    offset: int
    n_elements: int
    n_bytes: int
    part: int = 0  # index of the file holding it, for split models


@dataclass(frozen=True)
class GGUFInfo:
    """What a GGUF header says, plus the facts derived from it."""

    version: int
    file_size: int  # all parts together for a split model
    alignment: int
    data_offset: int  # of the first part
    metadata: dict[str, Any]
    tensors: tuple[TensorInfo, ...]
    # Each key's GGUF value type ("float32", "string", "array[uint32]"): llama.cpp aborts
    # when a key it reads has another type than it expects, and ``metadata`` cannot tell
    # a float32 from a float64 or an int8 from a uint32.
    value_types: dict[str, str] = dataclasses.field(default_factory=dict, repr=False, compare=False)

    # -- metadata lookups ------------------------------------------------------------------

    def _int(self, key: str) -> int | None:
        value = self.metadata.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def _str(self, key: str) -> str | None:
        value = self.metadata.get(key)
        return value if isinstance(value, str) else None

    def _int_or_list(self, key: str) -> int | list[int] | None:
        value = self.metadata.get(key)
        if isinstance(value, list) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            return list(value)
        return self._int(key)

    def _arch(self, suffix: str) -> str:
        return f"{self.architecture}.{suffix}"

    # -- derived facts ---------------------------------------------------------------------

    @property
    def architecture(self) -> str | None:
        return self._str("general.architecture")

    @property
    def model_name(self) -> str | None:
        return self._str("general.name")

    @property
    def license(self) -> str | None:
        return self._str("general.license")

    @property
    def file_type(self) -> int | None:
        return self._int("general.file_type")

    @cached_property
    def parameter_count(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    @cached_property
    def quantization(self) -> str:
        """llama.cpp's name for general.file_type ("Q4_K_M"), else the ggml type holding most bytes."""
        file_type = self.file_type
        if file_type is not None:
            name = FILE_TYPE_NAMES.get(file_type & ~_FTYPE_GUESSED)
            if name is not None:
                return name
        by_type: dict[str, int] = {}
        for t in self.tensors:
            by_type[t.type_name] = by_type.get(t.type_name, 0) + t.n_bytes
        if not by_type:
            return "unknown"
        return max(by_type.items(), key=lambda item: item[1])[0]

    @property
    def context_length(self) -> int | None:
        return self._int(self._arch("context_length"))

    @property
    def block_count(self) -> int | None:
        return self._int(self._arch("block_count"))

    @property
    def embedding_length(self) -> int | None:
        return self._int(self._arch("embedding_length"))

    @property
    def head_count(self) -> int | list[int] | None:
        """Attention heads: an int, or one value per layer for models that vary it."""
        return self._int_or_list(self._arch("attention.head_count"))

    @property
    def head_count_kv(self) -> int | list[int] | None:
        """KV heads (defaults to head_count, as in llama.cpp); an int or one per layer."""
        value = self._int_or_list(self._arch("attention.head_count_kv"))
        return self.head_count if value is None else value

    def _default_head_dim(self) -> int | None:
        heads = self.head_count
        if isinstance(heads, list):
            heads = max(heads, default=0)
        embd = self.embedding_length
        if embd is None or not heads:
            return None
        return embd // heads

    @property
    def key_length(self) -> int | None:
        """Head dimension of keys: attention.key_length, else embedding_length // head_count."""
        value = self._int(self._arch("attention.key_length"))
        return self._default_head_dim() if value is None else value

    @property
    def value_length(self) -> int | None:
        value = self._int(self._arch("attention.value_length"))
        return self._default_head_dim() if value is None else value

    @property
    def sliding_window(self) -> int | None:
        return self._int(self._arch("attention.sliding_window"))

    @property
    def chat_template(self) -> str | None:
        return self._str("tokenizer.chat_template")

    @property
    def fill_in_the_middle(self) -> bool:
        """The vocabulary has prefix, suffix and middle tokens: the model can insert."""
        return all(
            self._int(f"tokenizer.ggml.fim_{part}_token_id") is not None
            for part in ("pre", "suf", "mid")
        )

    @property
    def tokenizer_model(self) -> str | None:
        return self._str("tokenizer.ggml.model")

    @property
    def vocab_size(self) -> int | None:
        tokens = self.metadata.get(_TOKENS_KEY)
        if isinstance(tokens, ArraySummary):
            return tokens.count
        if isinstance(tokens, list):
            return len(tokens)
        return self._int(self._arch("vocab_size"))

    @property
    def bos_token_id(self) -> int | None:
        return self._int("tokenizer.ggml.bos_token_id")

    @property
    def eos_token_id(self) -> int | None:
        return self._int("tokenizer.ggml.eos_token_id")

    @property
    def split_count(self) -> int:
        count = self._int("split.count")
        return 1 if count is None else count

    @cached_property
    def layer_bytes(self) -> dict[int, int]:
        """Bytes of the tensors of each repeating block (``blk.N.*``), by N."""
        layers: dict[int, int] = {}
        for t in self.tensors:
            index = _block_index(t.name)
            if index is not None:
                layers[index] = layers.get(index, 0) + t.n_bytes
        return dict(sorted(layers.items()))

    @cached_property
    def non_layer_bytes(self) -> dict[str, int]:
        """Bytes of each tensor outside the blocks (token_embd.weight, output.weight...)."""
        return {t.name: t.n_bytes for t in self.tensors if _block_index(t.name) is None}

    @cached_property
    def weights_bytes(self) -> int:
        return sum(t.n_bytes for t in self.tensors)

    def model_info(self) -> dict[str, Any]:
        """The key/values Ollama's /api/show returns as ``model_info``.

        All metadata, with long arrays as null, plus ``general.parameter_count``.
        """
        info: dict[str, Any] = {
            key: None if isinstance(value, ArraySummary) else value
            for key, value in self.metadata.items()
        }
        info["general.parameter_count"] = self.parameter_count
        return info


def _block_index(name: str) -> int | None:
    if not name.startswith("blk."):
        return None
    index, dot, _ = name[4:].partition(".")
    return int(index) if dot and index.isdigit() else None


def parameter_size_label(n: int) -> str:
    """Ollama-style size label: 268098176 -> "268.10M", 7241732096 -> "7.24B", 950 -> "950"."""
    for scale, suffix in ((10**12, "T"), (10**9, "B"), (10**6, "M"), (10**3, "K")):
        # Compare after rounding so 999_999_999 reads "1.00B", not "1000.00M".
        if round(n / scale, 2) >= 1:
            return f"{n / scale:.2f}{suffix}"
    return str(n)


def _num(n: int) -> str:
    """Short form of an untrusted number for a reason line: 2^40, 9.2e18, or the digits."""
    if n >= 1 << 16 and n & (n - 1) == 0:
        return f"2^{n.bit_length() - 1}"
    if n >= 10**9:
        mantissa, _, exponent = f"{n:.2g}".partition("e+")
        return f"{mantissa}e{int(exponent)}"
    return str(n)


def _align(n: int, alignment: int) -> int:
    return n + (-n % alignment)


ReadAt = Callable[[int, int], bytes]


class _Parser:
    """Walks one header, reading more of the file only as far as the header goes."""

    def __init__(self, read_at: ReadAt, size: int, name: str) -> None:
        self.read_at = read_at
        self.size = max(size, 0)
        self.name = name
        self.buf = bytearray()  # bytes [0, len(buf)) of the file, grown in place
        self.next_chunk = FIRST_READ
        self.pos = 0

    def fail(self, reason: str) -> NoReturn:
        raise InvalidGGUFError(self.name, reason)

    def need(self, end: int) -> None:
        """Make ``buf`` hold the file up to ``end``, reading chunks that double in size."""
        have = len(self.buf)
        if end <= have:
            return
        if end > self.size:
            self.fail(f"truncated header: it runs past the end of the {self.size}-byte file")
        if end > MAX_HEADER_BYTES:
            self.fail(f"header is larger than {MAX_HEADER_BYTES >> 20} MiB")
        want = min(self.size, MAX_HEADER_BYTES, max(end, have + self.next_chunk))
        self.next_chunk *= 2
        while have < want:
            got = self.read_at(have, want - have)
            if not got:
                self.fail(f"file ends at byte {have}, short of its size {self.size}")
            self.buf += got[: want - have]
            have = len(self.buf)

    def u32(self) -> int:
        self.need(self.pos + 4)
        (value,) = _U32.unpack_from(self.buf, self.pos)
        self.pos += 4
        return int(value)

    def u64(self) -> int:
        self.need(self.pos + 8)
        (value,) = _U64.unpack_from(self.buf, self.pos)
        self.pos += 8
        return int(value)

    def raw_string(self, what: str, limit: int = MAX_STRING) -> bytes:
        n = self.u64()
        if n > self.size - self.pos:
            self.fail(f"{what} length {_num(n)} exceeds the file")
        if n > limit:
            self.fail(f"{what} length {_num(n)} exceeds the {_limit_text(limit)} limit")
        self.need(self.pos + n)
        data = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return data

    def text(self, what: str) -> str:
        # Values are shown, not interpreted: replace bad UTF-8 rather than refuse the file.
        return self.raw_string(what).decode("utf-8", "replace")

    def value(self, key: str, vtype: int) -> Any:
        if vtype in _SCALAR_STRUCTS:
            s = _SCALAR_STRUCTS[vtype]
            self.need(self.pos + s.size)
            (value,) = s.unpack_from(self.buf, self.pos)
            self.pos += s.size
            return value
        if vtype == _STRING:
            return self.text(f"value of {key!r}: string")
        if vtype == _ARRAY:
            return self.array(key)
        self.fail(f"key {key!r} has unknown value type {vtype}")

    def array(self, key: str) -> Any:
        item_type = self.u32()
        count = self.u64()
        if item_type == _ARRAY:
            # llama.cpp refuses arrays of arrays too; allowing none keeps nesting at one level.
            self.fail(f"key {key!r} is an array of arrays")
        if item_type == _STRING:
            if count * 8 > self.size - self.pos:
                self.fail(f"array {key!r} of {_num(count)} strings exceeds the file")
            if count <= LIST_LIMIT:
                return [self.text(f"item of {key!r}: string") for _ in range(count)]
            self.skip_strings(key, count)
            return ArraySummary("string", count)
        if item_type not in _SCALARS:
            self.fail(f"array {key!r} has unknown item type {item_type}")
        type_name, code = _SCALARS[item_type]
        n_bytes = count * _SCALAR_STRUCTS[item_type].size
        if n_bytes > self.size - self.pos:
            self.fail(f"array {key!r} of {_num(count)} {type_name} exceeds the file")
        self.need(self.pos + n_bytes)
        start = self.pos
        self.pos += n_bytes
        limit = LIST_LIMIT if key.startswith("tokenizer.") else NUMBER_LIST_LIMIT
        if count <= limit:
            return list(struct.unpack_from(f"<{count}{code}", self.buf, start))
        return ArraySummary(type_name, count)

    def skip_strings(self, key: str, count: int) -> None:
        """Step over a long string array (a vocabulary) checking each length: the hot loop."""
        buf, pos, size = self.buf, self.pos, self.size
        have = len(buf)
        unpack = _U64.unpack_from
        limit = MAX_STRING
        for _ in range(count):
            if pos + 8 > have:
                self.need(pos + 8)
                have = len(buf)  # grown in place: `buf` is still the same object
            (n,) = unpack(buf, pos)
            pos += 8
            if n > size - pos or n > limit:
                self.pos = pos - 8
                self.raw_string(f"item of {key!r}: string")  # fails with the precise reason
            pos += n
        self.pos = pos

    def parse(self) -> GGUFInfo:
        self.need(min(self.size, _HEADER_SIZE))
        magic = bytes(self.buf[:4])
        if len(magic) < 4 or magic != MAGIC:
            if len(magic) < 4:
                self.fail(f"truncated header: the file is only {self.size} bytes")
            self.fail(f"bad magic {magic!r}")
        self.pos = 4
        version = self.u32()
        if version not in SUPPORTED_VERSIONS:
            hint = " (big-endian file?)" if version & 0xFFFF == 0 else ""
            self.fail(f"GGUF version {_num(version)} is not supported, only 2 and 3{hint}")
        n_tensors = self.u64()
        n_kv = self.u64()
        if n_tensors > MAX_TENSORS:
            self.fail(f"tensor count {_num(n_tensors)} is absurd")
        if n_kv > MAX_KV:
            self.fail(f"metadata count {_num(n_kv)} is absurd")
        left = self.size - self.pos
        if n_tensors * _MIN_TENSOR_INFO_SIZE > left:
            self.fail(f"truncated header: tensor count {_num(n_tensors)} cannot fit in the file")
        if n_kv * _MIN_KV_SIZE + n_tensors * _MIN_TENSOR_INFO_SIZE > left:
            self.fail(f"truncated header: metadata count {_num(n_kv)} cannot fit in the file")

        metadata, types = self.parse_metadata(n_kv)
        alignment = self.check_metadata(metadata, types)
        tensors = self.parse_tensor_infos(n_tensors)
        data_offset = _align(self.pos, alignment)
        self.check_tensor_data(tensors, data_offset, alignment)
        return GGUFInfo(
            version=version,
            file_size=self.size,
            alignment=alignment,
            data_offset=data_offset,
            metadata=metadata,
            tensors=tuple(tensors),
            value_types={
                key: _VALUE_TYPE_NAMES[vtype]
                if item is None
                else f"array[{_VALUE_TYPE_NAMES[item]}]"
                for key, (vtype, item) in types.items()
            },
        )

    def parse_metadata(self, n_kv: int) -> tuple[dict[str, Any], dict[str, tuple[int, int | None]]]:
        metadata: dict[str, Any] = {}
        types: dict[str, tuple[int, int | None]] = {}  # key -> (value type, array item type)
        for i in range(n_kv):
            raw = self.raw_string("key", MAX_KEY)
            try:
                key = raw.decode("utf-8")
            except UnicodeDecodeError:
                self.fail(f"key {i} is not valid UTF-8")
            if not key:
                self.fail(f"key {i} is empty")
            if key in metadata:
                self.fail(f"duplicate key {key!r}")
            vtype = self.u32()
            item_type = None
            if vtype == _ARRAY:
                # Peek at the item type; array() reads it again.
                self.need(self.pos + 4)
                (item_type,) = _U32.unpack_from(self.buf, self.pos)
            metadata[key] = self.value(key, vtype)
            types[key] = (vtype, item_type)
        return metadata, types

    def check_metadata(
        self, metadata: dict[str, Any], types: dict[str, tuple[int, int | None]]
    ) -> int:
        """Check the keys llama.cpp reads without checking; returns the alignment."""
        alignment = DEFAULT_ALIGNMENT
        if "general.alignment" in metadata:
            vtype, _ = types["general.alignment"]
            if vtype != 4:  # llama.cpp aborts (GGML_ASSERT) on any other type
                self.fail(f"general.alignment must be a uint32, not {_VALUE_TYPE_NAMES[vtype]}")
            alignment = metadata["general.alignment"]
            if not (0 < alignment <= MAX_ALIGNMENT and alignment & (alignment - 1) == 0):
                self.fail(f"alignment {_num(alignment)} is not a power of two up to 1 MiB")
        if "general.architecture" in metadata and types["general.architecture"][0] != _STRING:
            self.fail("general.architecture must be a string")
        n_tokens = None
        for key, item_type in _TOKEN_ARRAYS.items():
            if key not in metadata:
                continue
            vtype, actual = types[key]
            if vtype != _ARRAY or actual != item_type:
                self.fail(f"{key} must be an array of {_VALUE_TYPE_NAMES[item_type]}")
            value = metadata[key]
            count = value.count if isinstance(value, ArraySummary) else len(value)
            if key == _TOKENS_KEY:
                n_tokens = count
            elif key != "tokenizer.ggml.merges" and count != n_tokens:
                self.fail(f"{key} has {count} entries for {n_tokens or 0} tokens")
        return int(alignment)

    def parse_tensor_infos(self, n_tensors: int) -> list[TensorInfo]:
        tensors: list[TensorInfo] = []
        seen: set[str] = set()
        for i in range(n_tensors):
            raw = self.raw_string("tensor name", MAX_TENSOR_NAME)
            try:
                name = raw.decode("utf-8")
            except UnicodeDecodeError:
                self.fail(f"tensor {i}'s name is not valid UTF-8")
            if name in seen:
                self.fail(f"duplicate tensor {name!r}")
            seen.add(name)
            n_dims = self.u32()
            if not 1 <= n_dims <= MAX_DIMS:
                self.fail(f"tensor {name!r} has {_num(n_dims)} dimensions, not 1 to {MAX_DIMS}")
            self.need(self.pos + 8 * n_dims)
            shape = struct.unpack_from(f"<{n_dims}Q", self.buf, self.pos)
            self.pos += 8 * n_dims
            n_elements = 1
            for dim in shape:
                if dim < 1:
                    self.fail(f"tensor {name!r} has an empty dimension")
                n_elements *= dim
            if n_elements >= MAX_ELEMENTS:
                self.fail(f"tensor {name!r} has {_num(n_elements)} elements, too many")
            type_id = self.u32()
            ggml_type = GGML_TYPES.get(type_id)
            if ggml_type is None:
                self.fail(f"tensor {name!r} has unknown ggml type {_num(type_id)}")
            if shape[0] % ggml_type.block_size:
                self.fail(
                    f"tensor {name!r} rows of {shape[0]} are not a multiple of "
                    f"{ggml_type.name}'s block size {ggml_type.block_size}"
                )
            offset = self.u64()
            tensors.append(
                TensorInfo(
                    name=name,
                    shape=tuple(int(d) for d in shape),
                    ggml_type=type_id,
                    type_name=ggml_type.name,
                    offset=offset,
                    n_elements=n_elements,
                    n_bytes=n_elements // ggml_type.block_size * ggml_type.type_size,
                )
            )
        return tensors

    def check_tensor_data(
        self, tensors: list[TensorInfo], data_offset: int, alignment: int
    ) -> None:
        # llama.cpp's reader demands exactly this layout: each tensor at the previous one's
        # end rounded up to the alignment, in header order. Anything else it refuses, so we
        # refuse it first, with a clearer reason.
        expected = 0
        previous = None
        for t in tensors:
            if t.offset % alignment:
                self.fail(
                    f"tensor {t.name!r} offset {_num(t.offset)} is not a multiple of the alignment {alignment}"
                )
            if data_offset + t.offset + t.n_bytes > self.size:
                self.fail(f"tensor {t.name!r} data ends past the end of the file")
            if t.offset < expected:
                self.fail(f"tensor {t.name!r} overlaps tensor {previous!r}")
            if t.offset > expected:
                self.fail(
                    f"tensor {t.name!r} is at offset {t.offset}, expected {expected} (tensors must be packed in order)"
                )
            expected = t.offset + _align(t.n_bytes, alignment)
            previous = t.name


def _limit_text(limit: int) -> str:
    return f"{limit >> 20} MiB" if limit >= 1 << 20 else f"{limit}-byte"


def read_gguf_from(read_at: ReadAt, size: int, name: str) -> GGUFInfo:
    """Parse and validate a GGUF header through ``read_at(offset, length)``.

    ``read_at`` returns up to ``length`` bytes at ``offset`` (fewer only at the end of the
    file); ``size`` is the file's size; ``name`` names the file in errors. Only the header
    is read, in chunks starting at 256 KiB and doubling. Raises InvalidGGUFError for any
    malformed or hostile content; I/O errors from ``read_at`` propagate unchanged.
    """
    return _Parser(read_at, size, name).parse()


def read_gguf(path: str | os.PathLike[str]) -> GGUFInfo:
    """Parse and validate the header of a local GGUF file."""
    name = os.fspath(path)
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise InvalidGGUFError(name, "not a regular file")
    with open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size

        def read_at(offset: int, length: int) -> bytes:
            f.seek(offset)
            return f.read(length) or b""

        return read_gguf_from(read_at, size, name)


def read_gguf_model(paths: Sequence[str | os.PathLike[str]]) -> GGUFInfo:
    """Read a whole model: one file, or every part of a split model in order.

    Each part is validated on its own; the parts must agree on ``split.count`` and number
    themselves 0..N-1 in ``split.no``. The result has the first part's metadata and all
    parts' tensors (each with its ``part`` index and offsets within that part).
    """
    if not paths:
        raise ValueError("read_gguf_model needs at least one path")
    infos = [read_gguf(p) for p in paths]
    first, first_name = infos[0], os.fspath(paths[0])
    count = first.split_count
    if count != len(paths):
        reason = f"split model has {count} parts but {len(paths)} were given"
        raise InvalidGGUFError(first_name, reason)
    if first.architecture is None:
        raise InvalidGGUFError(first_name, "general.architecture is missing")
    if first.architecture == PROJECTOR_ARCHITECTURE:
        raise WrongGGUFKindError(
            first_name,
            "this is a multimodal projector (mmproj), not a model; pass it with --mmproj",
            hint="import it next to its model: localserve import MODEL.gguf NAME --mmproj "
            + os.path.basename(first_name),
        )
    if first.metadata.get("general.type") == "adapter":
        raise WrongGGUFKindError(
            first_name,
            "this is a LoRA adapter, not a model",
            hint="use it on top of its base model: an ADAPTER line in a Modelfile",
        )

    tensors: list[TensorInfo] = []
    names: set[str] = set()
    for index, (path, info) in enumerate(zip(paths, infos, strict=True)):
        if count > 1:
            number = info._int("split.no")
            if number != index:
                label = "no split.no" if number is None else f"split.no {number}"
                raise InvalidGGUFError(os.fspath(path), f"part {index + 1} of {count} has {label}")
            if info.split_count != count:
                reason = (
                    f"part {index + 1} says the model has {info.split_count} parts, not {count}"
                )
                raise InvalidGGUFError(os.fspath(path), reason)
        for t in info.tensors:
            if t.name in names:
                raise InvalidGGUFError(
                    os.fspath(path), f"tensor {t.name!r} is in more than one part"
                )
            names.add(t.name)
            tensors.append(dataclasses.replace(t, part=index))

    declared = first._int("split.tensors.count")
    if count > 1 and declared is not None and declared != len(tensors):
        reason = f"split.tensors.count is {declared} but the parts hold {len(tensors)} tensors"
        raise InvalidGGUFError(first_name, reason)
    if not tensors:
        raise InvalidGGUFError(first_name, "the model has no tensors")
    return GGUFInfo(
        version=first.version,
        file_size=sum(info.file_size for info in infos),
        alignment=first.alignment,
        data_offset=first.data_offset,
        metadata=first.metadata,
        tensors=tuple(tensors),
        value_types=first.value_types,
    )


# ----------------------------------------------------------------------------- projectors

# What llama.cpp's mtmd reads from a projector: tools/mtmd/clip-impl.h, clip.cpp.
_NOT_A_PROJECTOR: Final = "not a multimodal projector (mmproj)"

# Where the width of the embeddings a projector hands the text model can be read off a
# tensor's shape (ne order), as clip.cpp's clip_n_mmproj_embd() does for these types.
# mtmd refuses a projector whose width differs from the model's input width. Types not
# listed (or whose width depends on more than one tensor, like qwen3vl's deepstack)
# give None rather than a guess.
_OUTPUT_WIDTH: Final[dict[str, tuple[str, int]]] = {
    "gemma3": ("mm.input_projection.weight", 0),
    "gemma3nv": ("mm.input_projection.weight", 0),
    "gemma4v": ("mm.input_projection.weight", 1),
    "gemma4uv": ("mm.input_projection.weight", 1),
    "idefics3": ("mm.model.fc.weight", 1),
    "qwen2vl_merger": ("mm.2.bias", 0),
    "qwen2.5vl_merger": ("mm.2.bias", 0),
    "mlp": ("mm.2.weight", 1),
    "pixtral": ("mm.2.weight", 1),
    "lightonocr": ("mm.2.weight", 1),
    "lfm2": ("mm.2.weight", 1),
    "kimivl": ("mm.2.weight", 1),
    "paddleocr": ("mm.2.weight", 1),
    "kimik25": ("mm.2.weight", 1),
    # Sound projectors (clip.cpp clip_n_mmproj_embd).
    "ultravox": ("mm.a.mlp.2.weight", 1),
    "voxtral": ("mm.a.mlp.2.weight", 1),
    "qwen2a": ("mm.a.fc.weight", 1),
}


@dataclass(frozen=True)
class ProjectorInfo:
    """What a multimodal projector (an ``mmproj`` GGUF) is, read from its header."""

    projector_type: str  # clip.projector_type ("gemma3", "mlp", "qwen2.5vl_merger"...)
    has_vision: bool
    has_audio: bool
    n_embd_out: int | None  # width of the embeddings it produces, when readable cheaply
    size: int  # bytes
    gguf: GGUFInfo = dataclasses.field(repr=False, compare=False)

    @property
    def modalities(self) -> tuple[str, ...]:
        """The capabilities it brings a model: "vision" and/or "audio"."""
        return (*(("vision",) if self.has_vision else ()), *(("audio",) if self.has_audio else ()))

    def projector_info(self) -> dict[str, Any]:
        """The key/values Ollama's /api/show returns as ``projector_info``: the
        projector's metadata (``clip.projector_type``, ``clip.has_vision_encoder``,
        ``clip.vision.*``...), long arrays as null, plus ``general.parameter_count``."""
        return self.gguf.model_info()


def read_projector(path: str | os.PathLike[str]) -> ProjectorInfo:
    """Read and check a multimodal projector GGUF (what ``--mmproj`` takes).

    The header goes through the same checks as a model's; then the file must be a
    ``clip`` GGUF with a vision or an audio encoder and a projector type, as mtmd
    requires. Anything else (not a GGUF at all, a language model, a projector without
    an encoder) raises WrongGGUFKindError saying it is not a multimodal projector.
    """
    name = os.fspath(path)
    try:
        info = read_gguf(path)
    except InvalidGGUFError as exc:
        reason = f"{_NOT_A_PROJECTOR}: not a valid GGUF file: {exc.reason}"
        raise WrongGGUFKindError(name, reason) from exc
    return projector_of(info, name)


def projector_of(info: GGUFInfo, name: str) -> ProjectorInfo:
    """The checks of ``read_projector`` on a header already read (from a file, or over
    HTTP Range requests by ``plan`` for a Hub model); ``name`` names it in errors."""
    architecture = info.architecture
    if architecture != PROJECTOR_ARCHITECTURE:
        what = "missing" if architecture is None else repr(architecture)
        raise WrongGGUFKindError(
            name,
            f"{_NOT_A_PROJECTOR}: general.architecture is {what}, not 'clip'",
            hint="--mmproj takes the projector file (usually mmproj-*.gguf) that belongs "
            "to the model",
        )
    has_vision = info.metadata.get("clip.has_vision_encoder") is True
    has_audio = info.metadata.get("clip.has_audio_encoder") is True
    if not (has_vision or has_audio):
        raise WrongGGUFKindError(
            name,
            f"{_NOT_A_PROJECTOR}: it has neither a vision nor an audio encoder "
            "(clip.has_vision_encoder and clip.has_audio_encoder are not true)",
        )
    projector_type = info._str("clip.projector_type")
    # Projectors with both encoders may name one type per modality instead.
    for modality, present in (("vision", has_vision), ("audio", has_audio)):
        if projector_type is None and present:
            projector_type = info._str(f"clip.{modality}.projector_type")
    if not projector_type:
        raise WrongGGUFKindError(name, f"{_NOT_A_PROJECTOR}: it names no clip.projector_type")
    if not info.tensors:
        raise WrongGGUFKindError(name, f"{_NOT_A_PROJECTOR}: it has no tensors")
    return ProjectorInfo(
        projector_type=projector_type,
        has_vision=has_vision,
        has_audio=has_audio,
        n_embd_out=_output_width(info, projector_type),
        size=info.file_size,
        gguf=info,
    )


def _output_width(info: GGUFInfo, projector_type: str) -> int | None:
    where = _OUTPUT_WIDTH.get(projector_type)
    if where is None:
        return None
    tensor_name, axis = where
    for tensor in info.tensors:
        if tensor.name == tensor_name:
            return tensor.shape[axis] if axis < len(tensor.shape) else None
    return None
