"""OpenAI's wire format for /v1: the request fields we honour, the objects we return,
and the shapes that make chat completions and completions of engine events.

The official ``openai`` SDK is the judge (tests/e2e/test_compat_openai.py). Beyond
OpenAI's fields, ``options`` (Ollama's options object) and ``num_ctx`` are accepted
as extra body fields: a top complaint about Ollama is that /v1 cannot set the
context size.
"""

from __future__ import annotations

import base64
import json
import struct
import time
import uuid
from typing import Any, Literal

from pydantic import Field

from localserve.errors import InvalidOptionError
from localserve.runtime.options import SamplingOptions
from localserve.runtime.protocol import (
    DoneEvent,
    Event,
    GenerateJob,
    LogprobsEvent,
    ProgressEvent,
    TextEvent,
    ThinkingEvent,
    ToolCallEvent,
)
from localserve.schemas.answer import Answer, TokenLogprob, token_logprobs
from localserve.schemas.base import Request, Response
from localserve.schemas.media import check_media, from_url
from localserve.schemas.tools import check_tools, effort_budget, history_message


class StreamOptions(Request):
    include_usage: bool = False


class ResponseFormat(Request):
    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: dict[str, Any] | None = None


class SamplingFields(Request):
    model: str = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=0)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    stream: bool = False
    stream_options: StreamOptions | None = None
    # Answers decoded side by side from one prefill (their prompt cells are copied).
    n: int = Field(default=1, ge=1, le=16)
    user: str | None = None
    # localserve extensions
    options: dict[str, Any] | None = None
    num_ctx: int | None = Field(default=None, ge=16)
    keep_alive: str | float | int | None = None
    # llama-server's: while a streamed prompt is read, chunks with its ``prompt_progress``.
    return_progress: bool = False

    def overrides(self, max_tokens: int | None) -> dict[str, Any]:
        """These fields as Ollama options (they win over the same keys in ``options``)."""
        return {
            "num_predict": max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "stop": self.stop,
            "frequency_penalty": self.frequency_penalty,
            "presence_penalty": self.presence_penalty,
            "num_ctx": self.num_ctx,
        }

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(SamplingFields):
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=0)
    response_format: ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool = True
    # A thinking budget (schemas/tools.py EFFORT_BUDGETS); "none" turns thinking off.
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    # llama.cpp's server and vLLM take these: extra variables for the chat template.
    chat_template_kwargs: dict[str, Any] | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)

    def overrides(self, max_tokens: int | None) -> dict[str, Any]:
        return {
            **super().overrides(max_tokens),
            "think_budget": effort_budget(self.reasoning_effort),
        }

    def to_job(self, options: SamplingOptions) -> GenerateJob:
        choice = self.choice()
        check_tools(self.tools, choice)
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidOptionError("top_logprobs needs logprobs: true")
        return GenerateJob(
            messages=self.engine_messages(),
            tools=self.tools or None,
            tool_choice=choice,
            parallel_tool_calls=self.parallel_tool_calls,
            format=self.output_format(),
            think=self.think(),
            template_kwargs=dict(self.chat_template_kwargs or {}),
            options=options,
            logprobs=self.logprobs,
            top_logprobs=self.top_logprobs or 0,
            n=self.n,
            # A stream learns when the runner has taken the job (and how far the prompt
            # is read): its status, and its keepalives, hang on that.
            progress=self.stream,
        )

    def choice(self) -> str:
        """``tool_choice`` as "none", "auto", "required" or the function's name."""
        if self.tool_choice is None:
            return "auto" if self.tools else "none"
        if isinstance(self.tool_choice, str):
            return self.tool_choice
        function = self.tool_choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if self.tool_choice.get("type") != "function" or not isinstance(name, str) or not name:
            raise InvalidOptionError(
                'tool_choice must be "none", "auto", "required" or '
                '{"type": "function", "function": {"name": ...}}'
            )
        return name

    def think(self) -> bool | str | None:
        """Thinking from ``reasoning_effort`` or ``chat_template_kwargs.enable_thinking``."""
        switch = (self.chat_template_kwargs or {}).get("enable_thinking")
        if self.reasoning_effort == "none":
            return False
        if self.reasoning_effort is not None:
            # The level the template reads (gpt-oss' "Reasoning: low"), in Ollama's three.
            level = {"minimal": "low", "xhigh": "high"}.get(self.reasoning_effort)
            return (level or self.reasoning_effort) if switch is not False else False
        return switch if isinstance(switch, bool) else None

    def engine_messages(self) -> list[dict[str, Any]]:
        """The messages in the forms chat templates know (the engine checks the rest)."""
        return [
            _engine_message(m, i) if isinstance(m, dict) else m for i, m in enumerate(self.messages)
        ]

    def output_format(self) -> str | dict[str, Any] | None:
        fmt = self.response_format
        if fmt is None or fmt.type == "text":
            return None
        if fmt.type == "json_object":
            return "json"
        schema = (fmt.json_schema or {}).get("schema")
        if not isinstance(schema, dict):
            raise InvalidOptionError(
                "response_format.json_schema.schema must be a JSON schema object"
            )
        return schema


