"""What the daemon answers, as typed objects: stream chunks, pull progress, ps, tags, show.

Plain frozen dataclasses (no pydantic) so that importing the client stays cheap for
scripts. Each has ``from_wire`` that tolerates missing fields and ignores unknown ones:
a newer daemon may send more than this client knows, and that must not break it.
Durations are nanoseconds, as on the wire.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

Role = Literal["system", "user", "assistant", "tool"]


def parse_timestamp(value: Any) -> datetime | None:
    """RFC 3339 with up to nanoseconds (``2024-05-01T12:00:00.123456789Z``)."""
    if not isinstance(value, str) or not value:
        return None
    text = value.strip().replace("Z", "+00:00")
    # Python reads at most microseconds: drop the extra fraction digits.
    head, dot, rest = text.partition(".")
    if dot:
        digits = len(rest) - len(rest.lstrip("0123456789"))
        rest = rest[: min(digits, 6)] + rest[digits:]
        text = f"{head}.{rest}"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class Message:
    role: str
    content: str
    thinking: str = ""  # a thinking model's reasoning (never sent back in a history)
    images: tuple[str, ...] = ()  # base64 images (or sounds) attached to the message

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.images:
            wire["images"] = list(self.images)
        return wire

    @classmethod
    def from_wire(cls, data: Any) -> Message:
        data = data if isinstance(data, dict) else {}
        return cls(
            str(data.get("role", "assistant")),
            str(data.get("content") or ""),
            str(data.get("thinking") or ""),
        )


@dataclass(frozen=True, kw_only=True)
class Timings:
    """The fields of a final chunk (``done: true``); None on every other chunk."""

    done: bool = False
    done_reason: str | None = None
    total_duration: int | None = None
    load_duration: int | None = None
    prompt_eval_count: int | None = None
    prompt_eval_duration: int | None = None
    eval_count: int | None = None
    eval_duration: int | None = None
    # Speculative decoding's drafted and kept tokens (localserve; absent: no drafts).
    draft_count: int | None = None
    draft_accepted_count: int | None = None

    @staticmethod
    def fields_from(data: dict[str, Any]) -> dict[str, Any]:
        return {
            "done": bool(data.get("done", False)),
            "done_reason": data.get("done_reason"),
            "total_duration": _int(data.get("total_duration")),
            "load_duration": _int(data.get("load_duration")),
            "prompt_eval_count": _int(data.get("prompt_eval_count")),
            "prompt_eval_duration": _int(data.get("prompt_eval_duration")),
            "eval_count": _int(data.get("eval_count")),
            "eval_duration": _int(data.get("eval_duration")),
            "draft_count": _int(data.get("draft_count")),
            "draft_accepted_count": _int(data.get("draft_accepted_count")),
        }


@dataclass(frozen=True, kw_only=True)
class GenerateResponse(Timings):
    """One chunk of /api/generate (or the whole answer when not streaming)."""

    model: str = ""
    created_at: str = ""
    response: str = ""
    context: list[int] | None = None

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> GenerateResponse:
        context = data.get("context")
        return cls(
            model=str(data.get("model", "")),
            created_at=str(data.get("created_at", "")),
            response=str(data.get("response") or ""),
            context=list(context) if isinstance(context, list) else None,
            **Timings.fields_from(data),
        )


@dataclass(frozen=True, kw_only=True)
class ChatResponse(Timings):
    """One chunk of /api/chat (or the whole answer when not streaming)."""

    model: str = ""
    created_at: str = ""
    message: Message = field(default_factory=lambda: Message("assistant", ""))

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> ChatResponse:
        return cls(
            model=str(data.get("model", "")),
            created_at=str(data.get("created_at", "")),
            message=Message.from_wire(data.get("message")),
            **Timings.fields_from(data),
        )


@dataclass(frozen=True)
class ProgressResponse:
    """One line of /api/pull: a step (``status``), or a file's progress (with totals)."""

    status: str
    digest: str | None = None
    total: int | None = None
    completed: int | None = None

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> ProgressResponse:
        digest = data.get("digest")
        return cls(
            status=str(data.get("status", "")),
            digest=str(digest) if digest else None,
            total=_int(data.get("total")),
            completed=_int(data.get("completed")),
        )


