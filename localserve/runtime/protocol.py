"""The daemon <-> runner wire: length-prefixed JSON frames over the runner's stdin/stdout.

Each frame is a 4-byte big-endian length and a UTF-8 JSON object. The daemon sends
one request per frame (``{"op": "generate" | "embed" | "cancel" | "stats" |
"shutdown", "id": ...}``); the runner answers with ``{"events": [...]}`` frames,
one per engine step carrying the events of every request in that step (text
deltas, done, error), so a busy runner makes one write per step, not one per token.
Its first frame after a ``load`` is ``{"ready": {...}}`` or ``{"fatal": "..."}``.

The contract between the routes, the scheduler and the runner is typed: a route
builds a :class:`GenerateJob` from its wire schema, and every layer above the pipe
sees the typed events below (:data:`Event`). JSON exists only at the pipe:
``GenerateJob.to_wire``/``from_wire`` and :func:`event_to_wire`/:func:`event_from_wire`.
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from localserve.runtime.options import SamplingOptions

HEADER = struct.Struct(">I")
MAX_FRAME = 256 << 20  # a batch of embeddings for many long inputs is the largest thing sent


class ProtocolError(Exception):
    """A frame that is not what the protocol says (a bug, or a corrupted pipe)."""


def encode(message: dict[str, Any]) -> bytes:
    data = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()
    if len(data) > MAX_FRAME:
        raise ProtocolError(f"frame of {len(data)} bytes is over the limit")
    return HEADER.pack(len(data)) + data


def decode_body(body: bytes) -> dict[str, Any]:
    try:
        message = json.loads(body)
    except ValueError as exc:
        raise ProtocolError(f"undecodable frame: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError("a frame must hold a JSON object")
    return message


class FrameReader:
    """Incremental decoder: feed it bytes as they arrive, get whole messages back."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self._buffer += data
        messages = []
        while len(self._buffer) >= HEADER.size:
            (size,) = HEADER.unpack_from(self._buffer)
            if size > MAX_FRAME:
                raise ProtocolError(f"frame of {size} bytes is over the limit")
            if len(self._buffer) < HEADER.size + size:
                break
            body = bytes(self._buffer[HEADER.size : HEADER.size + size])
            del self._buffer[: HEADER.size + size]
            messages.append(decode_body(body))
        return messages


# ------------------------------------------------------------------ the load


@dataclass(frozen=True)
class ModelFiles:
    """What a runner loads besides the GGUF parts: the multimodal projector, LoRA
    adapters with their scales, and a Modelfile's chat template."""

    projector: Path | None = None
    adapters: tuple[tuple[Path, float], ...] = ()
    template: str | None = None
    # A draft model for speculative decoding (LOCALSERVE_SPECULATIVE names it): its
    # GGUF parts and its name, for messages.
    draft: tuple[Path, ...] = ()
    draft_name: str = ""


NO_EXTRAS = ModelFiles()

# ------------------------------------------------------------------ the job

Think = bool | str | None  # True, False, "low", "medium", "high" (schemas/tools.py)
# "auto" | "none" | "required", or the name of the one function to call.
ToolChoice = str


