"""OpenAI's Responses API under /v1: create a response (whole, or streamed as typed
events), and the kept responses (``store``) a later one continues with
``previous_response_id``, read with GET and removed with DELETE.

Thin like the other routes: the request and its items as chat messages are in
schemas/responses.py, the response and its events in schemas/response_objects.py, the
kept responses on disk in store/responses.py (app.state.responses).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response

from localserve.errors import LocalserveError
from localserve.runtime.protocol import Event, GenerateJob
from localserve.schemas.base import keep_alive_seconds
from localserve.schemas.response_objects import (
    InputItemList,
    ResponseDeleted,
    ResponseObject,
    ResponsesShape,
    StreamEvent,
)
from localserve.schemas.responses import ResponseRequest
from localserve.server.errors import OPENAI_ERRORS, message_of
from localserve.server.models import chat_format
from localserve.server.routes.deps import answers, model_request, prepared, run_job, store
from localserve.server.routes.openai import streamed
from localserve.server.streaming import RESPONSES_SSE, hold, sse
from localserve.store.responses import KeptResponse, ResponseStore

log = logging.getLogger("localserve.server")

router = APIRouter(prefix="/v1", responses=OPENAI_ERRORS)


def kept(request: Request) -> ResponseStore:
    found: ResponseStore = request.app.state.responses
    return found


@router.post("/responses", response_model=None, responses=streamed(ResponseObject))
async def create_response(body: ResponseRequest, request: Request) -> Response:
    context: list[dict[str, Any]] = []
    if body.previous_response_id is not None:
        previous = await asyncio.to_thread(kept(request).get, body.previous_response_id)
        context = previous.conversation()
    items = body.input_items()
    tools = body.tool_set()
    model_req, sampling = model_request(
        request,
        body.model,
        body.options,
        keep_alive_seconds(body.keep_alive),
        body.overrides(),
    )
    job = body.to_job(sampling, context + items, tools)
    job = await prepared(request, body.model, await _effort_where_it_thinks(request, body, job))
    shape = ResponsesShape(body, tools)
    events = run_job(request, model_req, job, time.perf_counter_ns())

    def keep(response: ResponseObject) -> KeptResponse | None:
        return KeptResponse(response.model_dump(), context, items) if body.store else None

    if not body.stream:
        whole = shape.whole(await answers(events, 1))
        record = keep(whole)
        if record is not None:
            await asyncio.to_thread(kept(request).put, whole.id, record)
        return JSONResponse(whole.model_dump())
    # As the chat completions stream: the status waits for the runner to take the job,
    # so errors found before it get a real one; pings keep an idle client.
    ping = request.app.state.settings.stream_ping_seconds
    held = await hold(events, ping)
    return sse(
        _stream(request, shape, held, keep), request.url.path, ping=ping, dialect=RESPONSES_SSE
    )


async def _effort_where_it_thinks(
    request: Request, body: ResponseRequest, job: GenerateJob
) -> GenerateJob:
    """``reasoning.effort`` to a model whose template does not think changes nothing,
    so it is dropped rather than refused (clients such as Codex send it to any model)."""
    if not job.think:
        return job
    try:
        _, manifest = await asyncio.to_thread(store(request).get, body.model)
        thinks = (await asyncio.to_thread(chat_format, request.app, manifest)).thinks
    except LocalserveError:
        return job  # an unknown model: the load says so
    return job if thinks else replace(job, think=None)


async def _stream(
    request: Request,
    shape: ResponsesShape,
    events: AsyncIterator[Event],
    keep: Callable[[ResponseObject], KeptResponse | None],
) -> AsyncIterator[StreamEvent]:
    """The events of a streamed response; a failure after the start ends it with an
    error event and response.failed; a finished response is kept (``store``)."""
    try:
        for event in shape.head():
            yield event
        async for engine_event in events:
            for event in shape.chunks(engine_event):
                yield event
        tail = shape.tail()
    except Exception as exc:
        log.warning("stream on %s ended with an error: %s", request.url.path, exc)
        for event in shape.failed(message_of(exc)):
            yield event
        return
    assert shape.final is not None
    record = keep(shape.final)
    if record is not None:
        # Kept before the last event goes out: a client that continues at once finds it.
        await asyncio.to_thread(kept(request).put, shape.final.id, record)
    for event in tail:
        yield event


@router.get("/responses/{response_id}", response_model=ResponseObject)
async def get_response(response_id: str, request: Request) -> JSONResponse:
    found = await asyncio.to_thread(kept(request).get, response_id)
    return JSONResponse(found.response)


@router.get("/responses/{response_id}/input_items", response_model=InputItemList)
async def input_items(
    response_id: str,
    request: Request,
    limit: int = Query(default=20, ge=1, le=100),
    order: Literal["asc", "desc"] = "desc",
    after: str | None = None,
) -> InputItemList:
    """The items the response was made from: the earlier turns' (with
    ``previous_response_id``) and its own input, newest first unless ``order=asc``;
    pages of ``limit`` after the item ``after``."""
    found = await asyncio.to_thread(kept(request).get, response_id)
    items = [*found.context, *found.input]
    if order == "desc":
        items.reverse()
    if after is not None:
        ids = [item.get("id") for item in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    page = items[:limit]
    return InputItemList(
        data=page,
        first_id=page[0].get("id") if page else None,
        last_id=page[-1].get("id") if page else None,
        has_more=len(items) > limit,
    )


@router.delete("/responses/{response_id}", response_model=ResponseDeleted)
async def delete_response(response_id: str, request: Request) -> ResponseDeleted:
    await asyncio.to_thread(kept(request).delete, response_id)
    return ResponseDeleted(id=response_id)
