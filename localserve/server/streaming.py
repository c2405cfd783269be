"""Streaming responses: NDJSON (Ollama) and server-sent events (OpenAI, Anthropic), of
the schemas' response models (and plain dicts: the error lines).

Each API frames its SSE its own way (:class:`SSEDialect`): OpenAI sends bare ``data:``
events, ``: ping`` comments and a last ``data: [DONE]``; Anthropic names every event
after its object's ``type`` (``event: message_start``...), pings with a ``ping`` event
and has no end marker.

The status line goes out with the first chunk, so an error after that can only be
reported in the stream: as a last ``{"error": ...}`` line (NDJSON) or a last event with
the API's error body (SSE: OpenAI's ``data: {"error": {...}}``, Anthropic's ``event:
error``). A client that disconnects closes the iterator, which cancels its request in
the runner.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import AsyncIterator, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi.responses import StreamingResponse

from localserve.schemas.base import Response
from localserve.server.errors import body_of

log = logging.getLogger("localserve.server")
T = TypeVar("T")
Chunk = Response | dict[str, Any]
_DONE = object()


async def iterate_in_thread(generator: Generator[T]) -> AsyncIterator[T]:
    """Run a blocking generator (a pull) in its own thread and stream its items.

    When the consumer stops early (the client went away), the thread closes the
    generator itself after its current item, so its cleanup (saving a partial
    download's state) runs in the thread that was iterating it.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()
    stop = threading.Event()

    def post(item: Any) -> None:
        # The loop may have closed (the consumer raised and left): nobody listens then.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(queue.put_nowait, item)

    def pump() -> None:
        try:
            for item in generator:
                post(item)
                if stop.is_set():
                    break
        except BaseException as exc:
            post(exc)
        finally:
            generator.close()
            post(_DONE)

    thread = threading.Thread(target=pump, name="localserve-pull", daemon=True)
    thread.start()
    try:
        while True:
            item = await queue.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


# JSON may leave these raw inside strings, but Python's str.splitlines, and with it
# httpx's iter_lines (the ollama package's client and ours), breaks lines at them.
_SPLITLINES_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def _data(obj: Chunk) -> dict[str, Any]:
    """A model as a dict (model_dump's serializer, without its Python wrapper: this is
    the streams' hot path), for json.dumps."""
    data: dict[str, Any] = (
        obj.__pydantic_serializer__.to_python(obj) if isinstance(obj, Response) else obj
    )
    return data


def _json(obj: Chunk) -> bytes:
    """Compact JSON on one line for every line reader (generated text can hold anything).

    json.dumps of the dict, not pydantic's own JSON, which writes some floats differently
    (``1e-5`` for ``1e-05``, NaN as null): the bytes are the ones the dicts before the
    models made."""
    text = json.dumps(_data(obj), separators=(",", ":"), ensure_ascii=False)
    return text.translate(_SPLITLINES_BREAKS).encode()


def _line(obj: Chunk) -> bytes:
    return _json(obj) + b"\n"


async def _ndjson(chunks: AsyncIterator[Chunk], path: str) -> AsyncIterator[bytes]:
    try:
        async for chunk in chunks:
            yield _line(chunk)
    except Exception as exc:
        log.warning("stream on %s ended with an error: %s", path, exc)
        yield _line(body_of(path, exc)[1])


def ndjson(chunks: AsyncIterator[Chunk], path: str) -> StreamingResponse:
    return StreamingResponse(_ndjson(chunks, path), media_type="application/x-ndjson")


@dataclass(frozen=True)
class SSEDialect:
    """How one API frames its server-sent events."""

    named: bool  # an ``event:`` line before each ``data:``, naming the object's ``type``
    ping: bytes  # what an idle stream sends to show it is alive
    end: bytes  # what ends a stream (b"": nothing)

    def frame(self, data: bytes, name: object) -> bytes:
        head = f"event: {name}\n".encode() if self.named and isinstance(name, str) else b""
        return head + b"data: " + data + b"\n\n"


# OpenAI's: an idle stream sends a comment line, which every SSE parser skips (the
# openai package's included), as llama-server does.
OPENAI_SSE = SSEDialect(named=False, ping=b": ping\n\n", end=b"data: [DONE]\n\n")
# Anthropic's: every event named, a ping event (the anthropic package skips it, and
# needs the names: it drops an event without one), no end marker after message_stop.
ANTHROPIC_SSE = SSEDialect(named=True, ping=b'event: ping\ndata: {"type": "ping"}\n\n', end=b"")
# The Responses API's: every event named, no end marker (the last event says how the
# response ended), and OpenAI's comment line for a ping.
RESPONSES_SSE = SSEDialect(named=True, ping=b": ping\n\n", end=b"")


async def _sse(
    chunks: AsyncIterator[Chunk], path: str, ping: float | None, dialect: SSEDialect
) -> AsyncIterator[bytes]:
    try:
        async for chunk in _with_pings(chunks, ping):
            if chunk is None:
                yield dialect.ping
            else:
                data = _data(chunk)
                yield dialect.frame(_json(data), data.get("type"))
    except Exception as exc:
        log.warning("stream on %s ended with an error: %s", path, exc)
        body = body_of(path, exc)[1]
        yield dialect.frame(json.dumps(body).encode(), body.get("type", "error"))
    if dialect.end:
        yield dialect.end


def sse(
    chunks: AsyncIterator[Chunk],
    path: str,
    *,
    ping: float | None = None,
    dialect: SSEDialect = OPENAI_SSE,
) -> StreamingResponse:
    """Server-sent events of ``chunks`` in ``dialect``, and its ping whenever none came
    for ``ping`` seconds (None: never)."""
    return StreamingResponse(
        _sse(chunks, path, ping, dialect),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache"},
    )


async def _with_pings(items: AsyncIterator[T], every: float | None) -> AsyncIterator[T | None]:
    """``items``, with None in between whenever none came for ``every`` seconds.

    asyncio has no way to wait for an async iterator's next item with a timeout that
    leaves the wait running (``wait_for`` cancels it, and a cancelled async generator
    cannot go on), so the next item is awaited in a task that a timeout leaves alone.
    """
    if every is None:
        async for item in items:
            yield item
        return
    iterator = items.__aiter__()
    pending: asyncio.Future[T] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(iterator.__anext__())
            done, _ = await asyncio.wait({pending}, timeout=every)
            if not done:
                yield None
                continue
            finished, pending = pending, None
            try:
                item = finished.result()
            except StopAsyncIteration:
                return
            yield item
    finally:
        if pending is not None:  # the client left, or an error: stop the work for it
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await pending


async def hold(items: AsyncIterator[T], seconds: float | None) -> AsyncIterator[T]:
    """Wait up to ``seconds`` (None: as long as it takes) for the first of ``items``, so
    that an error before it (a prompt too long, a bad option, a failed load) raises here
    and gets a real HTTP status; returns an iterator over every item, the first included
    whether it came in time or not. A stream whose first item takes longer (a long
    queue, a long load) starts without it, and keeps its client with pings."""
    _, everything = await hold_first(items, seconds)
    return everything


async def hold_first(
    items: AsyncIterator[T], seconds: float | None
) -> tuple[T | None, AsyncIterator[T]]:
    """``hold``, and the first item when it came in time (None when the stream starts
    without it): what a stream's opening can say (Anthropic's message_start carries the
    prompt's length, which the runner's first event knows)."""
    iterator = items.__aiter__()
    first = asyncio.ensure_future(iterator.__anext__())
    try:
        await asyncio.wait({first}, timeout=seconds)
    except BaseException:
        first.cancel()
        raise
    if first.done() and not isinstance(first.exception(), StopAsyncIteration | None):
        first.result()  # raises the error

    async def everything() -> AsyncIterator[T]:
        try:
            try:
                yield await first
            except StopAsyncIteration:
                return
            async for item in iterator:
                yield item
        finally:
            if not first.done():
                first.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await first

    came = first.done() and first.exception() is None
    return (first.result() if came else None), everything()


async def first_then_rest(
    chunks: AsyncIterator[T], count: int = 1
) -> tuple[T | None, AsyncIterator[T]]:
    """Pull the first ``count`` chunks before answering, so errors that happen before
    any output (unknown model, bad options, a failed load, a full queue) get a real
    status code; returns the first chunk and an iterator over everything."""
    iterator = chunks.__aiter__()
    held: list[T] = []
    for _ in range(count):
        try:
            held.append(await iterator.__anext__())
        except StopAsyncIteration:
            break

    async def rest() -> AsyncIterator[T]:
        for chunk in held:
            yield chunk
        async for chunk in iterator:
            yield chunk

    return (held[0] if held else None), rest()
