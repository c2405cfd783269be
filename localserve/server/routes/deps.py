"""What the API routes share: the app's scheduler and store, the model and options a
request asks for, the capability checks made before a model loads, and the run of a
job: its engine events (timed for the metrics), streamed through the API's shape or
gathered into whole answers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any, TypeVar

from fastapi import Request

from localserve.errors import InvalidOptionError, LocalserveError
from localserve.runtime.options import SamplingOptions
from localserve.runtime.protocol import DoneEvent, Event, GenerateJob, LogprobsEvent, ProgressEvent
from localserve.scheduler.scheduler import ModelRequest, Scheduler
from localserve.schemas.answer import Answer, Shape
from localserve.schemas.base import Response
from localserve.schemas.media import check_count, media_kinds
from localserve.schemas.options import split_options
from localserve.server.models import capabilities, model_config
from localserve.store.create import ModelConfig
from localserve.store.store import ModelStore


def scheduler(request: Request) -> Scheduler:
    found: Scheduler = request.app.state.scheduler
    return found


def store(request: Request) -> ModelStore:
    found: ModelStore = request.app.state.store
    return found


def model_request(
    request: Request,
    name: str,
    options: dict[str, Any] | None,
    keep_alive: float | None,
    overrides: dict[str, Any] | None = None,
) -> tuple[ModelRequest, SamplingOptions]:
    """The model to run on (with its load options) and the sampling options: the
    request's options over the model's parameters (a created model's PARAMETER lines)
    over the daemon's defaults."""
    settings = request.app.state.settings
    defaults = settings_of(request, name).parameters
    if defaults and isinstance(options, dict | None):
        options = {**defaults, **(options or {})}
    split = split_options(
        options,
        num_ctx=settings.context_length or 0,
        num_parallel=settings.num_parallel,
        kv_cache_type=settings.kv_cache_type,
        flash_attention=settings.flash_attention,
        speculative=settings.speculative,
        draft_p_min=settings.draft_p_min,
        swa_full=settings.swa_full,
        cache_reuse=settings.cache_reuse,
        overrides=overrides,
    )
    return ModelRequest(name, split.load, keep_alive), split.sampling


def settings_of(request: Request, name: str) -> ModelConfig:
    """A model's Modelfile settings; none for an unknown name (the load reports it)."""
    try:
        _, manifest = store(request).get(name)
    except LocalserveError:
        return ModelConfig()
    return model_config(request.app, manifest)


def with_model_settings(request: Request, name: str, job: GenerateJob) -> GenerateJob:
    """The model's system prompt where the request has none, and its example messages
    before the conversation, as Ollama applies a Modelfile's SYSTEM and MESSAGE."""
    config = settings_of(request, name)
    if not config.system and not config.messages:
        return job
    if job.messages is None:
        if job.system is None and config.system and not job.raw:
            return replace(job, system=config.system)
        return job
    messages = list(job.messages)
    lead = 0
    while lead < len(messages) and messages[lead].get("role") == "system":
        lead += 1
    if lead == 0 and config.system:
        messages.insert(0, {"role": "system", "content": config.system})
        lead = 1
    messages[lead:lead] = [dict(m) for m in config.messages]
    return replace(job, messages=messages)


async def check_capabilities(request: Request, name: str, job: GenerateJob) -> None:
    """Refuse, before anything loads, what the model cannot do, from its capabilities (as
    Ollama: ``MODEL does not support tools``): generating at all (a reranker), media it
    cannot read, fill-in-the-middle, tools, thinking."""
    media = job.media_count()
    if media:
        check_count(media, request.app.state.settings.max_images)

    def model_capabilities() -> list[str]:
        _, manifest = store(request).get(name)
        return capabilities(request.app, manifest)  # read once per model, then cached

    can = await asyncio.to_thread(model_capabilities)
    if "completion" not in can:
        raise InvalidOptionError(f"{name} does not support generate")
    kinds = media_kinds(job) if media else set()
    if "image" in kinds and "vision" not in can:
        raise InvalidOptionError(f"{name} does not support images")
    if "audio" in kinds and "audio" not in can:
        raise InvalidOptionError(f"{name} does not support audio")
    if job.suffix is not None and "insert" not in can:
        raise InvalidOptionError(f"{name} does not support insert")
    if job.tools and job.tool_choice != "none" and "tools" not in can:
        raise InvalidOptionError(f"{name} does not support tools")
    if job.think and "thinking" not in can:
        raise InvalidOptionError(f"{name} does not support thinking")


async def prepared(request: Request, name: str, job: GenerateJob) -> GenerateJob:
    """The job with the model's Modelfile settings, once the model is known to be
    able to do what it asks."""
    job = with_model_settings(request, name, job)
    await check_capabilities(request, name, job)
    return job


async def run_job(
    request: Request, model: ModelRequest, job: GenerateJob, started: int
) -> AsyncIterator[Event]:
    """The job's engine events from the scheduler, timed for the metrics: time to the
    first thing shown (from ``started``, a perf_counter_ns()), and the done events."""
    metrics = request.app.state.metrics
    first = True
    async for event in scheduler(request).generate(model, job):
        if isinstance(event, DoneEvent):
            metrics.record_done(event)
        elif first and not isinstance(event, LogprobsEvent | ProgressEvent):
            metrics.ttft.observe((time.perf_counter_ns() - started) / 1e9)
            first = False
        yield event


R = TypeVar("R", bound=Response)


async def shaped(shape: Shape[R, Response], events: AsyncIterator[Event]) -> AsyncIterator[R]:
    """A stream's objects: the shape's head, its chunks of each event, its tail."""
    for chunk in shape.head():
        yield chunk
    async for event in events:
        for chunk in shape.chunks(event):
            yield chunk
    for chunk in shape.tail():
        yield chunk


async def answers(events: AsyncIterator[Event], n: int) -> list[Answer]:
    """The ``n`` whole answers of a request that does not stream."""
    gathered = [Answer() for _ in range(n)]
    async for event in events:
        gathered[event.choice].add(event)
    return gathered


def shorten(vector: list[float], dimensions: int) -> list[float]:
    """Matryoshka-style truncation, renormalised (what Ollama does for ``dimensions``)."""
    head = vector[:dimensions]
    norm = sum(x * x for x in head) ** 0.5
    return [x / norm for x in head] if norm > 0 else head
