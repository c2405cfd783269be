"""OpenAI-compatible routes under /v1, over the same scheduler as the Ollama routes."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from localserve.engine.protocol import (
    DoneEvent,
    Event,
    GenerateJob,
    LogprobsEvent,
    TextEvent,
    ThinkingEvent,
    ToolCallEvent,
)
from localserve.schemas.base import keep_alive_seconds
from localserve.schemas.openai import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    SamplingFields,
    finish_reason,
    usage,
)
from localserve.server.errors import OPENAI_ERRORS
from localserve.server.routes.deps import (
    Answer,
    check_capabilities,
    model_request,
    scheduler,
    shorten,
    store,
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
    request: Request, body: SamplingFields, build: Any, max_tokens: int | None
) -> AsyncIterator[Event]:
    """The engine's events for a request; ``build(sampling)`` makes its job."""
    model_req, sampling = model_request(
        request,
        body.model,
        body.options,
        keep_alive_seconds(body.keep_alive),
        body.overrides(max_tokens),
    )
    job: GenerateJob = build(sampling)
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
    """Chat completion objects and chunks for one request."""

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
    ) -> dict[str, Any]:
        choice = {
            "index": 0,
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

    def whole(self, answer: Answer) -> dict[str, Any]:
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
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "localserve",
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": {"content": answer.logprobs} if self.logprobs else None,
                    "finish_reason": finish_reason(done, bool(answer.calls)),
                }
            ],
            "usage": usage(done),
        }


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
        answer = Answer()
        async for event in events:
            answer.add(event)
        return JSONResponse(shape.whole(answer))

    async def chunks() -> AsyncIterator[dict[str, Any]]:
        yield shape.chunk({"role": "assistant", "content": ""})  # OpenAI sends the role first
        called = False
        pending: list[dict[str, Any]] = []  # log-probabilities of tokens not yet shown
        async for event in events:
            if isinstance(event, LogprobsEvent):
                pending.extend(event.entries)
            elif isinstance(event, TextEvent):
                yield shape.chunk({"content": event.text}, logprobs=pending.copy())
                pending.clear()
            elif isinstance(event, ThinkingEvent):
                yield shape.chunk({"reasoning_content": event.text}, logprobs=pending.copy())
                pending.clear()
            elif isinstance(event, ToolCallEvent):
                called = True
                # As OpenAI streams a call: its id and name first, then the arguments.
                head = {"id": _call_id(event), "type": "function"}
                yield shape.chunk(
                    {
                        "tool_calls": [
                            {
                                "index": event.index,
                                **head,
                                "function": {"name": event.name, "arguments": ""},
                            }
                        ]
                    }
                )
                arguments = json.dumps(event.arguments)
                yield shape.chunk(
                    {"tool_calls": [{"index": event.index, "function": {"arguments": arguments}}]}
                )
            elif isinstance(event, DoneEvent):
                yield shape.chunk({}, finish_reason(event, called))
                if body.include_usage:
                    yield {**shape.chunk({}), "choices": [], "usage": usage(event)}

    return await _stream(request, chunks())


# ------------------------------------------------------------------ completions


@router.post("/completions", response_model=None, responses=STREAMED)
async def completions(body: CompletionRequest, request: Request) -> Response:
    completion_id = f"cmpl-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    prefix = body.text() if body.echo else ""
    events = _events(request, body, body.to_job, body.max_tokens)

    def chunk(
        text: str, done: DoneEvent | None, logprobs: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        return {
            "id": completion_id,
            "object": "text_completion",
            "created": created,
            "model": body.model,
            "system_fingerprint": "localserve",
            "choices": [
                {
                    "index": 0,
                    "text": text,
                    "logprobs": logprobs,
                    "finish_reason": finish_reason(done) if done else None,
                }
            ],
        }

    if not body.stream:
        answer = Answer()
        async for event in events:
            answer.add(event)
        done = answer.done or DoneEvent("", "stop")
        logprobs = (
            legacy_logprobs(answer.logprobs, len(prefix)) if body.logprobs is not None else None
        )
        return JSONResponse(
            {**chunk(prefix + answer.content, done, logprobs), "usage": usage(done)}
        )

    async def chunks() -> AsyncIterator[dict[str, Any]]:
        yield chunk("", None)
        pending: list[dict[str, Any]] = []
        offset = len(prefix)
        async for event in events:
            if isinstance(event, LogprobsEvent):
                pending.extend(event.entries)
            elif isinstance(event, TextEvent):
                logprobs = legacy_logprobs(pending, offset) if body.logprobs is not None else None
                yield chunk(event.text, None, logprobs)
                offset += len(event.text)
                pending.clear()
            elif isinstance(event, DoneEvent):
                yield chunk("", event)
                if body.include_usage:
                    yield {**chunk("", None), "choices": [], "usage": usage(event)}

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
