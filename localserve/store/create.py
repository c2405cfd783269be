"""``create``: a named model made from a base and a Modelfile's settings.

The new manifest lists the base's GGUF blobs (and projector) again: no byte of the
base is copied, and ``rm`` keeps a blob while any manifest lists it. Each setting is a
small content-addressed blob of its own (a ``Layer``): the parameters and example
messages as JSON, the system prompt, template and licence as text; two models with
the same system prompt share its blob. LoRA adapters are checked against the base
(architecture, tensor names and shapes) before anything is written, then stored as
blobs like a model file. A model created from a created model inherits its settings
and adapters; what the Modelfile says wins (parameters key by key).

On any failure nothing is left behind: the blobs this create added and nothing else
uses are removed, and no manifest is written.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from localserve.errors import ImportSourceError, ModelNotFoundError
from localserve.store.manifest import (
    AdapterEntry,
    BlobEntry,
    ImportSource,
    Layer,
    LayerKind,
    Manifest,
)
from localserve.store.modelfile import ModelSpec, resolve_path
from localserve.store.progress import Progress
from localserve.store.refs import parse_ref
from localserve.store.store import ModelStore


@dataclass(frozen=True)
class ModelConfig:
    """A model's settings from its manifest's layers (empty for a pulled model)."""

    parameters: dict[str, Any] = field(default_factory=dict)
    system: str | None = None
    template: str | None = None
    messages: list[dict[str, str]] = field(default_factory=list)
    license: str | None = None


def read_config(store: ModelStore, manifest: Manifest) -> ModelConfig:
    def text(kind: LayerKind) -> str | None:
        layer = manifest.layer(kind)
        return None if layer is None else store.blob_path(layer.digest).read_text("utf-8")

    params, messages = text("params"), text("messages")
    return ModelConfig(
        parameters=json.loads(params) if params else {},
        system=text("system"),
        template=text("template"),
        messages=json.loads(messages) if messages else [],
        license=text("license"),
    )


def create_model(
    store: ModelStore,
    name: str,
    spec: ModelSpec,
    *,
    folder: Path,
    pull: Any = None,
) -> Generator[Progress]:
    """Create ``name`` from ``spec`` (paths in it are relative to ``folder``), yielding
    progress. ``pull(name)`` pulls a Hub base that is not stored yet (a generator of
    Progress, store/pull.py's pull_model with its options bound)."""
    from localserve.store.adapter import check_adapter, read_adapter
    from localserve.store.gguf import read_gguf_model

    ref = parse_ref(name)
    store.ensure_dirs()
    added: list[str] = []  # blobs this create put in the store
    try:
        base = yield from _base(store, spec.base, folder, pull, added)
        base_info = read_gguf_model(store.blob_paths(base))
        inherited = read_config(store, base) if base.base is not None else ModelConfig()

        adapters = list(base.adapters)
        for adapter in spec.adapters:
            path = resolve_path(adapter.path, folder)
            _readable(path, "adapter")
            check_adapter(read_adapter(path), base_info)
            digest = yield from _stage(store, path, added)
            adapters.append(
                AdapterEntry(
                    digest=digest,
                    size=path.stat().st_size,
                    filename=path.name,
                    scale=adapter.scale,
                )
            )

        yield Progress("writing settings")
        settings: dict[LayerKind, str | None] = {
            "params": _json({**inherited.parameters, **spec.parameters}),
            "system": spec.system if spec.system is not None else inherited.system,
            "template": spec.template if spec.template is not None else inherited.template,
            "messages": _json(spec.messages or inherited.messages),
            "license": spec.license if spec.license is not None else inherited.license,
        }
        layers = []
        for kind, value in settings.items():
            if value is not None:
                entry = _put_bytes(store, value.encode("utf-8"), kind, added)
                layers.append(Layer(kind=kind, **entry.model_dump()))

        yield Progress("writing manifest")
        manifest = base.model_copy(
            update={
                "name": str(ref),
                "base": base.name,
                "adapters": tuple(adapters),
                "layers": tuple(layers),
                "created_at": datetime.now(UTC),
            }
        )
        store.replace_manifest(ref, manifest)
    except BaseException:
        store.delete_unused(added)
        raise
    yield Progress("success")


def _base(
    store: ModelStore, value: str, folder: Path, pull: Any, added: list[str]
) -> Generator[Progress, None, Manifest]:
    """FROM: a GGUF on disk (imported into the new model), a stored name, or a Hub
    reference pulled first."""
    from localserve.store.gguf import read_gguf_model
    from localserve.store.importing import source_parts

    path = resolve_path(value, folder)
    if path.exists() or value.lower().endswith(".gguf"):
        parts = source_parts(path)
        info = read_gguf_model(parts)
        entries = []
        for part in parts:
            digest = yield from _stage(store, part, added)
            entries.append(BlobEntry(digest=digest, size=part.stat().st_size, filename=part.name))
        return Manifest(
            name=path.name,
            files=tuple(entries),
            source=ImportSource(filename=path.name),
            quantization=info.quantization,
        )
    ref = parse_ref(value)
    found = store.find(ref)
    if found is None and ref.is_hub and pull is not None:
        yield from pull(value)
        found = store.find(ref)
    if found is None:
        raise ModelNotFoundError(
            value, hint="FROM takes a stored model, a GGUF path or an hf.co/OWNER/REPO name"
        )
    _, manifest = store.get(found)
    return manifest


def _readable(path: Path, what: str) -> None:
    if not path.is_file() or not os.access(path, os.R_OK):
        raise ImportSourceError(f"cannot read the {what} {path}: no such readable file")


def _stage(store: ModelStore, path: Path, added: list[str]) -> Generator[Progress, None, str]:
    from localserve.store.importing import stage_blob

    had = set(store.used_digests())
    digest = yield from stage_blob(store, path)
    if digest not in had:
        added.append(digest)
    return digest


def _put_bytes(store: ModelStore, data: bytes, kind: str, added: list[str]) -> BlobEntry:
    """A small blob from bytes (a setting), committed like any other."""
    digest = hashlib.sha256(data).hexdigest()
    if not store.has_blob(digest, len(data)):
        staged = store.partial_dir / f"create-{uuid.uuid4().hex}.partial"
        try:
            staged.write_bytes(data)
            store.commit_blob(staged, digest)
        finally:
            staged.unlink(missing_ok=True)
        added.append(digest)
    return BlobEntry(digest=digest, size=len(data), filename=kind)


def _json(value: Any) -> str | None:
    return json.dumps(value, ensure_ascii=False, sort_keys=True) if value else None


def model_modelfile(
    store: ModelStore, manifest: Manifest, config: ModelConfig, template: str | None
) -> str:
    """A Modelfile that recreates the model: its base, settings and adapter blobs
    (``show --modelfile`` and /api/show's ``modelfile``)."""
    from localserve.store.modelfile import render_modelfile

    return render_modelfile(
        manifest.base or manifest.name,
        parameters=config.parameters,
        system=config.system,
        template=template,
        messages=config.messages,
        adapters=[(str(store.blob_path(a.digest)), a.scale) for a in manifest.adapters],
        license=config.license,
    )


def iter_config_lines(config: ModelConfig) -> Iterator[str]:
    """``show --parameters``: one ``key value`` line per parameter (stop repeated)."""
    for key, value in config.parameters.items():
        for item in value if isinstance(value, list) else [value]:
            yield f"{key:<16}{json.dumps(item) if isinstance(item, str) else item}"
