"""A prompt longer than the context, in each API's own words (issue 28): OpenAI's
``context_length_exceeded`` with its message, Ollama's error with both numbers; the
numbers cross the runner's pipe intact. In-process, over a fake runner that refuses the
prompt as the engine would."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from localserve.config import load_settings
from localserve.errors import PromptTooLongError
from localserve.runtime.protocol import (
    ErrorEvent,
    Event,
    GenerateJob,
    LoadRequest,
    event_from_wire,
    event_to_wire,
)
from localserve.server.app import create_app
from localserve.store.importing import import_gguf
from localserve.store.store import ModelStore
from tests.support import chat_templates
from tests.support.fake_runner import ID, FakeFactory, FakeRunner
from tests.support.tiny_gguf import write_tiny_gguf

TOKENS, LIMIT = 7471, 4096


class RefusingRunner(FakeRunner):
    """Refuses every prompt with ``refusal``, before any event, as the runner does (the
    error crosses the pipe as an ErrorEvent)."""

    refusal = PromptTooLongError("too long", tokens=TOKENS, limit=LIMIT)

    async def generate(self, job: GenerateJob) -> AsyncIterator[Event]:
        self.requests.append(job)
        wire = event_to_wire(ErrorEvent.of(ID, self.refusal))
        received = event_from_wire(json.loads(json.dumps(wire)))
        assert isinstance(received, ErrorEvent)
        raise received.error()
        yield  # pragma: no cover - makes this an async generator


class RefusingFactory(FakeFactory):
    def __init__(self, refusal: PromptTooLongError | None = None) -> None:
        super().__init__()
        self.refusal = refusal

    async def __call__(self, load: LoadRequest) -> FakeRunner:
        self.loads.append(load)
        runner = RefusingRunner(load.paths, load.options)
        if self.refusal is not None:
            runner.refusal = self.refusal
        self.runners.append(runner)
        return runner


@pytest.fixture
def model(isolated_home: Path, tmp_path: Path) -> None:
    path = write_tiny_gguf(tmp_path / "chat.gguf", chat_template=chat_templates.CHATML_PLAIN)
    for _ in import_gguf(ModelStore(isolated_home / "models"), path, "chat"):
        pass


def post(
    path: str, body: dict[str, Any], refusal: PromptTooLongError | None = None
) -> tuple[int, dict[str, Any]]:
    factory = RefusingFactory(refusal)
    app = create_app(load_settings(), runner_factory=factory)

    async def go() -> tuple[int, dict[str, Any]]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
                response = await c.post(path, json=body)
                return response.status_code, response.json()

    status, answer = asyncio.run(go())
    assert factory.runners and factory.runners[0].requests, "the request reached the runner"
    return status, answer


ASK = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("stream", [False, True])
def test_openai_chat_says_context_length_exceeded(model: None, stream: bool) -> None:
    status, body = post(
        "/v1/chat/completions", {"model": "chat", "messages": ASK, "stream": stream}
    )
    assert status == 400
    assert body["error"]["code"] == "context_length_exceeded"
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["param"] == "messages"
    assert body["error"]["message"] == (
        f"This model's maximum context length is {LIMIT} tokens. However, your messages "
        f"resulted in {TOKENS} tokens. Please reduce the length of the messages."
    )


def test_openai_completions_name_the_prompt(model: None) -> None:
    status, body = post("/v1/completions", {"model": "chat", "prompt": "hi"})
    assert status == 400
    assert (body["error"]["code"], body["error"]["param"]) == ("context_length_exceeded", "prompt")
    assert f"{LIMIT} tokens" in body["error"]["message"]
    assert f"{TOKENS} tokens" in body["error"]["message"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/chat", {"model": "chat", "messages": ASK}),
        ("/api/generate", {"model": "chat", "prompt": "hi"}),
    ],
)
def test_ollama_routes_keep_their_error_shape(model: None, path: str, body: dict[str, Any]) -> None:
    status, answer = post(path, body)
    assert status == 400
    assert answer == {"error": "too long"}


def test_a_refusal_without_the_numbers_carries_no_code(model: None) -> None:
    """An empty prompt is reported as this type too, with no lengths: a plain 400."""
    empty = PromptTooLongError("the prompt is empty after tokenization")
    status, body = post("/v1/chat/completions", {"model": "chat", "messages": ASK}, empty)
    assert status == 400
    assert body["error"]["code"] is None
    assert body["error"]["message"] == "the prompt is empty after tokenization"


def test_the_numbers_cross_the_pipe() -> None:
    sent = ErrorEvent.of("r7", PromptTooLongError("long", tokens=TOKENS, limit=LIMIT))
    received = event_from_wire(json.loads(json.dumps(event_to_wire(sent))))
    assert received == sent
    assert isinstance(received, ErrorEvent)
    error = received.error()
    assert isinstance(error, PromptTooLongError)
    assert (error.tokens, error.limit, str(error)) == (TOKENS, LIMIT, "long")
