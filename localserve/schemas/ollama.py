"""Ollama's wire format: request bodies the daemon accepts, the objects it returns, and
:class:`AnswerShape`, which makes /api/generate and /api/chat answers of engine events.

Requests ignore unknown top-level fields (newer Ollama clients send fields older
servers do not know, and Ollama itself ignores them) but check the types of the
fields they know. The official ``ollama`` Python client is the judge of the shapes
(tests/e2e/test_compat_ollama.py); tests/unit/golden/wire.txt pins their bytes.
"""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import Field, model_validator

from localserve.runtime.options import SamplingOptions
from localserve.runtime.protocol import (
    DoneEvent,
    Event,
    GenerateJob,
    LogprobsEvent,
    TextEvent,
    ThinkingEvent,
    ToolCallEvent,
)
from localserve.schemas.answer import Answer, TokenLogprob, token_logprobs
from localserve.schemas.base import Request, Response, keep_alive_seconds
from localserve.schemas.media import check_media
from localserve.schemas.tools import EFFORT_BUDGETS, check_think, check_tools, history_message


def _level_budget(
    options: SamplingOptions, think: object, given: dict[str, Any] | None
) -> SamplingOptions:
    """A ``think`` level ("low", "medium", "high") as a thinking budget
    (schemas/tools.py EFFORT_BUDGETS), unless the request's own ``options`` set
    ``think_budget``. (gpt-oss reads the level from its template as well.)"""
    if isinstance(think, str) and think in EFFORT_BUDGETS and "think_budget" not in (given or {}):
        return replace(options, think_budget=EFFORT_BUDGETS[think])
    return options


def _model_from_name(data: Any) -> Any:
    # Older clients send "name" instead of "model".
    if isinstance(data, dict) and "model" not in data and "name" in data:
        return {**data, "model": data["name"]}
    return data


class KeepAlive(Request):
    keep_alive: str | float | int | None = None

    def keep_alive_seconds(self) -> float | None:
        return keep_alive_seconds(self.keep_alive)


class GenerateRequest(KeepAlive):
    model: str = Field(min_length=1)
    prompt: str = ""
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    raw: bool = False
    format: Literal["json", ""] | dict[str, Any] | None = None
    options: dict[str, Any] | None = None
    stream: bool = True
    images: list[str] | None = None
    think: bool | str | None = None
    # Token ids a previous /api/generate returned: the prompt continues them (deprecated
    # in Ollama in favour of /api/chat, still sent by older clients).
    context: list[int] | None = None
    logprobs: bool = False
    top_logprobs: int = Field(default=0, ge=0, le=20)

    def to_job(self, options: SamplingOptions) -> GenerateJob:
        return GenerateJob(
            prompt=self.prompt,
            suffix=self.suffix or None,  # fill-in-the-middle (an empty one: a completion)
            system=self.system,
            raw=self.raw,
            format=self.format or None,
            think=check_think(self.think),
            options=_level_budget(options, self.think, self.options),
            context=self.context,
            want_context=True,
            logprobs=self.logprobs or self.top_logprobs > 0,
            top_logprobs=self.top_logprobs,
            images=[m.data for m in check_media(self.images or (), "images")],
        )


class Message(Request):
    role: str
    content: str | list[Any] | None = ""
    images: list[str] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    name: str | None = None
    thinking: str | None = None
    tool_name: str | None = None  # on a tool result: the function it answers
    tool_call_id: str | None = None


class ChatRequest(KeepAlive):
    model: str = Field(min_length=1)
    messages: list[Message] = Field(default_factory=list)
    tools: list[dict[str, Any]] | None = None
    format: Literal["json", ""] | dict[str, Any] | None = None
    options: dict[str, Any] | None = None
    stream: bool = True
    think: bool | str | None = None
    logprobs: bool = False
    top_logprobs: int = Field(default=0, ge=0, le=20)

    def to_job(self, options: SamplingOptions) -> GenerateJob:
        check_tools(self.tools, "auto")
        return GenerateJob(
            messages=[
                _with_media(history_message(m.model_dump(exclude_none=True)), i)
                for i, m in enumerate(self.messages)
            ],
            tools=self.tools or None,
            format=self.format or None,
            think=check_think(self.think),
            options=_level_budget(options, self.think, self.options),
            logprobs=self.logprobs or self.top_logprobs > 0,
            top_logprobs=self.top_logprobs,
        )


def _with_media(message: dict[str, Any], index: int) -> dict[str, Any]:
    if message.get("images"):
        checked = check_media(message["images"], f"messages[{index}].images")
        message["images"] = [m.data for m in checked]
    return message


class EmbedRequest(KeepAlive):
    model: str = Field(min_length=1)
    input: str | list[str] = Field(default_factory=list)
    truncate: bool = True
    dimensions: int | None = Field(default=None, ge=1)
    options: dict[str, Any] | None = None


class EmbeddingsRequest(KeepAlive):
    """The legacy /api/embeddings body."""

    model: str = Field(min_length=1)
    prompt: str = ""
    options: dict[str, Any] | None = None


