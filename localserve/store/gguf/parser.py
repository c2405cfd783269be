"""Read and validate the header of a GGUF file without trusting it.

llama.cpp's own reader trusts many fields (a string length becomes an allocation, a
tensor table is indexed by a count read from the file, a wrongly typed tokenizer array
is read as floats), so every count, length, type and offset is checked here first, and
anything we would not hand to llama.cpp is rejected with :class:`InvalidGGUFError`
carrying a one-line reason.

Reads are bounded and incremental: the header is fetched in growing chunks through a
``read_at(offset, length)`` callable, so the same code parses a local file or a remote
one through HTTP Range requests, and never reads tensor data. Stdlib only.
"""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import Callable
from typing import Any, Final, NoReturn

from localserve.errors import InvalidGGUFError
from localserve.store.gguf.format import (
    ARRAY,
    DEFAULT_ALIGNMENT,
    GGML_TYPES,
    MAGIC,
    SCALARS,
    STRING,
    SUPPORTED_VERSIONS,
    TOKEN_ARRAYS,
    TOKENS_KEY,
    VALUE_TYPE_NAMES,
)
from localserve.store.gguf.info import ArraySummary, GGUFInfo, TensorInfo

__all__ = ["ReadAt", "read_gguf", "read_gguf_from"]

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
_SCALAR_STRUCTS: Final = {t: struct.Struct("<" + code) for t, (_, code) in SCALARS.items()}


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
        if vtype == STRING:
            return self.text(f"value of {key!r}: string")
        if vtype == ARRAY:
            return self.array(key)
        self.fail(f"key {key!r} has unknown value type {vtype}")

    def array(self, key: str) -> Any:
        item_type = self.u32()
        count = self.u64()
        if item_type == ARRAY:
            # llama.cpp refuses arrays of arrays too; allowing none keeps nesting at one level.
            self.fail(f"key {key!r} is an array of arrays")
        if item_type == STRING:
            if count * 8 > self.size - self.pos:
                self.fail(f"array {key!r} of {_num(count)} strings exceeds the file")
            if count <= LIST_LIMIT:
                return [self.text(f"item of {key!r}: string") for _ in range(count)]
            self.skip_strings(key, count)
            return ArraySummary("string", count)
        if item_type not in SCALARS:
            self.fail(f"array {key!r} has unknown item type {item_type}")
        type_name, code = SCALARS[item_type]
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
                key: VALUE_TYPE_NAMES[vtype] if item is None else f"array[{VALUE_TYPE_NAMES[item]}]"
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
            if vtype == ARRAY:
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
                self.fail(f"general.alignment must be a uint32, not {VALUE_TYPE_NAMES[vtype]}")
            alignment = metadata["general.alignment"]
            if not (0 < alignment <= MAX_ALIGNMENT and alignment & (alignment - 1) == 0):
                self.fail(f"alignment {_num(alignment)} is not a power of two up to 1 MiB")
        if "general.architecture" in metadata and types["general.architecture"][0] != STRING:
            self.fail("general.architecture must be a string")
        n_tokens = None
        for key, item_type in TOKEN_ARRAYS.items():
            if key not in metadata:
                continue
            vtype, actual = types[key]
            if vtype != ARRAY or actual != item_type:
                self.fail(f"{key} must be an array of {VALUE_TYPE_NAMES[item_type]}")
            value = metadata[key]
            count = value.count if isinstance(value, ArraySummary) else len(value)
            if key == TOKENS_KEY:
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
