"""Ollama's native API under /api (see docs/api.md and ../shared/WIRE.md).

Routes stay thin: parse the body (schemas/ollama.py), split options, ask the
scheduler, shape the chunks. No locks here; the scheduler owns concurrency.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from localserve import __version__
from localserve.errors import InvalidOptionError
from localserve.scheduler.scheduler import ModelRequest, Resident, Scheduler
from localserve.schemas.ollama import (
    ChatRequest,
    CopyRequest,
    EmbeddingsRequest,
    EmbedRequest,
    GenerateRequest,
    NameRequest,
    PullRequest,
    ShowRequest,
    final_fields,
    timestamp,
)
from localserve.schemas.options import split_options
from localserve.server.errors import OLLAMA_ERRORS
from localserve.server.models import model_details, show_model, tag_entry
from localserve.server.streaming import first_then_rest, iterate_in_thread, ndjson
from localserve.store.store import ModelStore

router = APIRouter(responses=OLLAMA_ERRORS)
# For the OpenAPI schema: what these routes answer with besides JSON.
STREAMED: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "One JSON object, or with stream (the default) NDJSON lines",
        "content": {"application/x-ndjson": {}},
    }
}
EMPTY: dict[int | str, dict[str, Any]] = {200: {"description": "Done (an empty body)"}}


def _scheduler(request: Request) -> Scheduler:
    scheduler: Scheduler = request.app.state.scheduler
    return scheduler


def _store(request: Request) -> ModelStore:
    store: ModelStore = request.app.state.store
    return store


def model_request(
    request: Request,
    name: str,
    options: dict[str, Any] | None,
    keep_alive: float | None,
    overrides: dict[str, Any] | None = None,
) -> tuple[ModelRequest, dict[str, Any]]:
    """The model to run on (with its load options) and the sampling options as a dict."""
    settings = request.app.state.settings
    split = split_options(
        options,
        num_ctx=settings.context_length,
        num_parallel=settings.num_parallel,
        overrides=overrides,
    )
    return ModelRequest(name, split.load, keep_alive), split.sampling.to_dict()


# ------------------------------------------------------------------ basics


@router.get("/api/version")
async def version() -> dict[str, str]:
    return {"version": __version__}


@router.get("/api/tags")
async def tags(request: Request) -> dict[str, Any]:
    store = _store(request)
    models = await asyncio.to_thread(store.list_models)
    return {"models": [await asyncio.to_thread(tag_entry, request.app, m) for m in models]}


@router.head("/api/version", include_in_schema=False)
@router.head("/api/tags", include_in_schema=False)
async def head() -> Response:
    """Ollama answers HEAD here too; scripts probe the server with it."""
    return Response(status_code=200)


@router.get("/api/ps")
async def ps(request: Request) -> dict[str, Any]:
    return {
        "models": [
            await asyncio.to_thread(running_entry, request.app, r)
            for r in _scheduler(request).running()
        ]
    }


def running_entry(app: Any, resident: Resident) -> dict[str, Any]:
    details = model_details(app, resident.manifest)
    if resident.busy or resident.expires_at is None:
        expires = datetime.max.replace(tzinfo=UTC) if resident.keep_alive < 0 else datetime.now(UTC)
        if resident.keep_alive > 0:
            expires = _moment(time.time() + resident.keep_alive)
    else:
        expires = _moment(resident.expires_at)
    return {
        "name": resident.name,
        "model": resident.name,
        # Memory the runner's plan says it uses (weights, KV, compute), and the GPU's share.
        "size": int(resident.runner.info.get("size", resident.manifest.size)),
        "digest": resident.manifest.digest,
        "details": details,
        "expires_at": timestamp(expires)
        if expires.year < 9999
        else "9999-12-31T23:59:59.000000000Z",
        "size_vram": int(resident.runner.info.get("size_vram", 0)),
        "context_length": int(resident.runner.info.get("num_ctx", resident.options.num_ctx)),
    }


def _moment(epoch_seconds: float) -> datetime:
    """A wall-clock time; one beyond what datetime holds (LOCALSERVE_KEEP_ALIVE of
    centuries) is as good as forever."""
    try:
        return datetime.fromtimestamp(epoch_seconds, UTC)
    except (OverflowError, OSError, ValueError):
        return datetime.max.replace(tzinfo=UTC)


@router.post("/api/show")
async def show(body: ShowRequest, request: Request) -> dict[str, Any]:
    return await asyncio.to_thread(show_model, request.app, body.model, body.verbose)


@router.delete("/api/delete", response_class=Response, responses=EMPTY)
async def delete(body: NameRequest, request: Request) -> Response:
    # Delete first, so that no new request can load the model again, then unload it:
    # its in-flight requests end with an error (docs/store.md). Answers once no runner
    # holds its files.
    ref, _ = await asyncio.to_thread(_store(request).remove, body.model)
    await _scheduler(request).forget(ref)
    return Response(status_code=200)


@router.post("/api/copy", response_class=Response, responses=EMPTY)
async def copy(body: CopyRequest, request: Request) -> Response:
    await asyncio.to_thread(_store(request).copy, body.source, body.destination)
    return Response(status_code=200)


@router.post("/api/pull", response_model=None, responses=STREAMED)
async def pull(body: PullRequest, request: Request) -> Response:
    from localserve.store.pull import hub_ref, pull_model

    # A bad name is a 400 before anything streams; a damaged local model says how to
    # repair it (checking it may hash a file, so not on the event loop).
    await asyncio.to_thread(hub_ref, body.model, _store(request))
    events = pull_model(_store(request), body.model)

    async def chunks() -> AsyncIterator[dict[str, Any]]:
        async for event in iterate_in_thread(events):
            yield event.to_wire()

    if body.stream:
        # Hold "pulling manifest" until the Hub has answered, so an unknown repository
        # or quantization is a 404 with a status, not an error line after a 200.
        _, rest = await first_then_rest(chunks(), count=2)
        return ndjson(rest, request.url.path)
    async for _ in chunks():
        pass
    return JSONResponse({"status": "success"})


# -------------------------------------------------------------- generation


def _final_or_load(
    name: str, reason: str, load_ns: int, started: int, **extra: Any
) -> dict[str, Any]:
    return {
        "model": name,
        "created_at": timestamp(),
        **extra,
        "done": True,
        "done_reason": reason,
        "total_duration": time.perf_counter_ns() - started,
        "load_duration": load_ns,
    }


async def _load_only(
    request: Request, model: ModelRequest, started: int, **extra: Any
) -> dict[str, Any]:
    """An empty prompt or message list: load (or, with keep_alive 0, unload) the model."""
    scheduler = _scheduler(request)
    if model.keep_alive == 0:
        await scheduler.unload(model.name)
        return _final_or_load(model.name, "unload", 0, started, **extra)
    _, load_ns = await scheduler.load(model)
    return _final_or_load(model.name, "load", load_ns, started, **extra)


async def _stream(
    request: Request, model: ModelRequest, engine_request: dict[str, Any], shape: str, started: int
) -> AsyncIterator[dict[str, Any]]:
    metrics = request.app.state.metrics
    first_token = True
    async for event in _scheduler(request).generate(model, engine_request):
        if event["type"] == "text":
            if first_token:
                metrics.ttft.observe((time.perf_counter_ns() - started) / 1e9)
                first_token = False
            piece = event["text"]
            body: dict[str, Any] = {"model": model.name, "created_at": timestamp()}
            body.update(
                {"message": {"role": "assistant", "content": piece}}
                if shape == "chat"
                else {"response": piece}
            )
            body["done"] = False
            yield body
        elif event["type"] == "done":
            metrics.record_done(event)
            body = {"model": model.name, "created_at": timestamp()}
            body.update(
                {"message": {"role": "assistant", "content": ""}}
                if shape == "chat"
                else {"response": ""}
            )
            body.update(final_fields(event, time.perf_counter_ns() - started))
            if "context" in event:
                body["context"] = event["context"]
            yield body


async def _respond(
    request: Request, chunks: AsyncIterator[dict[str, Any]], stream: bool, shape: str
) -> Response:
    if stream:
        _, rest = await first_then_rest(chunks)
        return ndjson(rest, request.url.path)
    text: list[str] = []
    final: dict[str, Any] = {}
    async for chunk in chunks:
        if chunk["done"]:
            final = chunk
        else:
            text.append(chunk["message"]["content"] if shape == "chat" else chunk["response"])
    if shape == "chat":
        final["message"] = {"role": "assistant", "content": "".join(text)}
    else:
        final["response"] = "".join(text)
    return JSONResponse(final)


@router.post("/api/generate", response_model=None, responses=STREAMED)
async def generate(body: GenerateRequest, request: Request) -> Response:
    started = time.perf_counter_ns()
    if body.images:
        raise InvalidOptionError("images are not supported: localserve runs text models")
    if body.suffix:
        # Ollama answers the same for a model without an infill template; ignoring it
        # would answer a different question.
        raise InvalidOptionError("suffix is not supported: localserve has no fill-in-the-middle")
    model, sampling = model_request(request, body.model, body.options, body.keep_alive_seconds())
    if not body.prompt:
        return JSONResponse(await _load_only(request, model, started, response=""))
    engine_request = {
        "prompt": body.prompt,
        "system": body.system,
        "raw": body.raw,
        "format": body.format or None,
        "options": sampling,
        "context": body.context,
        "want_context": True,
    }
    return await _respond(
        request,
        _stream(request, model, engine_request, "generate", started),
        body.stream,
        "generate",
    )


@router.post("/api/chat", response_model=None, responses=STREAMED)
async def chat(body: ChatRequest, request: Request) -> Response:
    started = time.perf_counter_ns()
    model, sampling = model_request(request, body.model, body.options, body.keep_alive_seconds())
    if not body.messages:
        return JSONResponse(
            await _load_only(request, model, started, message={"role": "assistant", "content": ""})
        )
    if any(m.images for m in body.messages):
        raise InvalidOptionError("images are not supported: localserve runs text models")
    messages = [m.model_dump(exclude_none=True) for m in body.messages]
    engine_request = {
        "messages": messages,
        "tools": body.tools,
        "format": body.format or None,
        "options": sampling,
    }
    return await _respond(
        request, _stream(request, model, engine_request, "chat", started), body.stream, "chat"
    )


# -------------------------------------------------------------- embeddings


@router.post("/api/embed")
async def embed(body: EmbedRequest, request: Request) -> dict[str, Any]:
    started = time.perf_counter_ns()
    if isinstance(body.input, str):
        inputs = [body.input] if body.input else []  # "" only loads, as in Ollama
    else:
        inputs = list(body.input)
    model, _ = model_request(request, body.model, body.options, body.keep_alive_seconds())
    if not inputs:
        _, load_ns = await _scheduler(request).load(model)
        return {
            "model": body.model,
            "embeddings": [],
            "total_duration": time.perf_counter_ns() - started,
            "load_duration": load_ns,
            "prompt_eval_count": 0,
        }
    result = await _scheduler(request).embed(model, inputs, truncate=body.truncate)
    vectors = result["embeddings"]
    if body.dimensions is not None:
        vectors = [_shorten(v, body.dimensions) for v in vectors]
    return {
        "model": body.model,
        "embeddings": vectors,
        "total_duration": time.perf_counter_ns() - started,
        "load_duration": int(result.get("load_duration", 0)),
        "prompt_eval_count": int(result.get("prompt_eval_count", 0)),
    }


def _shorten(vector: list[float], dimensions: int) -> list[float]:
    """Matryoshka-style truncation, renormalised (what Ollama does for ``dimensions``)."""
    head = vector[:dimensions]
    norm = sum(x * x for x in head) ** 0.5
    return [x / norm for x in head] if norm > 0 else head


@router.post("/api/embeddings")
async def embeddings(body: EmbeddingsRequest, request: Request) -> dict[str, Any]:
    model, _ = model_request(request, body.model, body.options, body.keep_alive_seconds())
    if not body.prompt:
        await _scheduler(request).load(model)
        return {"embedding": []}
    result = await _scheduler(request).embed(model, [body.prompt], truncate=True)
    return {"embedding": result["embeddings"][0]}
