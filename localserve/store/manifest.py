"""The small JSON file that gives a name to one or more blobs.

A manifest lists the model's GGUF files in load order (one file, or the parts of a
split model), its multimodal projector (an ``mmproj`` GGUF that llama.cpp's mtmd
loads next to the model, if it has one), where they came from and what quantization
they hold. It is what `list` shows and what the runner opens. Manifests are read back with validation:
a hand-edited or damaged one is reported, never trusted as a path.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from localserve.store.refs import parse_digest

SCHEMA_VERSION = 1


class BlobEntry(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    digest: str = Field(description="sha256 hex of the file's bytes")
    size: int = Field(ge=0)
    filename: str = Field(max_length=1000, description="the file's name where it came from")

    @field_validator("digest")
    @classmethod
    def _valid_digest(cls, value: str) -> str:
        return parse_digest(value)


LayerKind = Literal["params", "system", "template", "messages", "license"]


class Layer(BlobEntry):
    """A created model's setting, stored as a blob of its own (create.py): JSON for
    ``params`` and ``messages``, text for the others."""

    kind: LayerKind


class AdapterEntry(BlobEntry):
    """A LoRA adapter GGUF applied to the model's weights, with its scale."""

    scale: float = 1.0


class HubSource(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    type: Literal["huggingface"] = "huggingface"
    repo: str
    revision: str = Field(description="the commit the files were downloaded from")


class ImportSource(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    type: Literal["import"] = "import"
    filename: str


class CopySource(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    type: Literal["copy"] = "copy"
    source_name: str


class Manifest(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    schema_version: int = SCHEMA_VERSION
    name: str
    files: tuple[BlobEntry, ...] = Field(min_length=1)
    source: HubSource | ImportSource | CopySource = Field(discriminator="type")
    quantization: str | None = None
    # Optional, so that manifests written before projectors existed still load.
    projector: BlobEntry | None = None
    # A model made by `create` (Modelfile): the model it was created from, its LoRA
    # adapters and its settings. It shares the base's blobs (no copy).
    base: str | None = None
    adapters: tuple[AdapterEntry, ...] = ()
    layers: tuple[Layer, ...] = ()
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @property
    def digest(self) -> str:
        """The model's identity: the digest of its first (or only) GGUF file."""
        return self.files[0].digest

    @property
    def short_id(self) -> str:
        return self.digest[:12]

    @property
    def size(self) -> int:
        """Bytes of the model's GGUF file(s), without the projector (what the weights
        take; see total_size)."""
        return sum(entry.size for entry in self.files)

    @property
    def blobs(self) -> tuple[BlobEntry, ...]:
        """Every blob this manifest references: the model's files, its projector, its
        adapters and its settings. Whatever keeps, checks or deletes blobs walks this,
        not ``files``."""
        projector = () if self.projector is None else (self.projector,)
        return (*self.files, *projector, *self.adapters, *self.layers)

    @property
    def identity(self) -> tuple[str, ...]:
        """What a loaded model must match to serve this manifest: every blob's digest
        (files, projector, adapters, settings); a re-created name differs here."""
        return tuple(entry.digest for entry in self.blobs)

    def layer(self, kind: LayerKind) -> Layer | None:
        return next((layer for layer in self.layers if layer.kind == kind), None)

    @property
    def total_size(self) -> int:
        """Bytes of every blob of the model, projector included (what `list` shows)."""
        return sum(entry.size for entry in self.blobs)
