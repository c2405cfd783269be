"""The daemon's ASGI app, built by a factory: no module globals, services on ``app.state``.

app.state.settings   the Settings it was made with
app.state.store      the ModelStore
app.state.scheduler  the Scheduler (all load/unload/queue rules)
app.state.metrics    the Prometheus collectors (metrics.py)
app.state.details    GGUF facts per blob digest, read once (for /api/tags and /api/show)
app.state.formats    what each blob's chat template can do (tools, thinking), found once
app.state.projectors multimodal projector facts per blob digest, read once (vision, audio)
app.state.responses  the kept responses of /v1/responses (store/responses.py)
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI

from localserve import __version__
from localserve.config import Settings, load_settings
from localserve.runtime.options import LoadOptions
from localserve.scheduler.scheduler import RunnerFactory, Scheduler, start_runner
from localserve.server import errors, security
from localserve.server.metrics import Metrics
from localserve.server.routes import anthropic as anthropic_routes
from localserve.server.routes import audio as audio_routes
from localserve.server.routes import create as create_routes
from localserve.server.routes import native, ops, web
from localserve.server.routes import openai as openai_routes
from localserve.server.routes import rerank as rerank_routes
from localserve.server.routes import responses as responses_routes
from localserve.server.routes import tokens as tokens_routes
from localserve.store.responses import ResponseStore
from localserve.store.store import ModelStore


def create_app(
    settings: Settings | None = None,
    *,
    store: ModelStore | None = None,
    runner_factory: RunnerFactory = start_runner,
) -> FastAPI:
    settings = settings or load_settings()
    store = store or ModelStore(settings.models_dir)
    scheduler = Scheduler(
        store,
        default_options=LoadOptions(
            num_ctx=settings.context_length or 0,  # 0: the planner's choice at load
            num_parallel=settings.num_parallel,
            kv_cache_type=settings.kv_cache_type,
            flash_attention=settings.flash_attention,
            swa_full=settings.swa_full,
            cache_reuse=settings.cache_reuse,
        ),
        keep_alive=settings.keep_alive_seconds,
        max_loaded=settings.max_loaded_models,
        max_queue=settings.max_queue,
        runner_factory=runner_factory,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await scheduler.start()
        try:
            yield
        finally:
            await scheduler.close()

    app = FastAPI(
        title="localserve",
        version=__version__,
        summary="Ollama-, OpenAI- and Anthropic-compatible API for local GGUF models",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.store = store
    app.state.scheduler = scheduler
    app.state.metrics = Metrics(scheduler)
    app.state.details = {}
    app.state.formats = {}
    app.state.projectors = {}
    app.state.configs = {}  # created models' settings, by their layers' digests
    app.state.responses = ResponseStore(
        settings.state_dir / "responses",
        max_count=settings.responses_max_count,
        max_bytes=settings.responses_max_bytes,
    )
    errors.install(app)
    security.install(app, settings)
    app.include_router(ops.router)
    app.include_router(native.router)
    app.include_router(create_routes.router)
    app.include_router(openai_routes.router)
    app.include_router(responses_routes.router)
    app.include_router(rerank_routes.router)
    app.include_router(anthropic_routes.router)
    app.include_router(tokens_routes.router)
    app.include_router(audio_routes.router)
    app.include_router(web.router)
    return app
