"""What a GGUF header says, as values, and the facts derived from it.

``GGUFInfo`` holds the header (metadata, tensors, each key's value type) and reads the
facts the rest of localserve asks for off it: architecture, context length, head counts
and dimensions, the vocabulary, the parameter count, llama.cpp's quantization name,
bytes per layer, and the ``model_info`` Ollama's /api/show returns.
``parameter_size_label`` prints a parameter count as Ollama does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from localserve.store.gguf.format import FILE_TYPE_NAMES, FTYPE_GUESSED, TOKENS_KEY

__all__ = ["ArraySummary", "GGUFInfo", "TensorInfo", "parameter_size_label"]

POOLING_RANK = 4  # llama.cpp's LLAMA_POOLING_TYPE_RANK, as {arch}.pooling_type says it


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
            name = FILE_TYPE_NAMES.get(file_type & ~FTYPE_GUESSED)
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
    def reranker(self) -> bool:
        """A cross-encoder reranker: rank pooling (LLAMA_POOLING_TYPE_RANK, 4), or a
        classification head (``cls``, ``cls.output``), which llama.cpp's rank pooling
        applies; converted rerankers do not all say their pooling."""
        if self._int(self._arch("pooling_type")) == POOLING_RANK:
            return True
        return any(t.name in ("cls.weight", "cls.output.weight") for t in self.tensors)

    def capabilities(self, chat: Sequence[str], modalities: Sequence[str] = ()) -> list[str]:
        """What the model can do, as /api/show and `localserve show` list them: what its
        chat template can (``chat``: completion, tools, thinking), fill-in-the-middle,
        the projector's ``modalities``, embedding; a reranker only embeds and ranks (it
        has no language-model head to generate with)."""
        if self.reranker:
            return ["embedding", "rerank"]
        insert = ["insert"] if self.fill_in_the_middle else []
        return [*(chat or ("completion",)), *insert, *modalities, "embedding"]

    @property
    def tokenizer_model(self) -> str | None:
        return self._str("tokenizer.ggml.model")

    @property
    def vocab_size(self) -> int | None:
        tokens = self.metadata.get(TOKENS_KEY)
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
