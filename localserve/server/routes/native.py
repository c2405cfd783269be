"""Ollama's native API under /api (see docs/api.md and ../shared/WIRE.md).

Routes stay thin: parse the body, build the job and ask the scheduler, shape the
answer; the request and response models, and the shape that makes answers of engine
events, are in schemas/ollama.py. No locks here; the scheduler owns concurrency.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from localserve import __version__
from localserve.runtime.protocol import GenerateJob
from localserve.scheduler.scheduler import ModelRequest, Resident
from localserve.schemas.base import Response as WireResponse
from localserve.schemas.ollama import (
    AnswerShape,
    ChatRequest,
    ChatResponse,
    CopyRequest,
    DeviceShare,
    EmbeddingsRequest,
    EmbeddingsResponse,
    EmbedRequest,
    EmbedResponse,
    GenerateRequest,
    GenerateResponse,
    ListResponse,
    NameRequest,
    ProcessResponse,
    ProgressResponse,
    PullRequest,
    RunningModel,
    ShowRequest,
    ShowResponse,
    VersionResponse,
    timestamp,
)
from localserve.server.errors import OLLAMA_ERRORS
from localserve.server.models import model_details, show_model, tag_entry
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
from localserve.server.streaming import first_then_rest, iterate_in_thread, ndjson

router = APIRouter(responses=OLLAMA_ERRORS)


def streamed(model: type[WireResponse]) -> dict[int | str, dict[str, Any]]:
    """For the OpenAPI schema: a route that answers ``model`` as one JSON object, or
    with stream (the default) as NDJSON lines of the same kind."""
    return {
        200: {
            "model": model,
            "description": "One JSON object, or with stream (the default) NDJSON lines",
            "content": {"application/x-ndjson": {}},
        }
    }


EMPTY: dict[int | str, dict[str, Any]] = {200: {"description": "Done (an empty body)"}}


# ------------------------------------------------------------------ basics


@router.get("/api/version", response_model=VersionResponse)
async def version() -> VersionResponse:
    return VersionResponse(version=__version__)


@router.get("/api/tags", response_model=ListResponse)
async def tags(request: Request) -> ListResponse:
    models = await asyncio.to_thread(store(request).list_models)
    return ListResponse(models=[await asyncio.to_thread(tag_entry, request.app, m) for m in models])


@router.head("/api/version", include_in_schema=False)
@router.head("/api/tags", include_in_schema=False)
async def head() -> Response:
    """Ollama answers HEAD here too; scripts probe the server with it."""
    return Response(status_code=200)


@router.get("/api/ps", response_model=ProcessResponse)
async def ps(request: Request) -> ProcessResponse:
    return ProcessResponse(
        models=[
            await asyncio.to_thread(running_entry, request.app, r)
            for r in scheduler(request).running()
        ]
    )


def running_entry(app: Any, resident: Resident) -> RunningModel:
    details = model_details(app, resident.manifest)
    if resident.busy or resident.expires_at is None:
        expires = datetime.max.replace(tzinfo=UTC) if resident.keep_alive < 0 else datetime.now(UTC)
        if resident.keep_alive > 0:
            expires = _moment(time.time() + resident.keep_alive)
    else:
        expires = _moment(resident.expires_at)
    info = resident.runner.info
    return RunningModel(
        name=resident.name,
        model=resident.name,
        # Memory the runner's plan says it uses (weights, KV, compute), and the GPU's share.
        size=info.size,
        digest=resident.manifest.digest,
        details=details,
        expires_at=timestamp(expires) if expires.year < 9999 else "9999-12-31T23:59:59.000000000Z",
        size_vram=info.size_vram,
        context_length=info.num_ctx,
        # localserve's extension, only when RPC workers hold layers: the split per
        # device (name, the worker's address, layers, bytes).
        devices=[DeviceShare(**asdict(device)) for device in info.devices] or None,
        context_reason=info.context_reason,
    )


def _moment(epoch_seconds: float) -> datetime:
    """A wall-clock time; one beyond what datetime holds (LOCALSERVE_KEEP_ALIVE of
    centuries) is as good as forever."""
    try:
        return datetime.fromtimestamp(epoch_seconds, UTC)
    except (OverflowError, OSError, ValueError):
        return datetime.max.replace(tzinfo=UTC)


@router.post("/api/show", response_model=ShowResponse)
async def show(body: ShowRequest, request: Request) -> ShowResponse:
    return await asyncio.to_thread(show_model, request.app, body.model, body.verbose)


@router.delete("/api/delete", response_class=Response, responses=EMPTY)
async def delete(body: NameRequest, request: Request) -> Response:
    # Delete first, so that no new request can load the model again, then unload it:
    # its in-flight requests end with an error (docs/store.md). Answers once no runner
    # holds its files.
    ref, _ = await asyncio.to_thread(store(request).remove, body.model)
    await scheduler(request).forget(ref)
    return Response(status_code=200)


@router.post("/api/copy", response_class=Response, responses=EMPTY)
async def copy(body: CopyRequest, request: Request) -> Response:
    await asyncio.to_thread(store(request).copy, body.source, body.destination)
    return Response(status_code=200)


@router.post("/api/pull", response_model=None, responses=streamed(ProgressResponse))
async def pull(body: PullRequest, request: Request) -> Response:
    from localserve.store.pull import hub_ref, pull_model

    # A bad name is a 400 before anything streams; a damaged local model says how to
    # repair it (checking it may hash a file, so not on the event loop).
    await asyncio.to_thread(hub_ref, body.model, store(request))
    events = pull_model(store(request), body.model)
    chunks = (
        ProgressResponse.of(e.status, e.digest, e.total, e.completed)
        async for e in iterate_in_thread(events)
    )
    if body.stream:
        # Hold "pulling manifest" until the Hub has answered, so an unknown repository
        # or quantization is a 404 with a status, not an error line after a 200.
        _, rest = await first_then_rest(chunks, count=2)
        return ndjson(rest, request.url.path)
    async for _ in chunks:
        pass
    return JSONResponse(ProgressResponse(status="success").model_dump())


# -------------------------------------------------------------- generation


@router.post("/api/generate", response_model=None, responses=streamed(GenerateResponse))
async def generate(body: GenerateRequest, request: Request) -> Response:
    started = time.perf_counter_ns()
    model, sampling = model_request(request, body.model, body.options, body.keep_alive_seconds())
    if not body.prompt and not body.suffix and not body.images:
        return await _load_only(request, model, AnswerShape(body.model, started=started))
    job = await prepared(request, body.model, body.to_job(sampling))
    shape = AnswerShape(body.model, logprobs=job.logprobs, started=started)
    return await _respond(request, model, job, shape, body.stream)


@router.post("/api/chat", response_model=None, responses=streamed(ChatResponse))
async def chat(body: ChatRequest, request: Request) -> Response:
    started = time.perf_counter_ns()
    model, sampling = model_request(request, body.model, body.options, body.keep_alive_seconds())
    if not body.messages:
        return await _load_only(request, model, AnswerShape(body.model, chat=True, started=started))
    job = await prepared(request, body.model, body.to_job(sampling))
    shape = AnswerShape(body.model, chat=True, logprobs=job.logprobs, started=started)
    return await _respond(request, model, job, shape, body.stream)


async def _load_only(request: Request, model: ModelRequest, shape: AnswerShape) -> Response:
    """An empty prompt or message list: load (or, with keep_alive 0, unload) the model."""
    if model.keep_alive == 0:
        await scheduler(request).unload(model.name)
        return JSONResponse(shape.loaded("unload", 0).model_dump())
    _, load_ns = await scheduler(request).load(model)
    return JSONResponse(shape.loaded("load", load_ns).model_dump())


async def _respond(
    request: Request, model: ModelRequest, job: GenerateJob, shape: AnswerShape, stream: bool
) -> Response:
    events = run_job(request, model, job, shape.started)
    if stream:
        _, rest = await first_then_rest(shaped(shape, events))
        return ndjson(rest, request.url.path)
    return JSONResponse(shape.whole(await answers(events, shape.n)).model_dump())


# -------------------------------------------------------------- embeddings


@router.post("/api/embed", response_model=EmbedResponse)
async def embed(body: EmbedRequest, request: Request) -> EmbedResponse:
    started = time.perf_counter_ns()
    if isinstance(body.input, str):
        inputs = [body.input] if body.input else []  # "" only loads, as in Ollama
    else:
        inputs = list(body.input)
    model, _ = model_request(request, body.model, body.options, body.keep_alive_seconds())
    if not inputs:
        _, load_ns = await scheduler(request).load(model)
        return EmbedResponse(
            model=body.model,
            embeddings=[],
            total_duration=time.perf_counter_ns() - started,
            load_duration=load_ns,
            prompt_eval_count=0,
        )
    result = await scheduler(request).embed(model, inputs, truncate=body.truncate)
    vectors = result.embeddings
    if body.dimensions is not None:
        vectors = [shorten(v, body.dimensions) for v in vectors]
    return EmbedResponse(
        model=body.model,
        embeddings=vectors,
        total_duration=time.perf_counter_ns() - started,
        load_duration=result.load_duration,
        prompt_eval_count=result.prompt_eval_count,
    )


@router.post("/api/embeddings", response_model=EmbeddingsResponse)
async def embeddings(body: EmbeddingsRequest, request: Request) -> EmbeddingsResponse:
    model, _ = model_request(request, body.model, body.options, body.keep_alive_seconds())
    if not body.prompt:
        await scheduler(request).load(model)
        return EmbeddingsResponse(embedding=[])
    result = await scheduler(request).embed(model, [body.prompt], truncate=True)
    return EmbeddingsResponse(embedding=result.embeddings[0])