@dataclass(frozen=True)
class ModelDetails:
    format: str = ""
    family: str = ""
    families: tuple[str, ...] = ()
    parameter_size: str = ""
    quantization_level: str = ""
    parent_model: str = ""

    @classmethod
    def from_wire(cls, data: Any) -> ModelDetails:
        data = data if isinstance(data, dict) else {}
        families = data.get("families") or ()
        return cls(
            format=str(data.get("format") or ""),
            family=str(data.get("family") or ""),
            families=tuple(str(f) for f in families) if isinstance(families, list) else (),
            parameter_size=str(data.get("parameter_size") or ""),
            quantization_level=str(data.get("quantization_level") or ""),
            parent_model=str(data.get("parent_model") or ""),
        )


@dataclass(frozen=True)
class ListedModel:
    """An entry of /api/tags: a model in the daemon's store."""

    name: str
    digest: str
    size: int
    modified_at: datetime | None
    details: ModelDetails

    @property
    def short_id(self) -> str:
        return self.digest.removeprefix("sha256:")[:12]

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> ListedModel:
        return cls(
            name=str(data.get("name") or data.get("model") or ""),
            digest=str(data.get("digest") or ""),
            size=_int(data.get("size")) or 0,
            modified_at=parse_timestamp(data.get("modified_at")),
            details=ModelDetails.from_wire(data.get("details")),
        )


# expires_at this far ahead means "kept loaded forever" (negative keep_alive).
_FOREVER_YEAR = 9000


@dataclass(frozen=True)
class RunningModel:
    """An entry of /api/ps: a model resident in the daemon."""

    name: str
    digest: str
    size: int
    size_vram: int
    context_length: int | None
    expires_at: datetime | None
    details: ModelDetails
    # Layers per device when RPC workers hold some (localserve's extension to /api/ps):
    # dicts with name, description (a worker's address), layers, size.
    devices: tuple[dict[str, Any], ...] = ()
    # Why the context is what it is (localserve's extension): "set", or the planner's
    # choice, "trained", "cap" or "memory".
    context_reason: str = ""

    @property
    def short_id(self) -> str:
        return self.digest.removeprefix("sha256:")[:12]

    @property
    def forever(self) -> bool:
        return self.expires_at is not None and self.expires_at.year >= _FOREVER_YEAR

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> RunningModel:
        return cls(
            name=str(data.get("name") or data.get("model") or ""),
            digest=str(data.get("digest") or ""),
            size=_int(data.get("size")) or 0,
            size_vram=_int(data.get("size_vram")) or 0,
            context_length=_int(data.get("context_length")),
            expires_at=parse_timestamp(data.get("expires_at")),
            details=ModelDetails.from_wire(data.get("details")),
            devices=tuple(d for d in data.get("devices") or () if isinstance(d, dict)),
            context_reason=str(data.get("context_reason") or ""),
        )

    @property
    def split(self) -> str:
        """Layers per device, ``RPC0 (10.0.0.2:50052) 9, CPU 1``; empty without workers."""
        parts = []
        for d in self.devices:
            where = f" ({d['description']})" if d.get("description") else ""
            parts.append(f"{d.get('name', '?')}{where} {d.get('layers', 0)}")
        return ", ".join(parts)


@dataclass(frozen=True)
class ShowResponse:
    """/api/show: what the daemon knows about one stored model."""

    modelfile: str = ""
    parameters: str = ""
    template: str = ""
    system: str = ""
    license: str = ""
    details: ModelDetails = field(default_factory=ModelDetails)
    model_info: dict[str, Any] = field(default_factory=dict)
    capabilities: tuple[str, ...] = ()
    modified_at: datetime | None = None
    projector_info: dict[str, Any] = field(default_factory=dict)  # the mmproj's metadata

    def info(self, key: str) -> Any:
        """A GGUF fact by its architecture-free name: ``info("context_length")``."""
        arch = self.model_info.get("general.architecture") or self.details.family
        return self.model_info.get(f"{arch}.{key}")

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> ShowResponse:
        info = data.get("model_info")
        capabilities = data.get("capabilities")
        projector = data.get("projector_info")
        return cls(
            modelfile=str(data.get("modelfile") or ""),
            parameters=str(data.get("parameters") or ""),
            template=str(data.get("template") or ""),
            system=str(data.get("system") or ""),
            license=str(data.get("license") or ""),
            details=ModelDetails.from_wire(data.get("details")),
            model_info=dict(info) if isinstance(info, dict) else {},
            capabilities=tuple(str(c) for c in capabilities)
            if isinstance(capabilities, list)
            else (),
            modified_at=parse_timestamp(data.get("modified_at")),
            projector_info=dict(projector) if isinstance(projector, dict) else {},
        )
