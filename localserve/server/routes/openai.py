"""OpenAI-compatible routes under /v1, over the same scheduler as the Ollama routes.

Routes stay thin: parse the body, build the job and ask the scheduler, shape the
answer; the request and response models, and the shapes that make chat completions and
completions of engine events, are in schemas/openai.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from localserve.runtime.options import SamplingOptions
from localserve.runtime.protocol import Event, GenerateJob
from localserve.schemas.base import Response as WireResponse
from localserve.schemas.base import keep_alive_seconds
from localserve.schemas.openai import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatShape,
    CompletionRequest,
    CompletionResponse,
    CompletionShape,
    Embedding,
    EmbeddingRequest,
    EmbeddingResponse,
    EmbeddingUsage,
    ModelCard,
    ModelList,
    SamplingFields,
)
from localserve.server.errors import OPENAI_ERRORS
from localserve.server.routes.deps import (
    answers,
    model_request,
    prepared,
    run_job,
    scheduler,
    shaped,
    shorten,
    store,
)
from localserve.server.streaming import hold, sse
from localserve.store.store import StoredModel

router = APIRouter(prefix="/v1", responses=OPENAI_ERRORS)


def streamed(model: type[WireResponse]) -> dict[int | str, dict[str, Any]]:
    """For the OpenAPI schema: a route that answers ``model`` as one JSON object, or
    with stream true as server-sent events."""
    return {
        200: {
            "model": model,
            "description": "One JSON object, or with stream true server-sent events",
            "content": {"text/event-stream": {}},
        }
    }


def _model_card(stored: StoredModel) -> ModelCard:
    return ModelCard(id=stored.name, created=int(stored.modified_at.timestamp()))


@router.get("/models", response_model=ModelList)
async def models(request: Request) -> ModelList:
    stored = await asyncio.to_thread(store(request).list_models)
    return ModelList(data=[_model_card(m) for m in stored])


@router.get("/models/{name:path}", response_model=ModelCard)
async def model(name: str, request: Request) -> ModelCard:
    ref, _ = await asyncio.to_thread(store(request).get, name)
    stored = await asyncio.to_thread(store(request).list_models)
    return _model_card(next(m for m in stored if m.ref == ref))


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
    job = await prepared(request, body.model, build(sampling))
    async for event in run_job(request, model_req, job, time.perf_counter_ns()):
        yield event


async def _respond(
    request: Request,
    events: AsyncIterator[Event],
    shape: ChatShape | CompletionShape,
    stream: bool,
) -> Response:
    if not stream:
        return JSONResponse(shape.whole(await answers(events, shape.n)).model_dump())
    # The status waits for the runner to take the job (its first ProgressEvent; a
    # streamed job asks for them), so errors found before (a prompt too long, bad
    # options, an unknown model) get a real one; and a client waiting on a long prompt,
    # a queue or a load gets pings rather than silence.
    ping = request.app.state.settings.stream_ping_seconds
    return sse(shaped(shape, await hold(events, ping)), request.url.path, ping=ping)


@router.post("/chat/completions", response_model=None, responses=streamed(ChatCompletionResponse))
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    max_tokens = (
        body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    )
    events = _events(request, body, body.to_job, max_tokens)
    return await _respond(request, events, ChatShape(body), body.stream)


@router.post("/completions", response_model=None, responses=streamed(CompletionResponse))
async def completions(body: CompletionRequest, request: Request) -> Response:
    events = _events(request, body, body.to_job, body.max_tokens)
    return await _respond(request, events, CompletionShape(body), body.stream)


@router.post("/embeddings", response_model=EmbeddingResponse)
async def embeddings(body: EmbeddingRequest, request: Request) -> EmbeddingResponse:
    inputs = [body.input] if isinstance(body.input, str) else list(body.input)
    model_req, _ = model_request(
        request, body.model, body.options, keep_alive_seconds(body.keep_alive)
    )
    result = await scheduler(request).embed(model_req, inputs, truncate=True)
    vectors = result.embeddings
    if body.dimensions is not None:
        vectors = [shorten(v, body.dimensions) for v in vectors]
    tokens = result.prompt_eval_count
    return EmbeddingResponse(
        data=[Embedding.of(i, v, body.encoding_format) for i, v in enumerate(vectors)],
        model=body.model,
        usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens),
    )
