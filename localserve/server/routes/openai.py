"""OpenAI-compatible routes under /v1, over the same scheduler as the Ollama routes."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

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
from localserve.schemas.answer import Answer
from localserve.schemas.base import keep_alive_seconds
from localserve.schemas.openai import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    SamplingFields,
    finish_reason,
)
from localserve.server.errors import OPENAI_ERRORS
from localserve.server.routes.deps import (
    check_capabilities,
    model_request,
    scheduler,
    shorten,
    store,
    with_model_settings,
)
from localserve.server.streaming import first_then_rest, sse
from localserve.store.store import StoredModel

router = APIRouter(prefix="/v1", responses=OPENAI_ERRORS)
# For the OpenAPI schema: with stream true, server-sent events.
STREAMED: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "One JSON object, or with stream true server-sent events",
        "content": {"text/event-stream": {}},
    }
}


def _model_entry(stored: StoredModel) -> dict[str, Any]:
    return {
        "id": stored.name,
        "object": "model",
        "created": int(stored.modified_at.timestamp()),
        "owned_by": "localserve",
    }


@router.get("/models")
async def models(request: Request) -> dict[str, Any]:
    stored = await asyncio.to_thread(store(request).list_models)
    return {"object": "list", "data": [_model_entry(m) for m in stored]}


@router.get("/models/{name:path}")
async def model(name: str, request: Request) -> dict[str, Any]:
    ref, _ = await asyncio.to_thread(store(request).get, name)
    stored = await asyncio.to_thread(store(request).list_models)
    return _model_entry(next(m for m in stored if m.ref == ref))


async def _events(
    request: Request,
    body: SamplingFields,
    build: Callable[[SamplingOptions], GenerateJob],
    max_tokens: int | None,
) -> AsyncIterator[Event]:
    """The engine's events for a request; ``build(sampling)`` makes its job."""
    model_req, sampling = model_request(
        request,
        body.model,
        body.options,
        keep_alive_seconds(body.keep_alive),
        body.overrides(max_tokens),
    )
    job = build(sampling)
    job = with_model_settings(request, body.model, job)
    await check_capabilities(request, body.model, job)
    metrics = request.app.state.metrics
    started = time.perf_counter_ns()
    first = True
    async for event in scheduler(request).generate(model_req, job):
        if isinstance(event, DoneEvent):
            metrics.record_done(event)
        elif first:
            metrics.ttft.observe((time.perf_counter_ns() - started) / 1e9)
            first = False
        yield event


async def _after_first_event(
    chunks: AsyncIterator[dict[str, Any]],
) -> AsyncIterator[dict[str, Any]]:
    """Hold the role chunk until the engine has produced something, so errors before
    any output (bad options, unknown model) still get a real HTTP status."""
    iterator = chunks.__aiter__()
    role = await iterator.__anext__()
    second = await iterator.__anext__()
    yield role
    yield second
    async for item in iterator:
        yield item


async def _stream(request: Request, chunks: AsyncIterator[dict[str, Any]]) -> Response:
    _, rest = await first_then_rest(_after_first_event(chunks))
    return sse(rest, request.url.path)


# ------------------------------------------------------------------------- chat


class _ChatShape:
    """Chat completion objects and chunks for one request (``n`` answers)."""

    def __init__(self, model: str, logprobs: bool = False) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.model = model
        self.logprobs = logprobs

    def chunk(
        self,
        delta: dict[str, Any],
        finish: str | None = None,
        logprobs: list[dict[str, Any]] | None = None,
        index: int = 0,
    ) -> dict[str, Any]:
        choice = {
            "index": index,
            "delta": delta,
            "logprobs": {"content": logprobs} if logprobs else None,
            "finish_reason": finish,
        }
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "localserve",
            "choices": [choice],
        }

    def whole(self, answers: list[Answer]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "localserve",
            "choices": [self._choice(i, answer) for i, answer in enumerate(answers)],
            "usage": total_usage([a.done for a in answers]),
        }

    def _choice(self, index: int, answer: Answer) -> dict[str, Any]:
        done = answer.done or DoneEvent("", "stop")
        message: dict[str, Any] = {
            "role": "assistant",
            "content": answer.content if answer.content or not answer.calls else None,
        }
        if answer.reasoning:
            message["reasoning_content"] = answer.reasoning
        if answer.calls:
            message["tool_calls"] = [_openai_call(c) for c in answer.calls]
        return {
            "index": index,
            "message": message,
            "logprobs": {"content": answer.logprobs} if self.logprobs else None,
            "finish_reason": finish_reason(done, bool(answer.calls)),
        }


def total_usage(done: list[DoneEvent | None]) -> dict[str, int]:
    """One prompt (the ``n`` answers share it), every answer's tokens."""
    finished = [d for d in done if d is not None] or [DoneEvent("", "stop")]
    prompt = finished[0].prompt_eval_count
    completion = sum(d.eval_count for d in finished)
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    drafted = sum(d.draft_count for d in finished)
    if drafted:
        # OpenAI's names for tokens of a predicted output that were / were not used.
        accepted = sum(d.draft_accepted for d in finished)
        usage["completion_tokens_details"] = {
            "accepted_prediction_tokens": accepted,
            "rejected_prediction_tokens": drafted - accepted,
        }
    return usage


async def _answers(events: AsyncIterator[Event], n: int) -> list[Answer]:
    answers = [Answer() for _ in range(n)]
    async for event in events:
        answers[event.choice].add(event)
    return answers


def _call_id(call: ToolCallEvent) -> str:
    return call.call_id or f"call_{uuid.uuid4().hex[:24]}"


def _openai_call(call: ToolCallEvent) -> dict[str, Any]:
    return {
        "id": _call_id(call),
        "type": "function",
        "function": {"name": call.name, "arguments": json.dumps(call.arguments)},
    }


