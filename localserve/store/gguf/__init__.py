"""Read and validate the header of a GGUF file without trusting it.

This package owns localserve's knowledge of the GGUF format: the header layout, the
ggml tensor types and llama.cpp's file-type names, and the checks a file must pass
before llama.cpp is allowed to open it. Anything we would not hand to llama.cpp is
rejected with :class:`InvalidGGUFError` carrying a one-line reason. Two kinds of GGUF
are told apart: a model (``read_gguf_model``) and a multimodal projector (``mmproj``,
``read_projector``); each refuses the other with :class:`WrongGGUFKindError`, and
``read_gguf_model`` refuses a LoRA adapter too (store/adapter.py reads those).
Stdlib only.

- ``format``: the format as tables: the layout, GGUF value types, ggml tensor types
  (``GGMLType``, ``GGML_TYPES``), llama.cpp's file-type names, the tokenizer arrays
  llama.cpp reads unchecked.
- ``info``: what a header says, as values (``GGUFInfo``, ``TensorInfo``,
  ``ArraySummary`` for a long array not kept), and the facts derived from it
  (parameter count and ``parameter_size_label``, quantization, bytes per layer...).
- ``parser``: the validating parser: bounded, incremental reads through a
  ``read_at(offset, length)`` callable (a local file or HTTP Range requests), every
  count, length, type and offset checked (``read_gguf_from``, ``read_gguf``).
- ``model``: a whole model, one file or a split model's parts (``read_gguf_model``).
- ``projector``: multimodal projectors (``ProjectorInfo``, ``read_projector``,
  ``projector_of``).

The names below are re-exported here, so callers import them from the package.
"""

from __future__ import annotations

from localserve.store.gguf.format import FILE_TYPE_NAMES, GGML_TYPES, GGMLType
from localserve.store.gguf.info import ArraySummary, GGUFInfo, TensorInfo, parameter_size_label
from localserve.store.gguf.model import read_gguf_model
from localserve.store.gguf.parser import read_gguf, read_gguf_from
from localserve.store.gguf.projector import ProjectorInfo, projector_of, read_projector

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