class NameRequest(Request):
    model: str = Field(min_length=1)

    _from_name = model_validator(mode="before")(_model_from_name)


class ShowRequest(NameRequest):
    verbose: bool = False


class PullRequest(NameRequest):
    insecure: bool = False
    stream: bool = True


class CreateRequest(Request):
    """Ollama's current /api/create: a new model from a stored one (``from``) or from
    uploaded blobs (``files``, ``adapters``: file name -> ``sha256:<hex>``), with
    settings as a Modelfile gives them."""

    model: str = Field(min_length=1)
    from_: str | None = Field(default=None, alias="from")
    files: dict[str, str] | None = None
    adapters: dict[str, str] | None = None
    template: str | None = None
    system: str | None = None
    parameters: dict[str, Any] | None = None
    messages: list[dict[str, Any]] | None = None
    license: str | list[str] | None = None
    quantize: str | None = None
    stream: bool = True

    _from_name = model_validator(mode="before")(_model_from_name)


class CopyRequest(Request):
    source: str = Field(min_length=1)
    destination: str = Field(min_length=1)


def timestamp(when: datetime | None = None) -> str:
    """RFC 3339 with nanoseconds and a Z, as Ollama writes ``created_at``."""
    moment = (when or datetime.now(UTC)).astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond:06d}000Z"


# -------------------------------------------------------------------- responses


class VersionResponse(Response):
    version: str


class ProgressResponse(Response):
    """A line of /api/pull and /api/create: a status, and for a file its digest and
    bytes so far."""

    status: str
    digest: str | None = None
    total: int | None = None
    completed: int | None = None

    @classmethod
    def of(
        cls,
        status: str,
        digest: str | None = None,
        total: int | None = None,
        completed: int | None = None,
    ) -> ProgressResponse:
        """From a store progress event (``digest``: the blob's 64 hex)."""
        named = None if digest is None else f"sha256:{digest}"
        return cls(status=status, digest=named, total=total, completed=completed)


class ModelDetails(Response):
    parent_model: str
    format: str
    family: str
    families: list[str]
    parameter_size: str
    quantization_level: str


class ListedModel(Response):
    """An /api/tags entry."""

    name: str
    model: str
    modified_at: str
    size: int
    digest: str
    details: ModelDetails


class ListResponse(Response):
    """/api/tags."""

    models: list[ListedModel]


class DeviceShare(Response):
    """localserve's /api/ps extension: a device that holds layers when RPC workers do
    (a worker's address as its description)."""

    name: str
    description: str
    layers: int
    size: int


class RunningModel(Response):
    """An /api/ps entry: ``size`` is the memory the runner's plan uses (weights, KV,
    compute), ``size_vram`` the GPU's share."""

    name: str
    model: str
    size: int
    digest: str
    details: ModelDetails
    expires_at: str
    size_vram: int
    context_length: int
    devices: list[DeviceShare] | None = None
    # localserve's: why context_length is what it is ("set" by the request, the model or
    # the settings; else the planner's choice: "trained", "cap" or "memory").
    context_reason: str | None = None


class ProcessResponse(Response):
    """/api/ps."""

    models: list[RunningModel]


class ShowResponse(Response):
    modelfile: str
    parameters: str
    template: str
    details: ModelDetails
    model_info: dict[str, Any]
    capabilities: list[str]
    modified_at: str
    source: dict[str, Any]
    # Ollama's key: the multimodal projector's metadata, like model_info is the model's.
    projector_info: dict[str, Any] | None = None
    system: str | None = None
    messages: list[dict[str, str]] | None = None
    license: str | None = None


class EmbedResponse(Response):
    model: str
    embeddings: list[list[float]]
    total_duration: int
    load_duration: int
    prompt_eval_count: int


class EmbeddingsResponse(Response):
    """The legacy /api/embeddings answer."""

    embedding: list[float]


class ToolCallFunction(Response):
    index: int
    name: str
    arguments: dict[str, Any]


class ToolCall(Response):
    function: ToolCallFunction

    @classmethod
    def of(cls, call: ToolCallEvent) -> ToolCall:
        return cls(
            function=ToolCallFunction(index=call.index, name=call.name, arguments=call.arguments)
        )


class AssistantMessage(Response):
    """The ``message`` of an /api/chat chunk or answer."""

    role: Literal["assistant"] = "assistant"
    content: str
    thinking: str | None = None
    tool_calls: list[ToolCall] | None = None


# A chunk or a whole answer of /api/generate and /api/chat: ``done`` false with the
# text so far, or true with the timings (nanoseconds). The timing fields are repeated in
# both classes to keep Ollama's key order (a base class's fields would come first).


