"""Malformed and hostile GGUF bytes for the validator tests.

Two tools, both written with ``struct`` and independent of ``localserve.store.gguf`` so a
bug in the reader cannot hide in the fixtures:

- a byte-level builder (``gguf_bytes``, ``kv``, ``tensor_info``...) to write any header,
  valid or not, field by field;
- ``layout`` (a walker for well-formed files) with patch helpers that change one field of
  a good file: the magic, version, counts, a string's length, a tensor's type or offset.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ARRAY",
    "STRING",
    "Layout",
    "arr",
    "gguf_bytes",
    "gguf_string",
    "kv",
    "layout",
    "mutations",
    "patch",
    "simple_gguf",
    "string_item_at",
    "tensor_info",
    "with_counts",
    "with_key_length",
    "with_magic",
    "with_string_length",
    "with_tensor_field",
    "with_version",
]

# GGUF value types
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = (
    range(13)
)
_FORMATS = {
    UINT8: "B", INT8: "b", UINT16: "H", INT16: "h", UINT32: "I", INT32: "i", FLOAT32: "f",
    BOOL: "?", UINT64: "Q", INT64: "q", FLOAT64: "d",
}  # fmt: skip
F32, F16, Q4_0, Q8_0, Q4_K = 0, 1, 2, 8, 12


def gguf_string(value: str | bytes, *, length: int | None = None) -> bytes:
    """A GGUF string; ``length`` overrides the declared length (the bytes stay as given)."""
    raw = value.encode() if isinstance(value, str) else value
    return struct.pack("<Q", len(raw) if length is None else length) + raw


def _value(vtype: int, value: Any) -> bytes:
    if vtype == STRING:
        return gguf_string(value)
    if vtype == ARRAY:
        item_type, items = value
        body = b"".join(_value(item_type, item) for item in items)
        return struct.pack("<IQ", item_type, len(items)) + body
    return struct.pack("<" + _FORMATS[vtype], value)


def kv(key: str | bytes, vtype: int, value: Any) -> bytes:
    """One key/value entry; for arrays pass ``value=(item_type, items)`` (see ``arr``)."""
    return gguf_string(key) + struct.pack("<I", vtype) + _value(vtype, value)


def arr(item_type: int, items: Sequence[Any]) -> tuple[int, Sequence[Any]]:
    return item_type, items


def tensor_info(name: str | bytes, shape: Sequence[int], ggml_type: int, offset: int) -> bytes:
    return gguf_string(name) + struct.pack(
        f"<I{len(shape)}QIQ", len(shape), *shape, ggml_type, offset
    )


def gguf_bytes(
    kvs: Sequence[bytes] = (),
    tensors: Sequence[bytes] = (),
    *,
    data: bytes = b"",
    alignment: int = 32,
    magic: bytes = b"GGUF",
    version: int = 3,
    n_tensors: int | None = None,
    n_kv: int | None = None,
) -> bytes:
    """Header + padding to ``alignment`` + ``data``; counts default to the real ones."""
    header = (
        magic
        + struct.pack(
            "<IQQ",
            version,
            len(tensors) if n_tensors is None else n_tensors,
            len(kvs) if n_kv is None else n_kv,
        )
        + b"".join(kvs)
        + b"".join(tensors)
    )
    return header + b"\0" * (-len(header) % alignment) + data


def simple_gguf(
    tensors: Sequence[tuple[str | bytes, Sequence[int], int]] = (("weight", (32, 2), F32),),
    *,
    extra_kvs: Sequence[bytes] = (),
    alignment: int | None = None,
) -> bytes:
    """A small valid file: general.architecture, ``extra_kvs``, tensors packed with zero data.

    Only F32/F16/Q8_0/Q4_0/Q4_K sizes are known here, which is all the tests use.
    """
    sizes = {F32: (1, 4), F16: (1, 2), Q4_0: (32, 18), Q8_0: (32, 34), Q4_K: (256, 144)}
    align = 32 if alignment is None else alignment
    kvs = [kv("general.architecture", STRING, "llama"), *extra_kvs]
    if alignment is not None:
        kvs.append(kv("general.alignment", UINT32, alignment))
    infos, offset = [], 0
    for name, shape, ggml_type in tensors:
        block, size = sizes[ggml_type]
        n = 1
        for d in shape:
            n *= d
        infos.append(tensor_info(name, shape, ggml_type, offset))
        offset += n // block * size
        offset += -offset % align
    return gguf_bytes(kvs, infos, data=b"\0" * offset, alignment=align)


@dataclass(frozen=True)
class KVField:
    key: str
    key_at: int  # offset of the key's u64 length
    type_at: int
    value_at: int  # for strings, the u64 length; for arrays, the u32 item type


@dataclass(frozen=True)
class TensorField:
    name: str
    name_at: int
    n_dims_at: int
    dims_at: int
    type_at: int
    offset_at: int


@dataclass(frozen=True)
class Layout:
    kvs: dict[str, KVField]
    tensors: dict[str, TensorField]
    header_end: int


def layout(data: bytes) -> Layout:
    """Where each field of a well-formed GGUF header sits (no validation: test use only)."""
    pos = 24
    (n_tensors, n_kv) = struct.unpack_from("<QQ", data, 8)

    def string(at: int) -> tuple[bytes, int]:
        (n,) = struct.unpack_from("<Q", data, at)
        return data[at + 8 : at + 8 + n], at + 8 + n

    def skip_value(vtype: int, at: int) -> int:
        if vtype == STRING:
            return string(at)[1]
        if vtype == ARRAY:
            item_type, count = struct.unpack_from("<IQ", data, at)
            at += 12
            for _ in range(count):
                at = skip_value(item_type, at)
            return at
        return at + struct.calcsize("<" + _FORMATS[vtype])

    kvs = {}
    for _ in range(n_kv):
        key, type_at = string(pos)
        (vtype,) = struct.unpack_from("<I", data, type_at)
        kvs[key.decode()] = KVField(key.decode(), pos, type_at, type_at + 4)
        pos = skip_value(vtype, type_at + 4)
    tensors = {}
    for _ in range(n_tensors):
        name, n_dims_at = string(pos)
        (n_dims,) = struct.unpack_from("<I", data, n_dims_at)
        type_at = n_dims_at + 4 + 8 * n_dims
        tensors[name.decode()] = TensorField(
            name.decode(), pos, n_dims_at, n_dims_at + 4, type_at, type_at + 4
        )
        pos = type_at + 12
    return Layout(kvs, tensors, pos)


def string_item_at(data: bytes, key: str, index: int) -> int:
    """Offset of the u64 length of item ``index`` of the string array under ``key``."""
    at = layout(data).kvs[key].value_at + 12
    for _ in range(index):
        (n,) = struct.unpack_from("<Q", data, at)
        at += 8 + n
    return at


def patch(data: bytes, at: int, fmt: str, value: Any) -> bytes:
    """``data`` with ``struct.pack(fmt, value)`` written over the bytes at ``at``."""
    packed = struct.pack(fmt, value)
    return data[:at] + packed + data[at + len(packed) :]


def with_magic(data: bytes, magic: bytes) -> bytes:
    return magic + data[4:]


def with_version(data: bytes, version: int) -> bytes:
    return patch(data, 4, "<I", version)


def with_counts(data: bytes, *, n_tensors: int | None = None, n_kv: int | None = None) -> bytes:
    if n_tensors is not None:
        data = patch(data, 8, "<Q", n_tensors)
    if n_kv is not None:
        data = patch(data, 16, "<Q", n_kv)
    return data


def with_key_length(data: bytes, key: str, length: int) -> bytes:
    return patch(data, layout(data).kvs[key].key_at, "<Q", length)


def with_string_length(data: bytes, key: str, length: int) -> bytes:
    """Change the declared length of the string value stored under ``key``."""
    return patch(data, layout(data).kvs[key].value_at, "<Q", length)


def with_tensor_field(data: bytes, name: str, field: str, value: int) -> bytes:
    """Change one field of tensor ``name``: "name_length", "n_dims", "dim0", "type" or "offset"."""
    t = layout(data).tensors[name]
    at, fmt = {
        "name_length": (t.name_at, "<Q"),
        "n_dims": (t.n_dims_at, "<I"),
        "dim0": (t.dims_at, "<Q"),
        "type": (t.type_at, "<I"),
        "offset": (t.offset_at, "<Q"),
    }[field]
    return patch(data, at, fmt, value)


def mutations(data: bytes, *, seed: int, count: int, region: int | None = None) -> Iterator[bytes]:
    """``count`` random corruptions of ``data`` within its first ``region`` bytes.

    Mixes single-byte flips, overwritten 8-byte little-endian fields (lengths and counts
    are u64s, so large values here stress the bounds checks), and truncations.
    """
    rng = random.Random(seed)
    end = min(len(data), region or len(data))
    for _ in range(count):
        kind = rng.random()
        if kind < 0.45:
            at = rng.randrange(end)
            yield data[:at] + bytes([rng.randrange(256)]) + data[at + 1 :]
        elif kind < 0.8:
            at = rng.randrange(max(1, end - 8))
            value = rng.choice(
                [0, 1, 2**16, 2**31, 2**32 - 1, 2**40, 2**63, 2**64 - 1, rng.randrange(2**64)]
            )
            yield patch(data, at, "<Q", value)
        else:
            yield data[: rng.randrange(end)]
