"""The typed client's wire rules, in-process (httpx.MockTransport): what the daemon cannot
be made to do on demand (a 503, an error line in the middle of a stream, a server-sent
event stream). tests/e2e/test_client.py checks the same calls against a real daemon."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from localserve.client import AsyncClient, ChatResponse, Client, GenerateResponse, Message
from localserve.client.types import parse_timestamp
from localserve.client.wire import iter_sse
from localserve.errors import (
    DaemonNotRunningError,
    EngineError,
    HubError,
    InvalidOptionError,
    LocalserveError,
    ModelNotFoundError,
    ServerBusyError,
)
from tests.support.daemon import Daemon, free_port

FINAL = {
    "model": "m",
    "created_at": "2025-01-01T00:00:00.123456789Z",
    "message": {"role": "assistant", "content": ""},
    "done": True,
    "done_reason": "stop",
    "total_duration": 5_000_000,
    "load_duration": 1_000_000,
    "prompt_eval_count": 7,
    "prompt_eval_duration": 2_000_000,
    "eval_count": 2,
    "eval_duration": 3_000_000,
}


def ndjson(*objects: dict[str, Any]) -> bytes:
    return b"".join(json.dumps(o).encode() + b"\n" for o in objects)


def piece(text: str) -> dict[str, Any]:
    return {"model": "m", "message": {"role": "assistant", "content": text}, "done": False}


def mock(handler: Any) -> Client:
    return Client("127.0.0.1:1", transport=httpx.MockTransport(handler))


def test_chat_stream_is_typed_chunks() -> None:
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return httpx.Response(200, content=ndjson(piece("Hel"), piece("lo"), FINAL))

    with mock(handler) as client:
        chunks = list(
            client.chat(
                "m",
                [Message("user", "hi"), {"role": "assistant", "content": "x"}],
                options={"temperature": 0},
                format="json",
                keep_alive="5m",
                stream=True,
            )
        )
    assert seen == [
        {
            "model": "m",
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "x"},
            ],
            "stream": True,
            "format": "json",
            "options": {"temperature": 0},
            "keep_alive": "5m",
        }
    ]
    assert all(isinstance(c, ChatResponse) for c in chunks)
    assert "".join(c.message.content for c in chunks) == "Hello"
    final = chunks[-1]
    assert final.done and final.done_reason == "stop"
    assert (final.eval_count, final.eval_duration, final.prompt_eval_count) == (2, 3_000_000, 7)
    assert not chunks[0].done and chunks[0].eval_count is None


def test_not_streaming_is_one_typed_answer() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert json.loads(request.content)["stream"] is False
        return httpx.Response(200, json={**FINAL, "response": "ok", "context": [1, 2]})

    with mock(handler) as client:
        answer = client.generate("m", "hi", system="be brief", options={"seed": 1})
    assert isinstance(answer, GenerateResponse)
    assert answer.response == "ok" and answer.context == [1, 2] and answer.done


def test_error_line_in_a_stream_raises() -> None:
    body = ndjson(piece("partial"), {"error": "the runner died"})
    with mock(lambda _: httpx.Response(200, content=body)) as client:
        stream = client.chat("m", [Message("user", "hi")], stream=True)
        assert next(stream).message.content == "partial"
        with pytest.raises(EngineError, match="the runner died"):
            next(stream)
        pull_body = ndjson({"status": "pulling manifest"}, {"error": "cannot reach the Hub"})
    with mock(lambda _: httpx.Response(200, content=pull_body)) as client:
        progress = client.pull("hf.co/a/b", stream=True)
        assert next(progress).status == "pulling manifest"
        with pytest.raises(HubError, match="cannot reach the Hub"):
            next(progress)


@pytest.mark.parametrize(
    ("status", "body", "kind", "text"),
    [
        (404, {"error": 'model "m" not found, try pulling it first'}, ModelNotFoundError, "'m'"),
        (400, {"error": "unknown option 'x'"}, InvalidOptionError, "unknown option"),
        (503, {"error": "server busy, please try again"}, ServerBusyError, "busy"),
        (500, {"error": "llama.cpp failed"}, EngineError, "llama.cpp failed"),
        (500, {"error": {"message": "openai shaped", "type": "api_error"}}, EngineError, "openai"),
        (418, "I'm a teapot\n", LocalserveError, "teapot"),
    ],
)
def test_error_statuses_map_to_exceptions(
    status: int, body: Any, kind: type[Exception], text: str
) -> None:
    def handler(_: httpx.Request) -> httpx.Response:
        if isinstance(body, str):
            return httpx.Response(status, text=body)
        return httpx.Response(status, json=body)

    with mock(handler) as client:
        with pytest.raises(kind, match=text):
            client.show("m")
        with pytest.raises(kind, match=text):
            list(client.chat("m", [Message("user", "hi")], stream=True))


def test_a_refused_connection_says_how_to_start_the_daemon() -> None:
    port = free_port()  # nothing listens here
    with Client(f"127.0.0.1:{port}") as client:
        assert client.ping() is False
        with pytest.raises(DaemonNotRunningError) as caught:
            client.version()
        with pytest.raises(DaemonNotRunningError):
            list(client.chat("m", [Message("user", "hi")], stream=True))
    assert str(caught.value) == "localserve is not running: start it with `localserve serve`"
    assert f"127.0.0.1:{port}" in (caught.value.hint or "")
    assert isinstance(caught.value, ConnectionError)

    async def run() -> None:
        async with AsyncClient(f"127.0.0.1:{port}") as client:
            with pytest.raises(DaemonNotRunningError):
                await client.ps()

    asyncio.run(run())


def test_host_and_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCALSERVE_HOST", "0.0.0.0:9999")
    monkeypatch.setenv("LOCALSERVE_API_KEY", "secret")
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"version": "9.9.9"})

    client = Client(transport=httpx.MockTransport(handler))
    assert client.base_url == "http://127.0.0.1:9999"  # every-address bind: ask loopback
    assert client.version() == "9.9.9"
    assert seen[0].headers["Authorization"] == "Bearer secret"
    assert Client("http://[::1]:1234").base_url == "http://[::1]:1234"
    assert Client("example.org").base_url == "http://example.org:11435"


class _Body(httpx.SyncByteStream):
    """An endless stream body that records when it is closed."""

    def __init__(self) -> None:
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        while True:
            yield ndjson(piece("x"))

    def close(self) -> None:
        self.closed = True


def test_closing_a_stream_closes_the_response() -> None:
    body = _Body()
    with mock(lambda _: httpx.Response(200, stream=body)) as client:
        stream = client.chat("m", [Message("user", "hi")], stream=True)
        assert next(stream).message.content == "x"
        stream.close()  # what Ctrl+C does in `localserve run`
        assert body.closed  # the daemon sees the disconnect and cancels the generation
        stream = client.chat("m", [Message("user", "hi")], stream=True)
        for _ in stream:
            break
        stream.close()


def test_sse_decoding() -> None:
    lines = [
        ": a comment",
        'data: {"choices": [{"delta": {"content": "Hi"}}]}',
        "",
        "event: message",
        'data: {"choices": [{"delta":',
        'data:  {"content": "!"}}]}',
        "",
        "data: [DONE]",
        "",
        'data: {"never": "reached"}',
        "",
    ]
    chunks = list(iter_sse(lines))
    assert [c["choices"][0]["delta"]["content"] for c in chunks] == ["Hi", "!"]
    with pytest.raises(EngineError, match="overloaded"):
        list(iter_sse(['data: {"error": {"message": "overloaded"}}', ""]))


def test_typed_views_tolerate_missing_and_extra_fields() -> None:
    from localserve.client.types import RunningModel, ShowResponse

    running = RunningModel.from_wire(
        {
            "name": "m:latest",
            "digest": "ab" * 32,
            "size": 100,
            "size_vram": 40,
            "expires_at": "9999-12-31T23:59:59.000000000Z",
            "something_new": {"x": 1},
        }
    )
    assert running.forever and running.short_id == "ab" * 6 and running.context_length is None
    shown = ShowResponse.from_wire(
        {"model_info": {"general.architecture": "llama", "llama.context_length": 2048}}
    )
    assert shown.info("context_length") == 2048 and shown.template == ""
    stamp = parse_timestamp("2025-01-01T00:00:00.123456789Z")
    assert stamp is not None and stamp.microsecond == 123456 and stamp.utcoffset() is not None
    assert parse_timestamp("garbage") is None


def test_async_client_streams_typed_chunks() -> None:
    def handler(_: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=ndjson(piece("a"), piece("b"), FINAL))

    async def run() -> list[ChatResponse]:
        async with AsyncClient("127.0.0.1:1", transport=httpx.MockTransport(handler)) as client:
            stream = await client.chat("m", [Message("user", "hi")], stream=True)
            return [chunk async for chunk in stream]

    chunks = asyncio.run(run())
    assert "".join(c.message.content for c in chunks) == "ab" and chunks[-1].done


@pytest.fixture(scope="module")
def client(daemon: Daemon) -> Iterator[Client]:
    with Client(daemon.url) as c:
        yield c