@router.post("/chat/completions", response_model=None, responses=STREAMED)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    max_tokens = (
        body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    )
    events = _events(request, body, body.to_job, max_tokens)
    shape = _ChatShape(body.model, body.logprobs)
    if not body.stream:
        return JSONResponse(shape.whole(await _answers(events, body.n)))

    async def chunks() -> AsyncIterator[dict[str, Any]]:
        for index in range(body.n):  # OpenAI sends each answer's role first
            yield shape.chunk({"role": "assistant", "content": ""}, index=index)
        called = [False] * body.n
        finished: list[DoneEvent | None] = [None] * body.n
        # Log-probabilities of tokens not yet shown, per answer.
        pending: list[list[dict[str, Any]]] = [[] for _ in range(body.n)]
        async for event in events:
            index = event.choice
            if isinstance(event, LogprobsEvent):
                pending[index].extend(event.entries)
            elif isinstance(event, TextEvent | ThinkingEvent):
                key = "content" if isinstance(event, TextEvent) else "reasoning_content"
                yield shape.chunk({key: event.text}, logprobs=pending[index], index=index)
                pending[index] = []
            elif isinstance(event, ToolCallEvent):
                called[index] = True
                # As OpenAI streams a call: its id and name first, then the arguments.
                head = {"index": event.index, "id": _call_id(event), "type": "function"}
                name = {**head, "function": {"name": event.name, "arguments": ""}}
                yield shape.chunk({"tool_calls": [name]}, index=index)
                arguments = {"arguments": json.dumps(event.arguments)}
                yield shape.chunk(
                    {"tool_calls": [{"index": event.index, "function": arguments}]}, index=index
                )
            elif isinstance(event, DoneEvent):
                finished[index] = event
                yield shape.chunk({}, finish_reason(event, called[index]), index=index)
        if body.include_usage:
            yield {**shape.chunk({}), "choices": [], "usage": total_usage(finished)}

    return await _stream(request, chunks())


# ------------------------------------------------------------------ completions


@router.post("/completions", response_model=None, responses=STREAMED)
async def completions(body: CompletionRequest, request: Request) -> Response:
    completion_id = f"cmpl-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    prefix = body.text() if body.echo else ""
    events = _events(request, body, body.to_job, body.max_tokens)

    def choice(
        index: int, text: str, done: DoneEvent | None, logprobs: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        return {
            "index": index,
            "text": text,
            "logprobs": logprobs,
            "finish_reason": finish_reason(done) if done else None,
        }

    def completion(choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": completion_id,
            "object": "text_completion",
            "created": created,
            "model": body.model,
            "system_fingerprint": "localserve",
            "choices": choices,
        }

    def logprobs_of(entries: list[dict[str, Any]], offset: int) -> dict[str, Any] | None:
        return legacy_logprobs(entries, offset) if body.logprobs is not None else None

    if not body.stream:
        answers = await _answers(events, body.n)
        whole = completion(
            [
                # With echo the entries begin with the prompt's own tokens, at offset 0.
                choice(i, prefix + a.content, a.done, logprobs_of(a.logprobs, 0))
                for i, a in enumerate(answers)
            ]
        )
        return JSONResponse({**whole, "usage": total_usage([a.done for a in answers])})

    async def chunks() -> AsyncIterator[dict[str, Any]]:
        for index in range(body.n):
            yield completion([choice(index, "", None)])
        pending: list[list[dict[str, Any]]] = [[] for _ in range(body.n)]
        offsets = [len(prefix)] * body.n
        finished: list[DoneEvent | None] = [None] * body.n
        async for event in events:
            index = event.choice
            if isinstance(event, LogprobsEvent):
                pending[index].extend(event.entries)
            elif isinstance(event, TextEvent):
                logprobs = logprobs_of(pending[index], offsets[index])
                yield completion([choice(index, event.text, None, logprobs)])
                offsets[index] += len(event.text)
                pending[index] = []
            elif isinstance(event, DoneEvent):
                finished[index] = event
                yield completion([choice(index, "", event)])
        if body.include_usage:
            yield {**completion([]), "usage": total_usage(finished)}

    return await _stream(request, chunks())


def legacy_logprobs(entries: list[dict[str, Any]], offset: int) -> dict[str, Any]:
    """The completions API's older shape: parallel lists, alternatives as a dict per
    token, and each token's offset in the returned text."""
    offsets = []
    for entry in entries:
        offsets.append(offset)
        offset += len(entry["token"])
    return {
        "tokens": [e["token"] for e in entries],
        "token_logprobs": [e["logprob"] for e in entries],
        "top_logprobs": [
            {alt["token"]: alt["logprob"] for alt in e["top_logprobs"]} for e in entries
        ],
        "text_offset": offsets,
    }


@router.post("/embeddings")
async def embeddings(body: EmbeddingRequest, request: Request) -> dict[str, Any]:
    inputs = [body.input] if isinstance(body.input, str) else list(body.input)
    model_req, _ = model_request(
        request, body.model, body.options, keep_alive_seconds(body.keep_alive)
    )
    result = await scheduler(request).embed(model_req, inputs, truncate=True)
    vectors = result["embeddings"]
    if body.dimensions is not None:
        vectors = [shorten(v, body.dimensions) for v in vectors]
    data = [
        {"object": "embedding", "index": i, "embedding": _encode(v, body.encoding_format)}
        for i, v in enumerate(vectors)
    ]
    tokens = int(result.get("prompt_eval_count", 0))
    return {
        "object": "list",
        "data": data,
        "model": body.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def _encode(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "base64":  # what the openai SDK asks for by default: little-endian float32
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector
