"""Multimodal projectors (``mmproj`` GGUFs): what llama.cpp's mtmd needs of one.

A projector is a ``clip`` GGUF that llama.cpp's mtmd loads next to a model, and
llama.cpp cannot load as one; ``read_projector`` refuses anything else (a model, a file
that is not a GGUF) with :class:`WrongGGUFKindError`, and reads what it brings: vision,
audio, and the width of the embeddings it hands the model.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Final

from localserve.errors import InvalidGGUFError, WrongGGUFKindError
from localserve.store.gguf.format import PROJECTOR_ARCHITECTURE
from localserve.store.gguf.info import GGUFInfo
from localserve.store.gguf.parser import read_gguf

__all__ = ["ProjectorInfo", "projector_of", "read_projector"]

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