def _engine_message(message: dict[str, Any], index: int) -> dict[str, Any]:
    """``developer`` is OpenAI's newer name for the ``system`` role; tool-call arguments
    come as a JSON string where templates expect an object (Ollama parses them too);
    image and audio parts become the message's ``images`` (before its text, as Ollama
    does with them)."""
    result = history_message(message)
    if result.get("role") == "developer":
        result["role"] = "system"
    content = result.get("content")
    if isinstance(content, list):
        media: list[object] = []
        texts: list[Any] = []
        for number, part in enumerate(content):
            where = f"messages[{index}].content[{number}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "image_url":
                image = part.get("image_url")
                url = image.get("url") if isinstance(image, dict) else image
                media.append(from_url(url, f"{where}.image_url"))
            elif kind == "input_audio":
                sound = part.get("input_audio")
                if not isinstance(sound, dict):
                    raise InvalidOptionError(f"{where}.input_audio must be an object")
                media.append(sound.get("data"))
            else:
                texts.append(part)  # text parts, and anything the engine will refuse
        if media:
            checked = check_media(media, f"messages[{index}] media")
            result["images"] = [m.data for m in checked]
            result["content"] = texts
    return result


class CompletionRequest(SamplingFields):
    prompt: str | list[str] = ""
    suffix: str | None = None
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=20)  # the legacy form: top count

    def to_job(self, options: SamplingOptions) -> GenerateJob:
        if self.echo and self.logprobs is not None and self.stream:
            raise InvalidOptionError("echo with logprobs is not supported when streaming")
        return GenerateJob(
            prompt=self.text(),
            suffix=self.suffix or None,  # fill-in-the-middle
            raw=True,
            options=options,
            logprobs=self.logprobs is not None,
            top_logprobs=self.logprobs or 0,
            n=self.n,
            # echo with logprobs: the prompt's tokens come back with theirs too.
            prompt_logprobs=self.echo and self.logprobs is not None,
            progress=self.stream,
        )

    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else "".join(self.prompt)


class EmbeddingRequest(Request):
    model: str = Field(min_length=1)
    input: str | list[str] = Field(min_length=1)  # OpenAI refuses an empty list
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None
    options: dict[str, Any] | None = None
    keep_alive: str | float | int | None = None


def finish_reason(done: DoneEvent, called: bool = False) -> str:
    if done.done_reason == "length":
        return "length"
    return "tool_calls" if called else "stop"


# -------------------------------------------------------------------- responses

FINGERPRINT = "localserve"


class ModelCard(Response):
    id: str
    object: Literal["model"] = "model"
    created: int  # unix seconds
    owned_by: str = "localserve"


class ModelList(Response):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class PredictionTokens(Response):
    accepted_prediction_tokens: int
    rejected_prediction_tokens: int


class PromptTokens(Response):
    # Prompt tokens whose KV came from the prefix cache instead of being read again.
    cached_tokens: int


