"""The GGUF format as tables: the header layout, the value types, the ggml tensor types,
llama.cpp's file-type names, and the tokenizer arrays llama.cpp reads without checking.

Layout (little-endian, versions 2 and 3)::

    "GGUF" | u32 version | u64 n_tensors | u64 n_kv
    n_kv x   (string key, u32 value_type, value)
    n_tensors x (string name, u32 n_dims, u64 dims[n_dims], u32 ggml_type, u64 offset)
    padding to `general.alignment` | tensor data (offsets relative to here)

A string is a u64 byte length then that many UTF-8 bytes; an array is a u32 item type,
a u64 count, then the items.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = [
    "ARRAY",
    "DEFAULT_ALIGNMENT",
    "FILE_TYPE_NAMES",
    "FTYPE_GUESSED",
    "GGML_TYPES",
    "MAGIC",
    "PROJECTOR_ARCHITECTURE",
    "SCALARS",
    "STRING",
    "SUPPORTED_VERSIONS",
    "TOKENS_KEY",
    "TOKEN_ARRAYS",
    "VALUE_TYPE_NAMES",
    "GGMLType",
]

MAGIC: Final = b"GGUF"
# general.architecture of a multimodal projector (mmproj), which llama.cpp's mtmd loads
# next to a model and llama.cpp cannot load as one.
PROJECTOR_ARCHITECTURE: Final = "clip"
SUPPORTED_VERSIONS: Final = (2, 3)
DEFAULT_ALIGNMENT: Final = 32

# GGUF value types: id -> (name, struct format character); 8 and 9 are composite.
STRING: Final = 8
ARRAY: Final = 9
SCALARS: Final[dict[int, tuple[str, str]]] = {
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
VALUE_TYPE_NAMES: Final = {
    **{t: n for t, (n, _) in SCALARS.items()},
    STRING: "string",
    ARRAY: "array",
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
FTYPE_GUESSED: Final = 1024  # llama.cpp ORs this in for in-memory guesses

# Keys llama.cpp reads as raw arrays of a fixed type (gguf_get_arr_data / _arr_str assert
# the type or index past the end), so a wrong type or a short array would crash it.
TOKENS_KEY: Final = "tokenizer.ggml.tokens"
TOKEN_ARRAYS: Final = {
    TOKENS_KEY: STRING,
    "tokenizer.ggml.scores": 6,  # float32
    "tokenizer.ggml.token_type": 5,  # int32
    "tokenizer.ggml.merges": STRING,
}
