"""The typed client against a real daemon serving the tiny model: the calls of
tests/unit/test_client.py end to end."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from localserve.client import AsyncClient, Client, Message
from localserve.errors import (
    HubError,
    InvalidOptionError,
    ModelNotFoundError,
)
from tests.support.daemon import Daemon


@pytest.fixture(scope="module")
def client(daemon: Daemon) -> Iterator[Client]:
    with Client(daemon.url) as c:
        yield c


def test_daemon_basics(client: Client) -> None:
    from localserve import __version__

    assert client.ping()
    assert client.version() == __version__
    [tag] = [m for m in client.tags() if m.name == "tiny:latest"]
    assert tag.details.family == "llama" and tag.size > 0 and len(tag.short_id) == 12
    shown = client.show("tiny")
    assert "im_start" in shown.template
    assert shown.info("context_length") == 2048
    assert "completion" in shown.capabilities
    with pytest.raises(ModelNotFoundError):
        client.show("nothere")


def test_daemon_chat_generate_load_unload(client: Client) -> None:
    answer = client.chat(
        "tiny", [Message("user", "hello")], options={"num_predict": 4, "temperature": 0}
    )
    assert answer.done and answer.eval_count == 4 and answer.message.role == "assistant"
    chunks = list(client.generate("tiny", "hello", options={"num_predict": 3}, stream=True))
    assert chunks[-1].done and chunks[-1].eval_count == 3
    assert sum(1 for c in chunks if c.response) >= 1
    assert [m.name for m in client.ps()] == ["tiny:latest"]
    running = client.ps()[0]
    assert running.context_length and running.expires_at is not None and not running.forever

    client.unload("tiny")
    assert client.ps() == []
    loaded = client.load("tiny", keep_alive=-1)
    assert loaded.done_reason == "load"
    assert client.ps()[0].forever
    client.unload("tiny")

    with pytest.raises(InvalidOptionError, match="temprature"):
        client.chat("tiny", [Message("user", "hi")], options={"temprature": 1})
    with pytest.raises(ModelNotFoundError):
        list(client.chat("nothere", [Message("user", "hi")], stream=True))


def test_daemon_pull_failure_is_a_hub_error(client: Client) -> None:
    # The test daemon runs with HF_HUB_OFFLINE=1: the Hub cannot be reached.
    with pytest.raises(HubError):
        list(client.pull("hf.co/tester/offline-GGUF", stream=True))


def test_daemon_async_client(daemon: Daemon) -> None:
    async def run() -> tuple[str, list[str], int | None]:
        async with AsyncClient(daemon.url) as client:
            version = await client.version()
            stream = await client.chat(
                "tiny", [Message("user", "hi")], options={"num_predict": 3}, stream=True
            )
            chunks = [chunk async for chunk in stream]
            names = [m.name for m in await client.ps()]
            await client.unload("tiny")
            return version, names, chunks[-1].eval_count

    version, names, eval_count = asyncio.run(run())
    assert version and names == ["tiny:latest"] and eval_count == 3