class Usage(Response):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokens
    # OpenAI's names for tokens of a predicted output that were / were not used: here,
    # speculative decoding's accepted and rejected drafts.
    completion_tokens_details: PredictionTokens | None = None

    @classmethod
    def of(cls, done: list[DoneEvent | None]) -> Usage:
        """One prompt (the ``n`` answers share it), every answer's tokens."""
        finished = [d for d in done if d is not None] or [DoneEvent("", "stop")]
        prompt = finished[0].prompt_eval_count
        completion = sum(d.eval_count for d in finished)
        drafted = sum(d.draft_count for d in finished)
        details = None
        if drafted:
            accepted = sum(d.draft_accepted for d in finished)
            details = PredictionTokens(
                accepted_prediction_tokens=accepted, rejected_prediction_tokens=drafted - accepted
            )
        return cls(
            prompt_tokens=prompt,
            completion_tokens=completion,
            total_tokens=prompt + completion,
            # The first answer read the prompt (from the cache where it could); the
            # others copied its cells.
            prompt_tokens_details=PromptTokens(cached_tokens=finished[0].prompt_cached),
            completion_tokens_details=details,
        )


class FunctionCall(Response):
    name: str
    arguments: str  # JSON text, as OpenAI sends it


class ChatToolCall(Response):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall

    @classmethod
    def of(cls, call: ToolCallEvent) -> ChatToolCall:
        return cls(
            id=call_id(call),
            function=FunctionCall(name=call.name, arguments=json.dumps(call.arguments)),
        )


def call_id(call: ToolCallEvent) -> str:
    """The model's own id for a call where its format has one, else a new one."""
    return call.call_id or f"call_{uuid.uuid4().hex[:24]}"


class ChoiceLogprobs(Response):
    content: list[TokenLogprob]


class ChatMessage(Response):
    role: Literal["assistant"] = "assistant"
    content: str | None  # null when the answer is only tool calls
    reasoning_content: str | None = None
    tool_calls: list[ChatToolCall] | None = None


class ChatChoice(Response):
    index: int
    message: ChatMessage
    logprobs: ChoiceLogprobs | None
    finish_reason: str


class ChatCompletionResponse(Response):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str = FINGERPRINT
    choices: list[ChatChoice]
    usage: Usage


class DeltaFunction(Response):
    name: str | None = None
    arguments: str


class DeltaToolCall(Response):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: DeltaFunction


class Delta(Response):
    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[DeltaToolCall] | None = None


class ChunkChoice(Response):
    index: int
    delta: Delta
    logprobs: ChoiceLogprobs | None
    finish_reason: str | None


class PromptProgress(Response):
    """How far a streamed prompt has been read (llama-server's ``prompt_progress``):
    tokens in all, found in the cache, read beyond it, milliseconds since reading began."""

    total: int
    cache: int
    processed: int
    time_ms: int

    @classmethod
    def of(cls, event: ProgressEvent) -> PromptProgress:
        return cls(
            total=event.total, cache=event.cache, processed=event.processed, time_ms=event.time_ms
        )


class ChatCompletionChunk(Response):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str = FINGERPRINT
    choices: list[ChunkChoice]  # empty in the usage and progress chunks
    usage: Usage | None = None
    prompt_progress: PromptProgress | None = None


ChatChunks = list[ChatCompletionChunk]


