"""Anthropic's Messages API under /v1, over the same scheduler as the other routes.

Routes stay thin: parse the body, build the job and ask the scheduler, shape the
answer; the request and response models, and the shape that makes a message and its
stream events of engine events, are in schemas/anthropic.py. Errors take Anthropic's
shape (server/errors.py), streams its SSE framing (server/streaming.py).
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from localserve.runtime.protocol import GenerateJob
from localserve.scheduler.scheduler import ModelRequest
from localserve.schemas.anthropic import (
    CountTokensRequest,
    Message,
    MessagesFields,
    MessageShape,
    MessagesRequest,
    TokenCount,
)
from localserve.server.errors import ANTHROPIC_ERRORS
from localserve.server.routes.deps import (
    answers,
    model_request,
    prepared,
    run_job,
    scheduler,
    shaped,
)
from localserve.server.routes.openai import streamed
from localserve.server.streaming import ANTHROPIC_SSE, hold_first, sse

router = APIRouter(prefix="/v1", responses=ANTHROPIC_ERRORS)


async def _job(
    request: Request, body: MessagesFields, max_tokens: int | None, stream: bool
) -> tuple[ModelRequest, GenerateJob]:
    model, sampling = model_request(request, body.model, None, None, body.overrides(max_tokens))
    job = await prepared(request, body.model, body.to_job(sampling, stream=stream))
    return model, job


@router.post("/messages", response_model=None, responses=streamed(Message))
async def messages(body: MessagesRequest, request: Request) -> Response:
    model, job = await _job(request, body, body.max_tokens, body.stream)
    events = run_job(request, model, job, time.perf_counter_ns())
    shape = MessageShape(body)
    if not body.stream:
        return JSONResponse(shape.whole(await answers(events, 1)).model_dump())
    # As on OpenAI's routes: the status waits for the runner to take the job, so errors
    # before it (a prompt too long, an unknown model) get a real one; a long wait or a
    # long prompt gets ping events. message_start goes first either way, with the
    # prompt's length when the runner's first event came in time to tell it.
    ping = request.app.state.settings.stream_ping_seconds
    first, held = await hold_first(events, ping)
    shape.opened_by(first)
    return sse(shaped(shape, held), request.url.path, ping=ping, dialect=ANTHROPIC_SSE)


@router.post("/messages/count_tokens", response_model=TokenCount)
async def count_tokens(body: CountTokensRequest, request: Request) -> TokenCount:
    model, job = await _job(request, body, None, stream=False)
    return TokenCount(input_tokens=await scheduler(request).count_tokens(model, job))
