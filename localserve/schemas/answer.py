"""What every API's responses are made from: the engine's events, gathered into a whole
answer for a response that does not stream, and the per-request :class:`Shape` that
turns them into that API's objects; the token log-probabilities the engine computes,
which Ollama and OpenAI's chat send as they are.

A route streams ``head()``, then ``chunks(event)`` for each event, then ``tail()``;
without streaming it sends ``whole(answers)``. A new API is a new shape.

Chunks are the streams' hot path (a few per token per stream). Shapes build them with
their validating constructors: pydantic-core checks a small model faster than
``model_construct`` sets one up in Python (0.7 against 1.9 us for a chat delta); the
models add about 3-4 us a chunk to the 5-6 the dicts cost (timestamp and json.dumps
included).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from pydantic import TypeAdapter

from localserve.runtime.protocol import (
    DoneEvent,
    Event,
    LogprobsEvent,
    TextEvent,
    ThinkingEvent,
    ToolCallEvent,
)
from localserve.schemas.base import Response


class TopLogprob(Response):
    """One of the likeliest tokens at a step (engine/logprobs.py)."""

    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(Response):
    """A token's log-probability (None for a prompt's first token, which nothing
    predicts) and the likeliest alternatives, as the engine sends them."""

    token: str
    logprob: float | None
    bytes: list[int]
    top_logprobs: list[TopLogprob]


_ENTRIES = TypeAdapter(list[TokenLogprob])


def token_logprobs(entries: list[dict[str, Any]]) -> list[TokenLogprob]:
    """The engine's log-probability entries (LogprobsEvent.entries) as typed objects."""
    return _ENTRIES.validate_python(entries)


@dataclass
class Answer:
    """A whole answer gathered from engine events (for responses that do not stream)."""

    text: list[str] = field(default_factory=list)
    thinking: list[str] = field(default_factory=list)
    calls: list[ToolCallEvent] = field(default_factory=list)
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    done: DoneEvent | None = None

    def add(self, event: Event) -> None:
        if isinstance(event, LogprobsEvent):
            self.logprobs.extend(event.entries)
        elif isinstance(event, TextEvent):
            self.text.append(event.text)
        elif isinstance(event, ThinkingEvent):
            self.thinking.append(event.text)
        elif isinstance(event, ToolCallEvent):
            self.calls.append(event)
        elif isinstance(event, DoneEvent):
            self.done = event

    @property
    def content(self) -> str:
        return "".join(self.text)

    @property
    def reasoning(self) -> str:
        return "".join(self.thinking)


Chunk_co = TypeVar("Chunk_co", bound=Response, covariant=True)
Whole_co = TypeVar("Whole_co", bound=Response, covariant=True)


class Shape(Protocol[Chunk_co, Whole_co]):
    """One request's answers in one API's objects (made per request: it may keep
    state, such as log-probabilities waiting for the next chunk)."""

    @property
    def n(self) -> int:
        """How many answers the request asked for (OpenAI's ``n``)."""
        ...

    def head(self) -> Sequence[Chunk_co]:
        """What a stream sends before any event."""
        ...

    def chunks(self, event: Event) -> Sequence[Chunk_co]:
        """What a stream sends for one event (often one chunk, maybe none)."""
        ...

    def tail(self) -> Sequence[Chunk_co]:
        """What a stream sends after the last event."""
        ...

    def whole(self, answers: list[Answer]) -> Whole_co:
        """The answer as one object, when the request does not stream."""
        ...
