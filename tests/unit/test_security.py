"""The daemon's guard, in-process: host header, origins, API key, body size, error shapes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx
import pytest
from fastapi import FastAPI

from localserve.config import Settings
from localserve.server.app import create_app
from localserve.server.security import MAX_BODY

T = TypeVar("T")


def call(
    app: FastAPI, body: Callable[[httpx.AsyncClient], Awaitable[T]], host: str = "127.0.0.1:11435"
) -> T:
    async def run() -> T:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url=f"http://{host}") as client:
                return await body(client)

    return asyncio.run(run())


def make_app(**settings: Any) -> FastAPI:
    return create_app(Settings(**settings))


@pytest.mark.parametrize(
    "host", ["localhost:11435", "127.0.0.1:11435", "[::1]:11435", "127.0.0.1", "10.0.0.5:80"]
)
def test_local_host_headers_pass(host: str) -> None:
    response = call(make_app(), lambda c: c.get("/api/version"), host=host)
    assert response.status_code == 200


@pytest.mark.parametrize("host", ["evil.example:11435", "attacker.test", "localhost.evil.example"])
def test_rebinding_host_headers_are_refused(host: str) -> None:
    response = call(make_app(), lambda c: c.get("/api/tags"), host=host)
    assert response.status_code == 403
    assert response.json() == {"error": "forbidden host header"}


def test_host_check_is_off_for_a_public_bind() -> None:
    app = make_app(host="0.0.0.0:11435", api_key="k")
    response = call(
        app,
        lambda c: c.get("/api/version", headers={"Authorization": "Bearer k"}),
        host="server.lan:11435",
    )
    assert response.status_code == 200


def test_the_daemons_own_origin_may_post() -> None:
    """The chat page opened by host name on a public bind posts with its own origin."""
    app = make_app(host="0.0.0.0:11435", api_key="k")
    auth = {"Authorization": "Bearer k"}
    copy = {"source": "a", "destination": "b"}

    async def body(c: httpx.AsyncClient) -> list[int]:
        return [
            (await c.post("/api/copy", json=copy, headers={**auth, "Origin": origin})).status_code
            for origin in (
                "http://server.lan:11435",  # the page itself
                "https://SERVER.lan:11435",  # behind a TLS proxy, any case
                "http://server.lan:8080",  # another port is another origin
                "http://other.lan:11435",
                "server.lan:11435",  # not an origin
            )
        ]

    codes = call(app, body, host="server.lan:11435")
    assert codes[:2] == [404, 404]  # past the guard: no model "a" to copy
    assert codes[2:] == [403, 403, 403]
    # On a loopback bind a rebound name is refused by the Host check, Origin or not.
    rebound = call(
        make_app(),
        lambda c: c.post("/api/copy", json=copy, headers={"Origin": "http://evil.example"}),
        host="evil.example",
    )
    assert rebound.status_code == 403
    assert rebound.json() == {"error": "forbidden host header"}


def test_api_key_is_required_everywhere_but_health() -> None:
    app = make_app(api_key="s3cret")

    async def body(c: httpx.AsyncClient) -> list[int]:
        return [
            (await c.get("/health")).status_code,
            (await c.get("/")).status_code,
            (await c.get("/api/tags")).status_code,
            (await c.get("/api/tags", headers={"Authorization": "Bearer wrong"})).status_code,
            (await c.get("/api/tags", headers={"Authorization": "Bearer s3cret"})).status_code,
            (await c.get("/v1/models")).status_code,
        ]

    assert call(app, body) == [200, 200, 401, 401, 200, 401]


def test_openai_routes_get_openai_shaped_errors() -> None:
    response = call(make_app(api_key="k"), lambda c: c.get("/v1/models"))
    assert response.json()["error"]["type"] == "authentication_error"


def test_browser_origins() -> None:
    app = make_app(origins=["https://app.example"])

    async def body(c: httpx.AsyncClient) -> dict[str, Any]:
        evil = await c.post(
            "/api/copy",
            json={"source": "a", "destination": "b"},
            headers={"Origin": "https://evil.example"},
        )
        allowed = await c.post(
            "/api/copy",
            json={"source": "a", "destination": "b"},
            headers={"Origin": "https://app.example"},
        )
        local = await c.post(
            "/api/copy",
            json={"source": "a", "destination": "b"},
            headers={"Origin": "http://localhost:3000"},
        )
        preflight = await c.options(
            "/api/chat",
            headers={"Origin": "http://localhost:5173", "Access-Control-Request-Method": "POST"},
        )
        foreign_preflight = await c.options(
            "/api/chat",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
        read = await c.get("/api/tags", headers={"Origin": "https://evil.example"})
        return {
            "evil": evil.status_code,
            "allowed": allowed.status_code,
            "local": local.status_code,
            "preflight": preflight.headers.get("access-control-allow-origin"),
            "foreign": foreign_preflight.headers.get("access-control-allow-origin"),
            "read_cors": read.headers.get("access-control-allow-origin"),
        }

    result = call(app, body)
    assert result["evil"] == 403
    assert result["allowed"] == 404  # passed the guard; the model does not exist
    assert result["local"] == 404
    assert result["preflight"] == "http://localhost:5173"
    assert result["foreign"] is None
    assert result["read_cors"] is None  # the page cannot read the answer


def test_oversized_bodies_are_refused() -> None:
    big = b'{"model": "x", "prompt": "' + b"a" * (MAX_BODY + 10) + b'"}'

    async def body(c: httpx.AsyncClient) -> tuple[int, int]:
        declared = await c.post(
            "/api/generate", content=big, headers={"Content-Type": "application/json"}
        )

        async def chunks() -> Any:
            for i in range(0, len(big), 1 << 20):
                yield big[i : i + (1 << 20)]

        streamed = await c.post(
            "/api/generate", content=chunks(), headers={"Content-Type": "application/json"}
        )
        return declared.status_code, streamed.status_code

    assert call(make_app(), body) == (413, 413)


@pytest.mark.parametrize(
    ("method", "path", "payload", "status", "needle"),
    [
        ("POST", "/api/generate", b"{not json", 400, "invalid JSON"),
        ("POST", "/api/generate", b"[]", 400, ""),
        ("POST", "/api/generate", b'{"prompt": "hi"}', 400, "model"),
        ("POST", "/api/generate", b'{"model": 5}', 400, "model"),
        ("POST", "/api/chat", b'{"model": "x", "messages": "hi"}', 400, "messages"),
        (
            "POST",
            "/api/generate",
            b'{"model": "../../etc/passwd", "prompt": "x"}',
            400,
            "invalid model name",
        ),
        ("POST", "/api/generate", b'{"model": "file:///etc/passwd", "prompt": "x"}', 400, "URLs"),
        (
            "POST",
            "/api/generate",
            b'{"model": "x", "prompt": "y", "options": {"temprature": 1}}',
            400,
            "unknown option",
        ),
        (
            "POST",
            "/api/generate",
            b'{"model": "x", "prompt": "y", "options": {"temperature": NaN}}',
            400,
            "temperature",
        ),
        (
            "POST",
            "/api/generate",
            b'{"model": "x", "prompt": "y", "options": {"num_ctx": -5}}',
            400,
            "num_ctx",
        ),
        (
            "POST",
            "/api/generate",
            b'{"model": "x", "prompt": "y", "keep_alive": "soon"}',
            400,
            "duration",
        ),
        ("POST", "/api/generate", b'{"model": "nothere", "prompt": "y"}', 404, "not found"),
        ("POST", "/api/show", b'{"model": "nothere"}', 404, "not found"),
        ("DELETE", "/api/delete", b'{"model": "nothere"}', 404, "not found"),
        ("POST", "/api/copy", b'{"source": "nothere", "destination": "b"}', 404, "not found"),
        ("POST", "/api/pull", b'{"model": "llama3"}', 400, "local name"),
        ("POST", "/v1/chat/completions", b'{"model": "x", "messages": []}', 400, "messages"),
        (
            "POST",
            "/v1/chat/completions",
            b'{"model": "x", "messages": [{"role": "user", "content": "x"}], "temperature": 9}',
            400,
            "temperature",
        ),
        ("POST", "/v1/embeddings", b'{"model": "x"}', 400, "input"),
    ],
)
def test_bad_input_gets_a_4xx_with_a_json_error(
    method: str, path: str, payload: bytes, status: int, needle: str
) -> None:
    async def body(c: httpx.AsyncClient) -> httpx.Response:
        response = await c.request(
            method, path, content=payload, headers={"Content-Type": "application/json"}
        )
        # The daemon keeps serving afterwards.
        assert (await c.get("/api/version")).status_code == 200
        return response

    response = call(make_app(), body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    message = error["message"] if path.startswith("/v1") else error
    assert isinstance(message, str)
    assert needle in message
    assert "Traceback" not in response.text


def test_metrics_count_requests_by_route_and_status() -> None:
    async def body(c: httpx.AsyncClient) -> str:
        await c.get("/api/tags")
        await c.post("/api/show", json={"model": "nothere"})
        return (await c.get("/metrics")).text

    text = call(make_app(), body)
    assert 'localserve_requests_total{route="/api/tags",status="200"} 1.0' in text
    assert 'localserve_requests_total{route="/api/show",status="404"} 1.0' in text
    assert "localserve_queue_depth 0.0" in text
    assert "localserve_time_to_first_token_seconds_bucket" in text


def test_openapi_schema_is_served() -> None:
    schema = call(make_app(), lambda c: c.get("/openapi.json")).json()
    assert "/api/chat" in schema["paths"]
    assert "/v1/chat/completions" in schema["paths"]
