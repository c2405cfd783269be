"""What the Ollama and OpenAI routes share: the app's scheduler and store, the
model and options a request asks for, the capability checks made before a model
loads, and the answer a non-streamed response collects from engine events."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from typing import Any

from fastapi import Request

from localserve.errors import InvalidOptionError, LocalserveError
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
from localserve.scheduler.scheduler import ModelRequest, Scheduler
from localserve.schemas.media import check_count, media_kinds
from localserve.schemas.options import split_options
from localserve.server.models import capabilities, chat_format, gguf_info, model_config
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
        num_ctx=settings.context_length,
        num_parallel=settings.num_parallel,
        kv_cache_type=settings.kv_cache_type,
        flash_attention=settings.flash_attention,
        speculative=settings.speculative,
        draft_p_min=settings.draft_p_min,
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
    """Refuse, before anything loads, what the model's template cannot do (as Ollama:
    ``MODEL does not support tools``), and media the model cannot read."""
    media = job.media_count()
    if media:
        check_count(media, request.app.state.settings.max_images)
    if not job.tools and not job.think and job.suffix is None and not media:
        return
    _, manifest = await asyncio.to_thread(store(request).get, name)
    if media:
        can = await asyncio.to_thread(capabilities, request.app, manifest)
        kinds = media_kinds(job)
        if "image" in kinds and "vision" not in can:
            raise InvalidOptionError(f"{name} does not support images")
        if "audio" in kinds and "audio" not in can:
            raise InvalidOptionError(f"{name} does not support audio")
    if job.suffix is not None:
        info = await asyncio.to_thread(gguf_info, request.app, manifest)
        if not info.fill_in_the_middle:
            raise InvalidOptionError(f"{name} does not support insert")
    found = await asyncio.to_thread(chat_format, request.app, manifest)
    if job.tools and job.tool_choice != "none" and found.tools is None:
        raise InvalidOptionError(f"{name} does not support tools")
    if job.think and not found.thinks:
        raise InvalidOptionError(f"{name} does not support thinking")


@dataclass
class Answer:
    """A whole answer gathered from engine events (for responses that do not stream)."""

    text: list[str] = field(default_factory=list)
    thinking: list[str] = field(default_factory=list)
    calls: list[ToolCallEvent] = field(default_factory=list)
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    done: DoneEvent | None = None

    def add(self, event: Event) -> None:
        if isinstance(event, LogprobsEvent):
            self.logprobs.extend(event.entries)
        elif isinstance(event, TextEvent):
            self.text.append(event.text)
        elif isinstance(event, ThinkingEvent):
            self.thinking.append(event.text)
        elif isinstance(event, ToolCallEvent):
            self.calls.append(event)
        elif isinstance(event, DoneEvent):
            self.done = event

    @property
    def content(self) -> str:
        return "".join(self.text)

    @property
    def reasoning(self) -> str:
        return "".join(self.thinking)


def shorten(vector: list[float], dimensions: int) -> list[float]:
    """Matryoshka-style truncation, renormalised (what Ollama does for ``dimensions``)."""
    head = vector[:dimensions]
    norm = sum(x * x for x in head) ** 0.5
    return [x / norm for x in head] if norm > 0 else head
