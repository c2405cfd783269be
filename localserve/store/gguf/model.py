"""Read a whole model GGUF: one file, or the parts of a split model, checked together.

A model is told apart from the other GGUFs a user may hand over by mistake: a
multimodal projector (``mmproj``, read by projector.py) and a LoRA adapter
(store/adapter.py reads those) are refused with :class:`WrongGGUFKindError` and a hint
saying where they go instead.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

from localserve.errors import InvalidGGUFError, WrongGGUFKindError
from localserve.store.gguf.format import PROJECTOR_ARCHITECTURE
from localserve.store.gguf.info import GGUFInfo, TensorInfo
from localserve.store.gguf.parser import read_gguf

__all__ = ["read_gguf_model"]


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
