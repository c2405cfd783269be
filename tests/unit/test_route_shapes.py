"""How the routes shape engine events into Ollama's and OpenAI's wire forms, in-process:
the app (create_app) over the scripted fake runner (tests/support/fake_runner.py), so
every event kind and order is exact, with no model.

The fake yields "Hello", then its script: thinking, more text and a tool call, then
done; the real model paths are in test_compat_*.py and test_tools_gemma.py.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from localserve.config import load_settings
from localserve.runtime.protocol import TextEvent, ThinkingEvent, ToolCallEvent
from localserve.server.app import create_app
from localserve.store.importing import import_gguf
from localserve.store.store import ModelStore
from tests.support import chat_templates
from tests.support.fake_runner import ID, FakeFactory
from tests.support.tiny_gguf import write_tiny_gguf

SCRIPT = [
    ThinkingEvent(ID, "hmm"),
    TextEvent(ID, " sure"),
    ToolCallEvent(ID, 0, "get_weather", {"city": "Paris"}),
    ToolCallEvent(ID, 1, "get_time", {}, call_id="abc123"),
]
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}},
    {"type": "function", "function": {"name": "get_time"}},
]
ASK = [{"role": "user", "content": "Weather?"}]


@pytest.fixture
def models(isolated_home: Path, tmp_path: Path) -> None:
    store = ModelStore(isolated_home / "models")
    for name, template in (("tools", chat_templates.QWEN3), ("plain", chat_templates.CHATML_PLAIN)):
        path = write_tiny_gguf(tmp_path / f"{name}.gguf", chat_template=template)
        for _ in import_gguf(store, path, name):
            pass


def call(
    method: str, path: str, body: dict[str, Any], factory: FakeFactory | None = None
) -> tuple[int, list[str]]:
    """The status and the body's lines (one for a JSON answer). ``factory``, when given,
    serves the runners, and keeps what reached them (its loads, each runner's requests)."""
    factory = factory or FakeFactory()
    factory.script = SCRIPT
    app = create_app(load_settings(), runner_factory=factory)

    async def go() -> tuple[int, list[str]]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with (
                httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client,
                client.stream(method, path, json=body) as response,
            ):
                lines = [line async for line in response.aiter_lines() if line.strip()]
                return response.status_code, lines

    return asyncio.run(go())


def test_ollama_chat_whole(models: None) -> None:
    status, [line] = call(
        "POST", "/api/chat", {"model": "tools", "messages": ASK, "tools": TOOLS, "stream": False}
    )
    assert status == 200
    message = json.loads(line)["message"]
    assert message == {
        "role": "assistant",
        "content": "Hello sure",
        "thinking": "hmm",
        "tool_calls": [
            {"function": {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}}},
            {"function": {"index": 1, "name": "get_time", "arguments": {}}},
        ],
    }
    assert json.loads(line)["done_reason"] == "stop"


def test_ollama_chat_streamed(models: None) -> None:
    status, lines = call("POST", "/api/chat", {"model": "tools", "messages": ASK, "tools": TOOLS})
    assert status == 200
    chunks = [json.loads(line) for line in lines]
    shapes = [
        (
            c["message"]["content"],
            c["message"].get("thinking"),
            len(c["message"].get("tool_calls", [])),
        )
        for c in chunks
    ]
    assert shapes == [
        ("Hello", None, 0),
        ("", "hmm", 0),
        (" sure", None, 0),
        ("", None, 1),
        ("", None, 1),
        ("", None, 0),
    ]
    assert [c["done"] for c in chunks] == [False] * 5 + [True]


def test_ollama_generate_thinking(models: None) -> None:
    status, [line] = call(
        "POST", "/api/generate", {"model": "tools", "prompt": "hi", "think": True, "stream": False}
    )
    answer = json.loads(line)
    assert status == 200 and answer["thinking"] == "hmm" and answer["response"] == "Hello sure"


def test_openai_chat_whole(models: None) -> None:
    status, [line] = call(
        "POST", "/v1/chat/completions", {"model": "tools", "messages": ASK, "tools": TOOLS}
    )
    assert status == 200
    (choice,) = json.loads(line)["choices"]
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert (message["content"], message["reasoning_content"]) == ("Hello sure", "hmm")
    first, second = message["tool_calls"]
    assert first["id"].startswith("call_") and first["type"] == "function"
    assert first["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert second["id"] == "abc123"  # the model's own id, where its format has one


def test_openai_chat_streamed(models: None) -> None:
    status, lines = call(
        "POST",
        "/v1/chat/completions",
        {"model": "tools", "messages": ASK, "tools": TOOLS, "stream": True},
    )
    assert status == 200 and lines[-1] == "data: [DONE]"
    deltas = [json.loads(line[6:])["choices"][0] for line in lines[:-1]]
    assert [d["delta"] for d in deltas[:4]] == [
        {"role": "assistant", "content": ""},
        {"content": "Hello"},
        {"reasoning_content": "hmm"},
        {"content": " sure"},
    ]
    calls = [d["delta"]["tool_calls"][0] for d in deltas[4:8]]
    assert [c["index"] for c in calls] == [0, 0, 1, 1]
    assert calls[0]["function"] == {"name": "get_weather", "arguments": ""} and calls[0]["id"]
    assert calls[1] == {"index": 0, "function": {"arguments": '{"city": "Paris"}'}}
    assert calls[2]["id"] == "abc123"
    assert deltas[-1]["finish_reason"] == "tool_calls"
    assert all(d["finish_reason"] is None for d in deltas[:-1])


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        (
            "/api/chat",
            {"model": "plain", "messages": ASK, "tools": TOOLS},
            "plain does not support tools",
        ),
        (
            "/api/chat",
            {"model": "plain", "messages": ASK, "think": True},
            "plain does not support thinking",
        ),
        (
            "/api/generate",
            {"model": "plain", "prompt": "x", "think": "high"},
            "plain does not support thinking",
        ),
        ("/api/chat", {"model": "tools", "messages": ASK, "think": "max"}, "think must be"),
        (
            "/v1/chat/completions",
            {"model": "plain", "messages": ASK, "tools": TOOLS},
            "plain does not support tools",
        ),
    ],
)
def test_refusals_before_any_load(
    models: None, path: str, body: dict[str, Any], message: str
) -> None:
    factory = FakeFactory()
    status, [line] = call("POST", path, body, factory)
    assert status == 400
    error = json.loads(line)["error"]
    assert message in (error if isinstance(error, str) else error["message"])
    assert factory.loads == [] and factory.runners == []  # no runner was started

    # The same request, with what made it wrong taken out, does load and run: the
    # factory sees what a refusal would have let through.
    fixed = {k: v for k, v in body.items() if k not in ("tools", "think")}
    status, _ = call("POST", path, fixed, factory)
    assert status == 200
    (load,) = factory.loads
    assert load.paths and load.paths[0].exists()
    (runner,) = factory.runners
    (job,) = runner.requests
    assert job.tools is None and job.think is None


def test_tool_choice_none_leaves_tools_unchecked(models: None) -> None:
    # "none": the tools are not used, so a model without tool support may take them.
    factory = FakeFactory()
    status, _ = call(
        "POST",
        "/v1/chat/completions",
        {"model": "plain", "messages": ASK, "tools": TOOLS, "tool_choice": "none"},
        factory,
    )
    assert status == 200 and len(factory.loads) == 1
    (runner,) = factory.runners
    (job,) = runner.requests
    # It reached the runner as asked: the runner's prompt step leaves the tools out.
    assert job.tool_choice == "none" and job.messages == ASK
