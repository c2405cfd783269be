"""LoRA adapters: read an adapter GGUF and check it against its base model.

An adapter is a GGUF like a model, and its header goes through the same checks
(store/gguf/); then it must be what llama.cpp's ``llama_adapter_lora_init``
(src/llama-adapter.cpp in the vendored sources) accepts, and everything it would
refuse, or abort on, is refused here first with a clear reason, so that a wrong file
is turned away when a model is created, not when it loads:

- ``general.type`` "adapter" and ``adapter.type`` "lora" (strings: llama.cpp aborts on
  another type), ``general.architecture`` naming the base architecture;
- ``adapter.lora.alpha``, when present, a float32 (llama.cpp aborts on any other type);
  llama.cpp scales each update by ``scale x alpha / rank``, or by ``scale`` alone when
  alpha is 0 or absent;
- tensors in pairs ``W.lora_a`` / ``W.lora_b`` for a base tensor ``W`` (``*_norm.weight``
  tensors are ignored by llama.cpp, anything else refused), whose ranks agree: in ne
  order A is (n_in, rank) and B (rank, n_out) for a base matrix (n_in, n_out), except
  ``token_embd.weight``, whose A is (rank, n_vocab) and B (rank, n_embd);
- activated LoRA (``adapter.alora.invocation_tokens``) is refused: llama.cpp's library
  applies such an adapter to every token, which is not what it was trained for.

``check_adapter`` then makes llama.cpp's checks against the base model: the same
architecture, and each ``W`` present in the model with the shape the pair implies.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Final

from localserve.errors import InvalidGGUFError, WrongGGUFKindError
from localserve.store.gguf.format import PROJECTOR_ARCHITECTURE
from localserve.store.gguf.info import GGUFInfo, TensorInfo
from localserve.store.gguf.parser import read_gguf

__all__ = ["AdapterInfo", "LoraPair", "check_adapter", "read_adapter"]

_NOT_AN_ADAPTER: Final = "not a LoRA adapter"
_HINT: Final = (
    "ADAPTER takes a LoRA adapter GGUF made for the model (llama.cpp's "
    "convert_lora_to_gguf.py converts a PEFT adapter)"
)
_EMBEDDINGS: Final = "token_embd.weight"


@dataclass(frozen=True)
class LoraPair:
    """The two low-rank factors that update one base tensor."""

    target: str  # the base tensor's name ("blk.0.attn_q.weight")
    a: TensorInfo
    b: TensorInfo

    @property
    def rank(self) -> int:
        return self.b.shape[0]  # llama.cpp's rank: B's ne[0], for every tensor

    @property
    def base_shape(self) -> tuple[int, int]:
        """The (ne[0], ne[1]) the base tensor must have, as llama.cpp checks it."""
        if self.target == _EMBEDDINGS:
            return _dim(self.b.shape, 1), _dim(self.a.shape, 1)
        return _dim(self.a.shape, 0), _dim(self.b.shape, 1)

    @property
    def n_bytes(self) -> int:
        return self.a.n_bytes + self.b.n_bytes


@dataclass(frozen=True)
class AdapterInfo:
    """What a LoRA adapter GGUF is, read from its header."""

    path: str
    name: str | None  # general.name
    architecture: str  # of the models it is for
    alpha: float | None  # adapter.lora.alpha; None when absent
    rank: int  # the largest of its pairs' ranks
    pairs: tuple[LoraPair, ...]  # sorted by target name
    size: int  # file bytes
    gguf: GGUFInfo = field(repr=False, compare=False)

    @property
    def tensors(self) -> dict[str, tuple[int, ...]]:
        """Every tensor of the file (``W.lora_a``...) and its shape, in ne order."""
        return {t.name: t.shape for t in self.gguf.tensors}

    @property
    def targets(self) -> tuple[str, ...]:
        """The base tensors it updates."""
        return tuple(p.target for p in self.pairs)

    @property
    def weights_bytes(self) -> int:
        """What llama.cpp allocates for it: every pair, as stored (norms are skipped)."""
        return sum(p.n_bytes for p in self.pairs)


def _dim(shape: tuple[int, ...], axis: int) -> int:
    return shape[axis] if axis < len(shape) else 1


def _shape(dims: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(d) for d in dims) + "]"


def read_adapter(path: str | os.PathLike[str]) -> AdapterInfo:
    """Read and check a LoRA adapter GGUF (see the module docstring for the rules).

    Anything else (not a GGUF, a model, a projector, another kind of adapter) raises
    WrongGGUFKindError saying what it is instead; an adapter llama.cpp would refuse or
    crash on raises InvalidGGUFError with the reason.
    """
    name = os.fspath(path)
    try:
        info = read_gguf(path)
    except InvalidGGUFError as exc:
        reason = f"{_NOT_AN_ADAPTER}: not a valid GGUF file: {exc.reason}"
        raise WrongGGUFKindError(name, reason, hint=_HINT) from exc
    general_type = info.metadata.get("general.type")
    if general_type != "adapter":
        if info.architecture == PROJECTOR_ARCHITECTURE or general_type == "mmproj":
            what = "this is a multimodal projector (mmproj)"
        elif general_type is None:
            what = "general.type is missing (a model?)"
        else:
            what = f"general.type is {general_type!r}, not 'adapter'"
        raise WrongGGUFKindError(name, f"{_NOT_AN_ADAPTER}: {what}", hint=_HINT)
    architecture = info.architecture
    if not architecture:
        raise InvalidGGUFError(name, "general.architecture is missing: whose adapter is it?")
    adapter_type = info.metadata.get("adapter.type")
    if adapter_type != "lora":
        what = "missing" if adapter_type is None else repr(adapter_type)
        raise WrongGGUFKindError(
            name, f"{_NOT_AN_ADAPTER}: adapter.type is {what}, not 'lora'", hint=_HINT
        )
    if "adapter.alora.invocation_tokens" in info.metadata:
        raise WrongGGUFKindError(
            name,
            "activated LoRA (aLoRA) adapters are not supported: llama.cpp would apply it "
            "to every token, not only after its invocation tokens",
        )
    alpha = _alpha(name, info)
    pairs = _pairs(name, info)
    return AdapterInfo(
        path=name,
        name=info.model_name,
        architecture=architecture,
        alpha=alpha,
        rank=max(p.rank for p in pairs),
        pairs=pairs,
        size=info.file_size,
        gguf=info,
    )


def _alpha(name: str, info: GGUFInfo) -> float | None:
    key = "adapter.lora.alpha"
    if key not in info.metadata:
        return None
    vtype = info.value_types.get(key)
    if vtype != "float32":  # gguf_get_val_f32 asserts the type: the process would abort
        raise InvalidGGUFError(name, f"{key} must be a float32, not {vtype}")
    alpha = float(info.metadata[key])
    if not math.isfinite(alpha):
        raise InvalidGGUFError(name, f"{key} is {alpha}")
    return alpha


def _pairs(name: str, info: GGUFInfo) -> tuple[LoraPair, ...]:
    halves: dict[str, dict[str, TensorInfo]] = {}
    for tensor in info.tensors:
        for suffix in (".lora_a", ".lora_b"):
            if tensor.name.endswith(suffix):
                halves.setdefault(tensor.name.removesuffix(suffix), {})[suffix] = tensor
                break
        else:
            if not tensor.name.endswith("_norm.weight"):  # llama.cpp skips these
                raise InvalidGGUFError(
                    name, f"tensor {tensor.name!r} is neither a .lora_a nor a .lora_b tensor"
                )
    if not halves:
        raise WrongGGUFKindError(name, f"{_NOT_AN_ADAPTER}: it has no LoRA tensors")
    pairs = []
    for target, found in sorted(halves.items()):
        for suffix in (".lora_a", ".lora_b"):
            if suffix not in found:
                raise InvalidGGUFError(name, f"{target!r} has no {suffix} tensor to pair with")
        pair = LoraPair(target, found[".lora_a"], found[".lora_b"])
        # A's rank axis: ne[1], or ne[0] for the embeddings (see the module docstring).
        a_rank = _dim(pair.a.shape, 0 if target == _EMBEDDINGS else 1)
        if a_rank != pair.rank:
            raise InvalidGGUFError(
                name,
                f"{target!r}: lora_a {_shape(pair.a.shape)} and lora_b {_shape(pair.b.shape)} "
                "do not share a rank (lora_a not transposed? adapters from llama.cpp's old "
                "finetune example are not supported)",
            )
        pairs.append(pair)
    return tuple(pairs)


def check_adapter(adapter: AdapterInfo, base: GGUFInfo, *, model: str | None = None) -> None:
    """Refuse an adapter that does not fit ``base``, as llama.cpp would when loading it:
    another architecture, or a tensor the model lacks or has in another shape.
    ``model`` names the model in messages (default: its general.name)."""
    label = model or base.model_name or "the model"
    if adapter.architecture != base.architecture:
        raise WrongGGUFKindError(
            adapter.path,
            f"the adapter is for {adapter.architecture} models, but {label} is "
            f"{base.architecture or 'of no known architecture'}",
            hint="use the adapter with the model it was trained on",
        )
    shapes = {t.name: t.shape for t in base.tensors}
    for pair in adapter.pairs:
        have = shapes.get(pair.target)
        if have is None:
            raise WrongGGUFKindError(
                adapter.path,
                f"the adapter changes tensor {pair.target!r}, which {label} does not have "
                "(an adapter for another model?)",
            )
        expected = pair.base_shape
        if (_dim(have, 0), _dim(have, 1)) != expected:
            raise WrongGGUFKindError(
                adapter.path,
                f"the adapter expects tensor {pair.target!r} of shape {_shape(expected)}, "
                f"but {label}'s is {_shape(have)} (an adapter for another model?)",
            )
