"""OpenAI-compatible routes under /v1, over the same scheduler as the Ollama routes."""

from __future__ import annotations

import base64
import struct
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from localserve.errors import InvalidOptionError
from localserve.schemas.base import keep_alive_seconds
from localserve.schemas.openai import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    finish_reason,
    usage,
)
from localserve.server.errors import OPENAI_ERRORS
from localserve.server.routes.native import _scheduler, _shorten, _store, model_request
from localserve.server.streaming import first_then_rest, sse

router = APIRouter(prefix="/v1", responses=OPENAI_ERRORS)
# For the OpenAPI schema: with stream true, server-sent events.
STREAMED: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "One JSON object, or with stream true server-sent events",
        "content": {"text/event-stream": {}},
    }
}


@router.get("/models")
async def models(request: Request) -> dict[str, Any]:
    data = [
        {
            "id": m.name,
            "object": "model",
            "created": int(m.modified_at.timestamp()),
            "owned_by": "localserve",
        }
        for m in _store(request).list_models()
    ]
    return {"object": "list", "data": data}


@router.get("/models/{name:path}")
async def model(name: str, request: Request) -> dict[str, Any]:
    ref, _ = _store(request).get(name)
    stored = next(m for m in _store(request).list_models() if m.ref == ref)
    return {
        "id": stored.name,
        "object": "model",
        "created": int(stored.modified_at.timestamp()),
        "owned_by": "localserve",
    }


async def _events(
    request: Request, body: Any, engine_request: dict[str, Any], max_tokens: int | None
) -> AsyncIterator[dict[str, Any]]:
    model_req, sampling = model_request(
        request,
        body.model,
        body.options,
        keep_alive_seconds(body.keep_alive),
        body.overrides(max_tokens),
    )
    metrics = request.app.state.metrics
    started = time.perf_counter_ns()
    first = True
    async for event in _scheduler(request).generate(
        model_req, {**engine_request, "options": sampling}
    ):
        if event["type"] == "text" and first:
            metrics.ttft.observe((time.perf_counter_ns() - started) / 1e9)
            first = False
        if event["type"] == "done":
            metrics.record_done(event)
        yield event


async def _finish(
    request: Request,
    events: AsyncIterator[dict[str, Any]],
    *,
    stream: bool,
    include_usage: bool,
    chunk: Any,
    whole: Any,
) -> Response:
    """Shape engine events with ``chunk(text=, done=)`` (streaming) or ``whole(text, done)``."""
    if stream:

        async def chunks() -> AsyncIterator[dict[str, Any]]:
            yield chunk(text=None, done=None)  # the role chunk OpenAI sends first
            async for event in events:
                if event["type"] == "text":
                    yield chunk(text=event["text"], done=None)
                elif event["type"] == "done":
                    yield chunk(text=None, done=event)
                    if include_usage:
                        yield {**chunk(text=None, done=None), "choices": [], "usage": usage(event)}

        _, rest = await first_then_rest(_after_first_event(chunks()))
        return sse(rest, request.url.path)
    text: list[str] = []
    done: dict[str, Any] = {}
    async for event in events:
        if event["type"] == "text":
            text.append(event["text"])
        elif event["type"] == "done":
            done = event
    return JSONResponse(whole("".join(text), done))


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


@router.post("/chat/completions", response_model=None, responses=STREAMED)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    max_tokens = (
        body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    )
    engine_request = {
        "messages": body.engine_messages(),
        "tools": body.tools,
        "format": body.output_format(),
    }
    events = _events(request, body, engine_request, max_tokens)

    def chunk(text: str | None, done: dict[str, Any] | None) -> dict[str, Any]:
        delta: dict[str, Any] = {}
        if text is None and done is None:
            delta = {"role": "assistant", "content": ""}
        elif text is not None:
            delta = {"content": text}
        return {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": body.model,
            "system_fingerprint": "localserve",
            "choices": [
                {
                    "index": 0,
                    "delta": delta,
                    "logprobs": None,
                    "finish_reason": finish_reason(done) if done else None,
                }
            ],
        }

    def whole(text: str, done: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": body.model,
            "system_fingerprint": "localserve",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": None,
                    "finish_reason": finish_reason(done),
                }
            ],
            "usage": usage(done),
        }

    return await _finish(
        request,
        events,
        stream=body.stream,
        include_usage=body.include_usage,
        chunk=chunk,
        whole=whole,
    )


@router.post("/completions", response_model=None, responses=STREAMED)
async def completions(body: CompletionRequest, request: Request) -> Response:
    if body.suffix:
        raise InvalidOptionError("suffix is not supported: localserve has no fill-in-the-middle")
    completion_id = f"cmpl-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    prompt = body.prompt if isinstance(body.prompt, str) else "".join(body.prompt)
    events = _events(request, body, {"prompt": prompt, "raw": True}, body.max_tokens)
    prefix = prompt if body.echo else ""

    def chunk(text: str | None, done: dict[str, Any] | None) -> dict[str, Any]:
        return {
            "id": completion_id,
            "object": "text_completion",
            "created": created,
            "model": body.model,
            "system_fingerprint": "localserve",
            "choices": [
                {
                    "index": 0,
                    "text": text or "",
                    "logprobs": None,
                    "finish_reason": finish_reason(done) if done else None,
                }
            ],
        }

    def whole(text: str, done: dict[str, Any]) -> dict[str, Any]:
        return {**chunk(prefix + text, done), "usage": usage(done)}

    return await _finish(
        request,
        events,
        stream=body.stream,
        include_usage=body.include_usage,
        chunk=chunk,
        whole=whole,
    )


@router.post("/embeddings")
async def embeddings(body: EmbeddingRequest, request: Request) -> dict[str, Any]:
    inputs = [body.input] if isinstance(body.input, str) else list(body.input)
    model_req, _ = model_request(
        request, body.model, body.options, keep_alive_seconds(body.keep_alive)
    )
    result = await _scheduler(request).embed(model_req, inputs, truncate=True)
    vectors = result["embeddings"]
    if body.dimensions is not None:
        vectors = [_shorten(v, body.dimensions) for v in vectors]
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
