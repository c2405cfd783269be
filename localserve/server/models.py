"""What the daemon says about stored models: /api/tags entries and /api/show.

GGUF headers are read once per blob digest and kept in ``app.state.details``
(a model's) and ``app.state.projectors`` (its multimodal projector's): a header
parse is tens of milliseconds for a large vocabulary. A header that cannot
be read because the file changed on disk is reported as the model being damaged
(with the repair step); /api/tags still lists such a model, with what its manifest says.
"""

from __future__ import annotations

import logging
from typing import Any

from localserve.errors import StoreError, TemplateError
from localserve.runtime.chat.formats import PLAIN, ChatFormat, detect
from localserve.runtime.templates import ChatTemplate
from localserve.schemas.ollama import ListedModel, ModelDetails, ShowResponse, timestamp
from localserve.store.create import ModelConfig, iter_config_lines, model_modelfile, read_config
from localserve.store.gguf import (
    GGUFInfo,
    ProjectorInfo,
    parameter_size_label,
    read_gguf_model,
    read_projector,
)
from localserve.store.manifest import Manifest
from localserve.store.store import ModelStore, StoredModel
from localserve.store.verify import check_model

log = logging.getLogger("localserve.server")


def gguf_info(app: Any, manifest: Manifest) -> GGUFInfo:
    cache: dict[str, GGUFInfo] = app.state.details
    info = cache.get(manifest.digest)
    if info is None:
        store: ModelStore = app.state.store
        try:
            info = read_gguf_model(store.blob_paths(manifest))
        except (StoreError, OSError):
            check_model(store, manifest)  # a file that changed on disk: say so, and how to repair
            raise
        cache[manifest.digest] = info
    return info


def projector_info(app: Any, manifest: Manifest) -> ProjectorInfo | None:
    """The model's multimodal projector, read once per blob digest; None without one."""
    if manifest.projector is None:
        return None
    cache: dict[str, ProjectorInfo] = app.state.projectors
    found = cache.get(manifest.projector.digest)
    if found is None:
        store: ModelStore = app.state.store
        path = store.projector_path(manifest)
        assert path is not None  # the manifest has a projector
        try:
            found = read_projector(path)
        except (StoreError, OSError):
            check_model(store, manifest)  # a file that changed on disk: say so, and how to repair
            raise
        cache[manifest.projector.digest] = found
    return found


def model_config(app: Any, manifest: Manifest) -> ModelConfig:
    """A created model's settings (parameters, system prompt, template...), read once
    per set of layer blobs; a pulled or imported model has none."""
    if not manifest.layers:
        return ModelConfig()
    cache: dict[tuple[str, ...], ModelConfig] = app.state.configs
    key = tuple(layer.digest for layer in manifest.layers)
    found = cache.get(key)
    if found is None:
        found = cache[key] = read_config(app.state.store, manifest)
    return found


def chat_template(app: Any, manifest: Manifest) -> str | None:
    """The template the model runs with: its Modelfile's TEMPLATE, else the GGUF's."""
    override = model_config(app, manifest).template
    return override if override is not None else gguf_info(app, manifest).chat_template


def chat_format(app: Any, manifest: Manifest) -> ChatFormat:
    """What the model's chat template can do (tools, thinking), found by rendering it
    (runtime/chat/formats.py); cached per template like the header per blob."""
    cache: dict[str, ChatFormat] = app.state.formats
    source = chat_template(app, manifest)
    key = manifest.digest if manifest.layer("template") is None else f"template:{source}"
    found = cache.get(key)
    if found is None:
        try:
            found = detect(ChatTemplate(source)) if source else PLAIN
        except TemplateError:
            found = PLAIN  # a template that does not compile: loading it says why
        cache[key] = found
    return found


def capabilities(app: Any, manifest: Manifest) -> list[str]:
    projector = projector_info(app, manifest)
    modalities = projector.modalities if projector is not None else ()  # vision, audio
    return gguf_info(app, manifest).capabilities(
        chat_format(app, manifest).capabilities, modalities
    )


def model_details(app: Any, manifest: Manifest, parent: str = "") -> ModelDetails:
    info = gguf_info(app, manifest)
    family = info.architecture or "unknown"
    return ModelDetails(
        parent_model=parent,
        format="gguf",
        family=family,
        families=[family],
        parameter_size=parameter_size_label(info.parameter_count),
        quantization_level=manifest.quantization or info.quantization,
    )


def tag_entry(app: Any, stored: StoredModel) -> ListedModel:
    try:
        details = model_details(app, stored.manifest)
    except (StoreError, OSError) as exc:
        # One damaged model must not break the list; loading it says what is wrong.
        log.warning("cannot read the GGUF header of %s: %s", stored.name, exc)
        details = ModelDetails(
            parent_model="",
            format="gguf",
            family="unknown",
            families=["unknown"],
            parameter_size="",
            quantization_level=stored.manifest.quantization or "",
        )
    return ListedModel(
        name=stored.name,
        model=stored.name,
        modified_at=timestamp(stored.modified_at),
        size=stored.manifest.total_size,
        digest=stored.manifest.digest,
        details=details,
    )


def show_model(app: Any, name: str, verbose: bool) -> ShowResponse:
    store: ModelStore = app.state.store
    _, manifest = store.get(name)
    info = gguf_info(app, manifest)
    model_info = info.model_info()
    if not verbose:
        # Ollama leaves the long tokenizer arrays out unless asked; we never send them.
        model_info = {k: v for k, v in model_info.items() if v is not None}
    config = model_config(app, manifest)
    template = chat_template(app, manifest)
    licence = config.license if config.license is not None else info.license
    return ShowResponse(
        modelfile=model_modelfile(store, manifest, config, template),
        parameters="\n".join(iter_config_lines(config)),
        template=template or "",
        details=model_details(app, manifest, parent=manifest.base or ""),
        model_info=model_info,
        capabilities=capabilities(app, manifest),
        modified_at=timestamp(manifest.created_at),
        source=manifest.source.model_dump(),
        projector_info=_projector_kv(app, manifest, verbose),
        system=config.system,
        messages=config.messages or None,
        license=licence or None,
    )


def _projector_kv(app: Any, manifest: Manifest, verbose: bool) -> dict[str, Any] | None:
    """The multimodal projector's metadata (Ollama's ``projector_info``), if any."""
    projector = projector_info(app, manifest)
    if projector is None:
        return None
    found = projector.projector_info()
    return found if verbose else {k: v for k, v in found.items() if v is not None}
