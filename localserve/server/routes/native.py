"""Ollama's native API under /api (see docs/api.md and ../shared/WIRE.md).

Routes stay thin: parse the body (schemas/ollama.py), split options, ask the
scheduler, shape the chunks. No locks here; the scheduler owns concurrency.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from localserve import __version__
from localserve.runtime.protocol import (
    DoneEvent,
    GenerateJob,
    LogprobsEvent,
    TextEvent,
    ThinkingEvent,
    ToolCallEvent,
)
from localserve.scheduler.scheduler import ModelRequest, Resident
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
from localserve.server.errors import OLLAMA_ERRORS
from localserve.server.models import model_details, show_model, tag_entry
from localserve.server.routes.deps import (
    check_capabilities,
    model_request,
    scheduler,
    shorten,
    store,
    with_model_settings,
)
from localserve.server.streaming import first_then_rest, iterate_in_thread, ndjson

router = APIRouter(responses=OLLAMA_ERRORS)
# For the OpenAPI schema: what these routes answer with besides JSON.
STREAMED: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "One JSON object, or with stream (the default) NDJSON lines",
        "content": {"application/x-ndjson": {}},
    }
}
EMPTY: dict[int | str, dict[str, Any]] = {200: {"description": "Done (an empty body)"}}


# ------------------------------------------------------------------ basics


@router.get("/api/version")
async def version() -> dict[str, str]:
    return {"version": __version__}


@router.get("/api/tags")
async def tags(request: Request) -> dict[str, Any]:
    models = await asyncio.to_thread(store(request).list_models)
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
            for r in scheduler(request).running()
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
    info = resident.runner.info
    entry: dict[str, Any] = {
        "name": resident.name,
        "model": resident.name,
        # Memory the runner's plan says it uses (weights, KV, compute), and the GPU's share.
        "size": info.size,
        "digest": resident.manifest.digest,
        "details": details,
        "expires_at": timestamp(expires)
        if expires.year < 9999
        else "9999-12-31T23:59:59.000000000Z",
        "size_vram": info.size_vram,
        "context_length": info.num_ctx,
    }
    # localserve's extension, only when RPC workers hold layers: the split per device
    # (name, the worker's address, layers, bytes).
    if info.devices:
        entry["devices"] = [asdict(device) for device in info.devices]
    return entry


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
    ref, _ = await asyncio.to_thread(store(request).remove, body.model)
    await scheduler(request).forget(ref)
    return Response(status_code=200)


@router.post("/api/copy", response_class=Response, responses=EMPTY)
async def copy(body: CopyRequest, request: Request) -> Response:
    await asyncio.to_thread(store(request).copy, body.source, body.destination)
    return Response(status_code=200)


@router.post("/api/pull", response_model=None, responses=STREAMED)
async def pull(body: PullRequest, request: Request) -> Response:
    from localserve.store.pull import hub_ref, pull_model

    # A bad name is a 400 before anything streams; a damaged local model says how to
    # repair it (checking it may hash a file, so not on the event loop).
    await asyncio.to_thread(hub_ref, body.model, store(request))
    events = pull_model(store(request), body.model)

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
    daemon_scheduler = scheduler(request)
    if model.keep_alive == 0:
        await daemon_scheduler.unload(model.name)
        return _final_or_load(model.name, "unload", 0, started, **extra)
    _, load_ns = await daemon_scheduler.load(model)
    return _final_or_load(model.name, "load", load_ns, started, **extra)


async def _stream(
    request: Request, model: ModelRequest, job: GenerateJob, shape: str, started: int
) -> AsyncIterator[dict[str, Any]]:
    """Engine events as Ollama chunks: text and thinking as they come, each tool call
    once complete, then the final chunk with the timings."""
    metrics = request.app.state.metrics
    first_token = True
    pending: list[dict[str, Any]] = []  # log-probabilities of tokens not yet shown

    def with_logprobs(body: dict[str, Any]) -> dict[str, Any]:
        if job.logprobs:
            body["logprobs"] = pending.copy()
            pending.clear()
        return body

    async for event in scheduler(request).generate(model, job):
        if isinstance(event, LogprobsEvent):
            pending.extend(event.entries)
            continue
        if isinstance(event, DoneEvent):
            metrics.record_done(event)
            body = _chunk(model.name, shape, "")
            body.update(final_fields(event, time.perf_counter_ns() - started))
            if event.context is not None:
                body["context"] = event.context
            yield with_logprobs(body)
            continue
        if first_token:
            metrics.ttft.observe((time.perf_counter_ns() - started) / 1e9)
            first_token = False
        if isinstance(event, TextEvent):
            yield with_logprobs(_chunk(model.name, shape, event.text))
        elif isinstance(event, ThinkingEvent):
            yield with_logprobs(_chunk(model.name, shape, "", thinking=event.text))
        elif isinstance(event, ToolCallEvent):
            yield with_logprobs(_chunk(model.name, shape, "", calls=[event]))


def _chunk(
    name: str,
    shape: str,
    text: str,
    *,
    thinking: str | None = None,
    calls: list[ToolCallEvent] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"model": name, "created_at": timestamp()}
    if shape == "chat":
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if thinking:
            message["thinking"] = thinking
        if calls:
            message["tool_calls"] = [_tool_call(c) for c in calls]
        body["message"] = message
    else:
        body["response"] = text
        if thinking:
            body["thinking"] = thinking
    body["done"] = False
    return body


def _tool_call(call: ToolCallEvent) -> dict[str, Any]:
    return {"function": {"index": call.index, "name": call.name, "arguments": call.arguments}}


async def _respond(
    request: Request, chunks: AsyncIterator[dict[str, Any]], stream: bool, shape: str
) -> Response:
    if stream:
        _, rest = await first_then_rest(chunks)
        return ndjson(rest, request.url.path)
    text: list[str] = []
    thinking: list[str] = []
    calls: list[dict[str, Any]] = []
    logprobs: list[dict[str, Any]] = []
    final: dict[str, Any] = {}
    async for chunk in chunks:
        logprobs.extend(chunk.get("logprobs") or ())
        if chunk["done"]:
            final = chunk
            continue
        part = chunk["message"] if shape == "chat" else chunk
        text.append(part["content"] if shape == "chat" else part["response"])
        thinking.append(part.get("thinking", ""))
        calls.extend(part.get("tool_calls", ()))
    if shape == "chat":
        message: dict[str, Any] = {"role": "assistant", "content": "".join(text)}
        if any(thinking):
            message["thinking"] = "".join(thinking)
        if calls:
            message["tool_calls"] = calls
        final["message"] = message
    else:
        final["response"] = "".join(text)
        if any(thinking):
            final["thinking"] = "".join(thinking)
    if "logprobs" in final:
        final["logprobs"] = logprobs
    return JSONResponse(final)


@router.post("/api/generate", response_model=None, responses=STREAMED)
async def generate(body: GenerateRequest, request: Request) -> Response:
    started = time.perf_counter_ns()
    model, sampling = model_request(request, body.model, body.options, body.keep_alive_seconds())
    if not body.prompt and not body.suffix and not body.images:
        return JSONResponse(await _load_only(request, model, started, response=""))
    job = body.to_job(sampling)
    job = with_model_settings(request, body.model, job)
    await check_capabilities(request, body.model, job)
    return await _respond(
        request, _stream(request, model, job, "generate", started), body.stream, "generate"
    )


@router.post("/api/chat", response_model=None, responses=STREAMED)
async def chat(body: ChatRequest, request: Request) -> Response:
    started = time.perf_counter_ns()
    model, sampling = model_request(request, body.model, body.options, body.keep_alive_seconds())
    if not body.messages:
        return JSONResponse(
            await _load_only(request, model, started, message={"role": "assistant", "content": ""})
        )
    job = body.to_job(sampling)
    job = with_model_settings(request, body.model, job)
    await check_capabilities(request, body.model, job)
    return await _respond(
        request, _stream(request, model, job, "chat", started), body.stream, "chat"
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
        _, load_ns = await scheduler(request).load(model)
        return {
            "model": body.model,
            "embeddings": [],
            "total_duration": time.perf_counter_ns() - started,
            "load_duration": load_ns,
            "prompt_eval_count": 0,
        }
    result = await scheduler(request).embed(model, inputs, truncate=body.truncate)
    vectors = result.embeddings
    if body.dimensions is not None:
        vectors = [shorten(v, body.dimensions) for v in vectors]
    return {
        "model": body.model,
        "embeddings": vectors,
        "total_duration": time.perf_counter_ns() - started,
        "load_duration": result.load_duration,
        "prompt_eval_count": result.prompt_eval_count,
    }


@router.post("/api/embeddings")
async def embeddings(body: EmbeddingsRequest, request: Request) -> dict[str, Any]:
    model, _ = model_request(request, body.model, body.options, body.keep_alive_seconds())
    if not body.prompt:
        await scheduler(request).load(model)
        return {"embedding": []}
    result = await scheduler(request).embed(model, [body.prompt], truncate=True)
    return {"embedding": result.embeddings[0]}
