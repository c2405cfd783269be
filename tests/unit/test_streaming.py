"""Stream encodings survive line readers: generated text can hold any character.

JSON leaves U+0085, U+2028 and U+2029 raw inside strings, and Python's str.splitlines
(so httpx's ``iter_lines``, used by the ollama package and by localserve's own client)
breaks lines at them. The soak run (benchmarks/soak.py) hit this with the tiny model's
byte tokens: a line split in two and the client failed to parse it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from localserve.server.streaming import ndjson, sse

AWKWARD = "a\x85b\u2028c\u2029d\re\nf\x0bg\x0ch\x1ci\x1dj\x1ek"


def app() -> FastAPI:
    served = FastAPI()

    async def chunks() -> AsyncIterator[dict[str, Any]]:
        for piece in AWKWARD:
            yield {"response": piece}

    @served.post("/ndjson")
    async def lines() -> Any:
        return ndjson(chunks(), "/ndjson")

    @served.post("/v1/sse")
    async def events() -> Any:
        return sse(chunks(), "/v1/sse")

    return served


async def read_lines(path: str) -> list[str]:
    transport = httpx.ASGITransport(app=app())
    async with (
        httpx.AsyncClient(transport=transport, base_url="http://test") as client,
        client.stream("POST", path) as response,
    ):
        return [line async for line in response.aiter_lines()]


@pytest.mark.parametrize("path", ["/ndjson", "/v1/sse"])
def test_every_chunk_stays_on_one_line(path: str) -> None:
    lines = [line for line in asyncio.run(read_lines(path)) if line]
    if path == "/v1/sse":
        assert lines[-1] == "data: [DONE]"
        lines = [line.removeprefix("data: ") for line in lines[:-1]]
    text = "".join(json.loads(line)["response"] for line in lines)
    assert text == AWKWARD
    assert len(lines) == len(AWKWARD)