@dataclass(frozen=True)
class NamedTool:
    """A function the model may call: its name and its parameters' JSON schema."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GenerateJob:
    """One generation request, as every wire API says it (routes build it).

    Exactly one of ``prompt`` (a completion) and ``messages`` (a chat) is set.
    ``tools`` are the request's tool definitions as the client sent them (the
    template renders them); ``think`` None means the model's default.
    """

    prompt: str | None = None
    suffix: str | None = None  # fill-in-the-middle: the text after the insertion point
    messages: list[dict[str, Any]] | None = None
    system: str | None = None
    raw: bool = False
    tools: list[dict[str, Any]] | None = None
    tool_choice: ToolChoice = "auto"
    parallel_tool_calls: bool = True
    format: str | dict[str, Any] | None = None
    think: Think = None
    template_kwargs: dict[str, Any] = field(default_factory=dict)
    options: SamplingOptions = field(default_factory=SamplingOptions)
    context: list[int] | None = None  # Ollama's token ids of an earlier answer
    want_context: bool = False  # return prompt + output ids in the done event
    logprobs: bool = False  # a LogprobsEvent for every generated token
    top_logprobs: int = 0  # with that many likeliest alternatives (0-20)
    n: int = 1  # answers to generate from the one prompt (OpenAI's ``n``)
    prompt_logprobs: bool = False  # also the prompt tokens' (completions' ``echo``)
    # Base64 images or sounds for a completion (a chat's are its messages' ``images``),
    # checked by the route (schemas/media.py); the runner decodes them.
    images: list[str] = field(default_factory=list)

    def media_count(self) -> int:
        return len(self.images) + sum(len(m.get("images") or ()) for m in self.messages or ())

    def to_wire(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["options"] = self.options.to_dict()
        return data

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> GenerateJob:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["options"] = SamplingOptions.from_dict(data.get("options") or {})
        return cls(**values)


# ---------------------------------------------------------------- the events


@dataclass(frozen=True)
class TextEvent:
    """Answer text, as soon as it is safe to show."""

    id: str
    text: str
    choice: int = 0  # which of the request's ``n`` answers
    type: Literal["text"] = "text"


@dataclass(frozen=True)
class ThinkingEvent:
    """Reasoning text (inside ``<think>`` or the model family's equivalent)."""

    id: str
    text: str
    choice: int = 0  # which of the request's ``n`` answers
    type: Literal["thinking"] = "thinking"


@dataclass(frozen=True)
class ToolCallEvent:
    """One complete tool call; ``index`` counts the calls of this answer from 0."""

    id: str
    index: int
    name: str
    arguments: dict[str, Any]
    call_id: str = ""  # the model's own id for the call, where its format has one
    choice: int = 0  # which of the request's ``n`` answers
    type: Literal["tool_call"] = "tool_call"


@dataclass(frozen=True)
class LogprobsEvent:
    """Log-probabilities of generated tokens (engine/logprobs.py), sent before the
    text they belong to; routes attach them to the next chunk they write."""

    id: str
    entries: list[dict[str, Any]]
    prompt: bool = False  # entries of prompt tokens (the first one's logprob is None)
    choice: int = 0  # which of the request's ``n`` answers
    type: Literal["logprobs"] = "logprobs"


@dataclass(frozen=True)
class DoneEvent:
    """The end of a generation, with its counts and timings (nanoseconds)."""

    id: str
    done_reason: str  # "stop" | "length" | "cancel" | "tool_calls"
    prompt_eval_count: int = 0
    prompt_cached: int = 0
    prompt_eval_duration: int = 0
    eval_count: int = 0
    eval_duration: int = 0
    queue_duration: int = 0
    load_duration: int = 0  # set by the scheduler: how long this request waited for a load
    dropped_messages: int = 0  # old chat turns left out to fit the context
    context: list[int] | None = None
    choice: int = 0  # which of the request's ``n`` answers
    # Speculative decoding: tokens drafted, and of them those the sampler picked
    # (eval_count is still every generated token).
    draft_count: int = 0
    draft_accepted: int = 0
    type: Literal["done"] = "done"

    def with_load(self, load_duration: int) -> DoneEvent:
        return replace(self, load_duration=load_duration)


@dataclass(frozen=True)
class ErrorEvent:
    """A request that failed; ``kind`` names the exception type (runner.error_kind)."""

    id: str
    message: str
    kind: str = "engine"
    choice: int = 0  # which of the request's ``n`` answers
    type: Literal["error"] = "error"


Event = TextEvent | ThinkingEvent | ToolCallEvent | LogprobsEvent | DoneEvent | ErrorEvent
_EVENT_TYPES: dict[str, type[Any]] = {
    "logprobs": LogprobsEvent,
    "text": TextEvent,
    "thinking": ThinkingEvent,
    "tool_call": ToolCallEvent,
    "done": DoneEvent,
    "error": ErrorEvent,
}


def event_to_wire(event: Event) -> dict[str, Any]:
    data = asdict(event)
    if isinstance(event, DoneEvent) and event.context is None:
        del data["context"]
    return data


def event_from_wire(data: dict[str, Any]) -> Event | None:
    """The typed event of a frame's entry, or None for a one-answer reply (stats...)."""
    kind = _EVENT_TYPES.get(str(data.get("type")))
    if kind is None:
        return None
    known = {f.name for f in fields(kind)}
    event: Event = kind(**{k: v for k, v in data.items() if k in known})
    return event