class GenerateResponse(Response):
    model: str
    created_at: str
    response: str
    thinking: str | None = None
    done: bool
    done_reason: str | None = None
    total_duration: int | None = None
    load_duration: int | None = None
    prompt_eval_count: int | None = None
    prompt_eval_duration: int | None = None
    eval_count: int | None = None
    eval_duration: int | None = None
    # localserve: speculative decoding's drafted and accepted tokens (llama-server's
    # timings.draft_n / draft_n_accepted), when it drafted at all.
    draft_count: int | None = None
    draft_accepted_count: int | None = None
    context: list[int] | None = None  # prompt and answer token ids, to continue from
    logprobs: list[TokenLogprob] | None = None


class ChatResponse(Response):
    model: str
    created_at: str
    message: AssistantMessage
    done: bool
    done_reason: str | None = None
    total_duration: int | None = None
    load_duration: int | None = None
    prompt_eval_count: int | None = None
    prompt_eval_duration: int | None = None
    eval_count: int | None = None
    eval_duration: int | None = None
    draft_count: int | None = None
    draft_accepted_count: int | None = None
    logprobs: list[TokenLogprob] | None = None


AnswerResponse = GenerateResponse | ChatResponse


class AnswerShape:
    """Engine events as the chunks of one /api/generate or /api/chat answer: text and
    thinking as they come, each tool call once complete, then the final chunk with the
    timings; log-probabilities ride on the next chunk written (an empty list when there
    are none yet, on every chunk of a request that asked). ``whole`` is the same answer
    as one object.
    """

    n = 1  # Ollama has no ``n``: one answer per request

    def __init__(
        self, model: str, *, chat: bool = False, logprobs: bool = False, started: int
    ) -> None:
        self.model = model
        self.chat = chat  # /api/chat (a message) or /api/generate (a response)
        self.logprobs = logprobs  # every chunk carries a logprobs list
        self.started = started  # perf_counter_ns() at the request's arrival: total_duration
        self._pending: list[dict[str, Any]] = []  # log-probabilities of tokens not yet sent

    def head(self) -> list[AnswerResponse]:
        return []

    def chunks(self, event: Event) -> list[AnswerResponse]:
        if isinstance(event, LogprobsEvent):
            self._pending.extend(event.entries)
            return []
        if isinstance(event, TextEvent):
            return [self._answer(event.text)]
        if isinstance(event, ThinkingEvent):
            return [self._answer("", thinking=event.text)]
        if isinstance(event, ToolCallEvent):
            return [self._answer("", calls=[event])]
        if isinstance(event, DoneEvent):
            return [self._answer("", done=event)]
        return []

    def tail(self) -> list[AnswerResponse]:
        return []

    def whole(self, answers: list[Answer]) -> AnswerResponse:
        (answer,) = answers
        self._pending = answer.logprobs
        done = answer.done or DoneEvent("", "stop")
        return self._answer(answer.content, answer.reasoning, answer.calls, done)

    def loaded(self, reason: Literal["load", "unload"], load_ns: int) -> AnswerResponse:
        """The answer to an empty prompt or message list: the model was (un)loaded."""
        total = time.perf_counter_ns() - self.started
        final = {"done_reason": reason, "total_duration": total, "load_duration": load_ns}
        return self._build("", None, [], final, None)

    def _answer(
        self,
        text: str,
        thinking: str | None = None,
        calls: list[ToolCallEvent] | None = None,
        done: DoneEvent | None = None,
    ) -> AnswerResponse:
        logprobs = None
        if self.logprobs:
            logprobs, self._pending = self._pending, []
        final: dict[str, Any] = {}
        if done is not None:
            final = _final(done, time.perf_counter_ns() - self.started)
            if not self.chat:
                final["context"] = done.context  # the token ids of a generate's answer
        return self._build(text, thinking, calls or [], final, logprobs)

    def _build(
        self,
        text: str,
        thinking: str | None,
        calls: list[ToolCallEvent],
        final: dict[str, Any],
        logprobs: list[dict[str, Any]] | None,
    ) -> AnswerResponse:
        """A chunk (``final`` empty), or the last one with the done reason and timings."""
        entries = None if logprobs is None else token_logprobs(logprobs)
        if self.chat:
            message = AssistantMessage(
                content=text,
                thinking=thinking or None,
                tool_calls=[ToolCall.of(c) for c in calls] or None,
            )
            return ChatResponse(
                model=self.model,
                created_at=timestamp(),
                message=message,
                done=bool(final),
                logprobs=entries,
                **final,
            )
        return GenerateResponse(
            model=self.model,
            created_at=timestamp(),
            response=text,
            thinking=thinking or None,
            done=bool(final),
            logprobs=entries,
            **final,
        )


def _final(done: DoneEvent, total_ns: int) -> dict[str, Any]:
    """The fields of a final chunk, from the engine's done event."""
    fields: dict[str, Any] = {
        "done_reason": done.done_reason,
        "total_duration": total_ns,
        "load_duration": done.load_duration,
        "prompt_eval_count": done.prompt_eval_count,
        "prompt_eval_duration": done.prompt_eval_duration,
        "eval_count": done.eval_count,
        "eval_duration": done.eval_duration,
    }
    if done.draft_count:
        fields["draft_count"] = done.draft_count
        fields["draft_accepted_count"] = done.draft_accepted
    return fields