class ChatShape:
    """Chat completion objects and chunks for one request's ``n`` answers.

    Streamed: each answer's role first, then its text, reasoning and tool calls as
    they come (a call as OpenAI streams one: its id and name, then its arguments), a
    finish chunk per answer, and the usage chunk when asked for. Log-probabilities
    ride on the next text chunk of their answer.
    """

    def __init__(self, body: ChatCompletionRequest) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.model = body.model
        self.n = body.n
        self.logprobs = body.logprobs
        self.include_usage = body.include_usage
        self.progress = body.return_progress
        self._called = [False] * self.n
        self._finished: list[DoneEvent | None] = [None] * self.n
        # Log-probabilities of tokens not yet shown, per answer.
        self._pending: list[list[dict[str, Any]]] = [[] for _ in range(self.n)]

    def head(self) -> ChatChunks:
        # OpenAI sends each answer's role first.
        return [self._chunk(i, Delta(role="assistant", content="")) for i in range(self.n)]

    def chunks(self, event: Event) -> ChatChunks:
        index = event.choice
        if isinstance(event, ProgressEvent):
            if not self.progress or index:  # the answers share one prompt
                return []
            return [self._completion_chunk([], prompt_progress=PromptProgress.of(event))]
        if isinstance(event, LogprobsEvent):
            self._pending[index].extend(event.entries)
            return []
        if isinstance(event, TextEvent | ThinkingEvent):
            logprobs, self._pending[index] = self._pending[index], []
            delta = (
                Delta(content=event.text)
                if isinstance(event, TextEvent)
                else Delta(reasoning_content=event.text)
            )
            return [self._chunk(index, delta, logprobs=logprobs)]
        if isinstance(event, ToolCallEvent):
            self._called[index] = True
            function = DeltaFunction(name=event.name, arguments="")
            named = DeltaToolCall(
                index=event.index, id=call_id(event), type="function", function=function
            )
            arguments = DeltaFunction(arguments=json.dumps(event.arguments))
            return [
                self._chunk(index, Delta(tool_calls=[named])),
                self._chunk(
                    index, Delta(tool_calls=[DeltaToolCall(index=event.index, function=arguments)])
                ),
            ]
        if isinstance(event, DoneEvent):
            self._finished[index] = event
            return [self._chunk(index, Delta(), finish=finish_reason(event, self._called[index]))]
        return []

    def tail(self) -> ChatChunks:
        if not self.include_usage:
            return []
        return [self._completion_chunk([], usage=Usage.of(self._finished))]

    def whole(self, answers: list[Answer]) -> ChatCompletionResponse:
        return ChatCompletionResponse(
            id=self.id,
            created=self.created,
            model=self.model,
            choices=[self._choice(i, answer) for i, answer in enumerate(answers)],
            usage=Usage.of([a.done for a in answers]),
        )

    def _chunk(
        self,
        index: int,
        delta: Delta,
        finish: str | None = None,
        logprobs: list[dict[str, Any]] | None = None,
    ) -> ChatCompletionChunk:
        choice = ChunkChoice(
            index=index,
            delta=delta,
            logprobs=ChoiceLogprobs(content=token_logprobs(logprobs)) if logprobs else None,
            finish_reason=finish,
        )
        return self._completion_chunk([choice])

    def _completion_chunk(
        self,
        choices: list[ChunkChoice],
        usage: Usage | None = None,
        prompt_progress: PromptProgress | None = None,
    ) -> ChatCompletionChunk:
        return ChatCompletionChunk(
            id=self.id,
            created=self.created,
            model=self.model,
            choices=choices,
            usage=usage,
            prompt_progress=prompt_progress,
        )

    def _choice(self, index: int, answer: Answer) -> ChatChoice:
        done = answer.done or DoneEvent("", "stop")
        message = ChatMessage(
            content=answer.content if answer.content or not answer.calls else None,
            reasoning_content=answer.reasoning or None,
            tool_calls=[ChatToolCall.of(c) for c in answer.calls] or None,
        )
        return ChatChoice(
            index=index,
            message=message,
            logprobs=ChoiceLogprobs(content=token_logprobs(answer.logprobs))
            if self.logprobs
            else None,
            finish_reason=finish_reason(done, bool(answer.calls)),
        )


class LegacyLogprobs(Response):
    """The completions API's older shape: parallel lists, alternatives as a dict per
    token, and each token's offset in the returned text."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]

    @classmethod
    def of(cls, entries: list[dict[str, Any]], offset: int) -> LegacyLogprobs:
        offsets = []
        for entry in entries:
            offsets.append(offset)
            offset += len(entry["token"])
        return cls(
            tokens=[e["token"] for e in entries],
            token_logprobs=[e["logprob"] for e in entries],
            top_logprobs=[
                {alt["token"]: alt["logprob"] for alt in e["top_logprobs"]} for e in entries
            ],
            text_offset=offsets,
        )


class CompletionChoice(Response):
    index: int
    text: str
    logprobs: LegacyLogprobs | None
    finish_reason: str | None


class CompletionResponse(Response):
    """A completion, or a chunk of one (the same object, as OpenAI streams it)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    system_fingerprint: str = FINGERPRINT
    choices: list[CompletionChoice]  # empty in the usage and progress chunks
    usage: Usage | None = None
    prompt_progress: PromptProgress | None = None


class CompletionShape:
    """Completion objects and chunks for one request's ``n`` answers: text only (the
    completions API has no place for reasoning or tool calls); with ``echo`` the text
    starts with the prompt, and so do the log-probabilities of the whole answer."""

    def __init__(self, body: CompletionRequest) -> None:
        self.id = f"cmpl-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.model = body.model
        self.n = body.n
        self.top = body.logprobs  # None: no log-probabilities
        self.include_usage = body.include_usage
        self.progress = body.return_progress
        self.prefix = body.text() if body.echo else ""
        self._pending: list[list[dict[str, Any]]] = [[] for _ in range(self.n)]
        self._offsets = [len(self.prefix)] * self.n  # where each answer's next text starts
        self._finished: list[DoneEvent | None] = [None] * self.n

    def head(self) -> list[CompletionResponse]:
        return [self._completion([self._choice(i, "", None)]) for i in range(self.n)]

    def chunks(self, event: Event) -> list[CompletionResponse]:
        index = event.choice
        if isinstance(event, ProgressEvent):
            if not self.progress or index:  # the answers share one prompt
                return []
            return [self._completion([], prompt_progress=PromptProgress.of(event))]
        if isinstance(event, LogprobsEvent):
            self._pending[index].extend(event.entries)
            return []
        if isinstance(event, TextEvent):
            logprobs = self._logprobs(self._pending[index], self._offsets[index])
            self._offsets[index] += len(event.text)
            self._pending[index] = []
            return [self._completion([self._choice(index, event.text, None, logprobs)])]
        if isinstance(event, DoneEvent):
            self._finished[index] = event
            return [self._completion([self._choice(index, "", event)])]
        return []

    def tail(self) -> list[CompletionResponse]:
        if not self.include_usage:
            return []
        return [self._completion([], usage=Usage.of(self._finished))]

    def whole(self, answers: list[Answer]) -> CompletionResponse:
        choices = [
            # With echo the entries begin with the prompt's own tokens, at offset 0.
            self._choice(i, self.prefix + a.content, a.done, self._logprobs(a.logprobs, 0))
            for i, a in enumerate(answers)
        ]
        return self._completion(choices, usage=Usage.of([a.done for a in answers]))

    def _logprobs(self, entries: list[dict[str, Any]], offset: int) -> LegacyLogprobs | None:
        return LegacyLogprobs.of(entries, offset) if self.top is not None else None

    def _choice(
        self,
        index: int,
        text: str,
        done: DoneEvent | None,
        logprobs: LegacyLogprobs | None = None,
    ) -> CompletionChoice:
        return CompletionChoice(
            index=index,
            text=text,
            logprobs=logprobs,
            finish_reason=finish_reason(done) if done else None,
        )

    def _completion(
        self,
        choices: list[CompletionChoice],
        usage: Usage | None = None,
        prompt_progress: PromptProgress | None = None,
    ) -> CompletionResponse:
        return CompletionResponse(
            id=self.id,
            created=self.created,
            model=self.model,
            choices=choices,
            usage=usage,
            prompt_progress=prompt_progress,
        )


class Embedding(Response):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # base64: little-endian float32, what the SDK asks for

    @classmethod
    def of(cls, index: int, vector: list[float], encoding: str) -> Embedding:
        if encoding == "base64":
            packed = struct.pack(f"<{len(vector)}f", *vector)
            return cls(index=index, embedding=base64.b64encode(packed).decode())
        return cls(index=index, embedding=vector)


class EmbeddingUsage(Response):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(Response):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
