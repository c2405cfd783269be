"""Anthropic's Messages API in process: the translation of a conversation of content
blocks into the engine's chat, the shape of the message and the order of its stream
events, count_tokens, and the errors, over scripted fake runners
(tests/support/fake_runner.py). Where a client's view matters (its exceptions, its
stream accumulator, pings seen over time), the official ``anthropic`` package talks to
the app served on a loopback port.

The real model paths are tests/e2e/test_compat_anthropic.py (the tiny model),
tests/e2e/test_anthropic_gemma.py (a tool loop on Gemma) and tests/e2e/test_claude_code.py.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest
from fastapi import FastAPI
from PIL import Image

from localserve.config import Settings, load_settings
from localserve.errors import InvalidOptionError, RunnerCrashedError
from localserve.runtime.options import LoadOptions, SamplingOptions
from localserve.runtime.protocol import (
    DoneEvent,
    Event,
    GenerateJob,
    LoadRequest,
    ProgressEvent,
    TextEvent,
    ThinkingEvent,
    ToolCallEvent,
)
from localserve.schemas.anthropic import CountTokensRequest, MessagesRequest
from localserve.server.app import create_app
from localserve.store.importing import import_gguf
from localserve.store.store import ModelStore
from tests.support import chat_templates
from tests.support.app_server import serving
from tests.support.fake_runner import COUNTED, ID, FakeFactory, FakeRunner
from tests.support.tiny_gguf import write_tiny_gguf

WEATHER = {
    "name": "get_weather",
    "description": "Current weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}
ASK = [{"role": "user", "content": "Weather in Paris?"}]


def png() -> str:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


class Scripted(FakeRunner):
    """Yields exactly its ``events`` (a progress event first when the job asks); an
    exception among them is raised there."""

    events: Sequence[Event] = ()

    async def generate(self, job: GenerateJob) -> AsyncIterator[Event]:
        self.requests.append(job)
        if self.events and isinstance(self.events[0], BaseException):
            raise self.events[0]  # refused before it was taken (a prompt too long)
        if job.progress:
            yield ProgressEvent(ID, total=40, cache=30, processed=0, time_ms=0)
        for event in self.events:
            if isinstance(event, BaseException):
                raise event
            yield event


class ScriptedFactory(FakeFactory):
    def __init__(self, events: Sequence[Any]) -> None:
        super().__init__()
        self.events = events

    async def __call__(self, load: LoadRequest) -> FakeRunner:
        self.loads.append(load)
        runner = Scripted(load.paths, load.options)
        runner.events = self.events
        self.runners.append(runner)
        return runner


DONE = DoneEvent(ID, "stop", prompt_eval_count=40, prompt_cached=30, eval_count=5)
ANSWER: list[Any] = [
    ThinkingEvent(ID, "Let me "),
    ThinkingEvent(ID, "think."),
    TextEvent(ID, "Sure, "),
    TextEvent(ID, "checking."),
    ToolCallEvent(ID, 0, "get_weather", {"city": "Paris"}),
    ToolCallEvent(ID, 1, "get_weather", {"city": "Lyon"}, call_id="toolu_model"),
    DONE,
]


@pytest.fixture
def models(isolated_home: Path, tmp_path: Path) -> None:
    store = ModelStore(isolated_home / "models")
    for name, template in (("tools", chat_templates.QWEN3), ("plain", chat_templates.CHATML_PLAIN)):
        path = write_tiny_gguf(tmp_path / f"{name}.gguf", chat_template=template)
        for _ in import_gguf(store, path, name):
            pass


def call(
    path: str, body: Any, factory: FakeFactory, headers: dict[str, str] | None = None
) -> httpx.Response:
    app = create_app(load_settings(), runner_factory=factory)

    async def go() -> httpx.Response:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
                response = await c.post(path, json=body, headers=headers)
                await response.aread()
                return response

    return asyncio.run(go())


def events_of(text: str) -> list[tuple[str, dict[str, Any]]]:
    """The SSE stream as (event name, data) pairs, checking each frame's framing."""
    found = []
    for frame in text.split("\n\n"):
        if not frame:
            continue
        name_line, data_line = frame.split("\n")
        assert name_line.startswith("event: ") and data_line.startswith("data: "), frame
        found.append((name_line[7:], json.loads(data_line[6:])))
    return found


@pytest.fixture
def sdk(models: None) -> Iterator[tuple[anthropic.Anthropic, FakeFactory, FastAPI]]:
    """The official client against the app served on loopback, over ANSWER."""
    factory = ScriptedFactory(ANSWER)
    app = create_app(load_settings(), runner_factory=factory)
    with (
        serving(app) as url,
        anthropic.Anthropic(base_url=url, api_key="unused", max_retries=0) as client,
    ):
        yield client, factory, app


# ------------------------------------------------------------------ the request


def test_a_conversation_becomes_the_engines_chat() -> None:
    body = MessagesRequest.model_validate(
        {
            "model": "tools",
            "max_tokens": 10,
            "system": [
                # Claude Code's billing line, whose suffix changes with every prompt.
                {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.197.a5a;"},
                {"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": "Use tools."},
            ],
            "messages": [
                {"role": "system", "content": "Mid-conversation, before any turn."},
                {"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
                {"role": "user", "content": "In Paris and Lyon."},  # joined to the last
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": "Two calls.", "signature": "x"},
                        {"type": "redacted_thinking", "data": "opaque"},
                        {"type": "text", "text": "Checking."},
                        {"type": "tool_use", "id": "t1", "name": "get_weather", "input": {}},
                        {"type": "tool_use", "id": "t2", "name": "get_time", "input": {"z": 1}},
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "t1", "content": "18 C"},
                        {
                            "type": "tool_result",
                            "tool_use_id": "t2",
                            "content": [{"type": "text", "text": "no clock"}],
                            "is_error": True,
                        },
                        {"type": "image", "source": {"type": "base64", "data": png()}},
                        {"type": "text", "text": "And now?"},
                    ],
                },
                {"role": "system", "content": [{"type": "text", "text": "A late reminder."}]},
            ],
            "metadata": {"user_id": "u"},
            "service_tier": "auto",
        }
    )
    messages = body.engine_messages()
    image = messages[-1].pop("images")
    assert len(image) == 1 and base64.b64decode(image[0]).startswith(b"\x89PNG")
    assert messages == [
        {"role": "system", "content": "Be brief.\nUse tools.\nMid-conversation, before any turn."},
        {"role": "user", "content": "Weather?\nIn Paris and Lyon."},
        {
            "role": "assistant",
            "content": "Checking.",
            "thinking": "Two calls.",
            "reasoning_content": "Two calls.",
            "tool_calls": [
                {
                    "id": "t1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": {}},
                },
                {
                    "id": "t2",
                    "type": "function",
                    "function": {"name": "get_time", "arguments": {"z": 1}},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "t1", "content": "18 C", "name": "get_weather"},
        {"role": "tool", "tool_call_id": "t2", "content": "Error: no clock", "name": "get_time"},
        # A system message after the conversation began is the user's words where it stands.
        {"role": "user", "content": "And now?\nA late reminder."},
    ]


def test_tools_tool_choice_thinking_and_sampling_become_the_job() -> None:
    def job(**fields: Any) -> GenerateJob:
        body = MessagesRequest.model_validate(
            {"model": "m", "max_tokens": 3, "messages": ASK, **fields}
        )
        return body.to_job(SamplingOptions())

    plain = job()
    assert plain.tools is None and plain.tool_choice == "none" and plain.think is None
    auto = job(tools=[WEATHER])
    assert auto.tool_choice == "auto" and auto.parallel_tool_calls
    assert auto.tools == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather in a city.",
                "parameters": WEATHER["input_schema"],
            },
        }
    ]
    assert job(tools=[WEATHER], tool_choice={"type": "any"}).tool_choice == "required"
    named = job(
        tools=[WEATHER],
        tool_choice={"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
    )
    assert (named.tool_choice, named.parallel_tool_calls) == ("get_weather", False)
    assert job(tools=[WEATHER], tool_choice={"type": "none"}).tool_choice == "none"
    assert job(thinking={"type": "enabled", "budget_tokens": 1024}).think is True
    assert job(thinking={"type": "disabled"}).think is False
    assert job(thinking={"type": "adaptive"}).think is None
    body = MessagesRequest.model_validate(
        {
            "model": "m",
            "max_tokens": 7,
            "messages": ASK,
            "temperature": 0.5,
            "top_p": 0.9,
            "top_k": 5,
            "stop_sequences": ["END"],
        }
    )
    assert body.overrides(body.max_tokens) == {
        "num_predict": 7,
        "temperature": 0.5,
        "top_p": 0.9,
        "top_k": 5,
        "stop": ["END"],
        "think_budget": None,  # no thinking budget (tests/unit/test_thinking_budget.py)
    }
    counted = CountTokensRequest.model_validate({"model": "m", "messages": ASK, "tools": [WEATHER]})
    assert counted.to_job(SamplingOptions()).tools == auto.tools


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        (
            {"tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": 3}]},
            "'web_search' of type 'web_search_20250305', one of Anthropic's server tools",
        ),
        ({"tools": [{"name": "f"}]}, "tools[0] ('f') has no input_schema"),
        ({"tools": [WEATHER], "tool_choice": {"type": "tool"}}, "needs the tool's name"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "tool", "name": "nope"}},
            "'nope', which is not among tools",
        ),
        ({"tool_choice": {"type": "any"}}, "needs at least one tool"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image", "source": {"type": "url", "url": "http://x/y.png"}}
                        ],
                    }
                ]
            },
            "localserve does not fetch URLs",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image", "source": {"type": "base64", "data": "aGVsbG8="}}
                        ],
                    }
                ]
            },
            "not an image or sound",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}],
                    }
                ]
            },
            "a user message cannot hold a tool_use block",
        ),
    ],
)
def test_refusals_name_what_is_wrong(fields: dict[str, Any], reason: str) -> None:
    body = MessagesRequest.model_validate(
        {"model": "m", "max_tokens": 3, "messages": ASK, **fields}
    )
    with pytest.raises(InvalidOptionError) as raised:
        body.to_job(SamplingOptions())
    assert reason in str(raised.value)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"model": "tools", "messages": ASK}, "missing field 'max_tokens'"),
        ({"model": "tools", "max_tokens": 0, "messages": ASK}, "max_tokens"),
        ({"model": "tools", "max_tokens": 5, "messages": []}, "messages"),
        ({"model": "tools", "max_tokens": 5, "messages": ASK, "temperature": 1.5}, "temperature"),
        (
            {"model": "tools", "max_tokens": 5, "messages": [{"role": "user", "content": 5}]},
            "content must be a string or a list of content blocks",
        ),
        (
            {
                "model": "tools",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": [{"type": "document"}]}],
            },
            "Input tag 'document'",
        ),
        (
            {"model": "tools", "max_tokens": 5, "messages": [{"role": "tool", "content": "x"}]},
            "role",
        ),
        ({"model": "tools", "max_tokens": 5, "messages": ASK, "stream": "yes"}, "stream"),
        (
            {"model": "tools", "max_tokens": 5, "messages": ASK, "tools": [WEATHER]}
            | {"tool_choice": {"type": "tool", "name": "nope"}},
            "not among tools",
        ),
        (
            {"model": "plain", "max_tokens": 5, "messages": ASK, "tools": [WEATHER]},
            "plain does not support tools",
        ),
        (
            {"model": "plain", "max_tokens": 5, "messages": ASK, "thinking": {"type": "enabled"}},
            "plain does not support thinking",
        ),
    ],
)
def test_bad_requests_are_invalid_request_errors_before_any_load(
    models: None, body: dict[str, Any], reason: str
) -> None:
    factory = FakeFactory()
    response = call("/v1/messages", body, factory)
    assert response.status_code == 400, response.text
    answer = response.json()
    assert answer["type"] == "error" and answer["error"]["type"] == "invalid_request_error"
    assert reason in answer["error"]["message"]
    assert set(answer) == {"type", "error"} and set(answer["error"]) == {"type", "message"}
    assert factory.loads == []  # refused at the door


def test_fields_that_change_nothing_are_accepted(models: None) -> None:
    """What Claude Code sends besides the conversation: cache_control on blocks and
    tools, metadata, output_config, context_management, adaptive thinking, the beta
    query and headers."""
    factory = ScriptedFactory([TextEvent(ID, "Hi"), DONE])
    body = {
        "model": "tools",
        "max_tokens": 5,
        "system": [{"type": "text", "text": "S", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}],
            }
        ],
        "tools": [{**WEATHER, "cache_control": {"type": "ephemeral"}, "strict": True}],
        "metadata": {"user_id": "someone"},
        "service_tier": "standard_only",
        "thinking": {"type": "adaptive"},
        "output_config": {"effort": "high"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015"}]},
    }
    headers = {"anthropic-version": "2023-06-01", "anthropic-beta": "claude-code-20250219"}
    response = call("/v1/messages?beta=true", body, factory, headers)
    assert response.status_code == 200, response.text
    (job,) = factory.runners[0].requests
    assert job.messages == [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "hi"},
    ]


# ----------------------------------------------------------------- the answer


def test_the_whole_message(models: None) -> None:
    response = call(
        "/v1/messages",
        {"model": "tools", "max_tokens": 5, "messages": ASK, "tools": [WEATHER]},
        ScriptedFactory(ANSWER),
    )
    assert response.status_code == 200
    message = response.json()
    assert message["id"].startswith("msg_") and len(message["id"]) > 10
    content = message.pop("content")
    assert message == {
        "id": message["id"],
        "type": "message",
        "role": "assistant",
        "model": "tools",
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 10,  # read anew: 40 in all, 30 from the prefix cache
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 30,
            "output_tokens": 5,
        },
    }
    thinking, text, first, second = content
    assert thinking["type"] == "thinking" and thinking["thinking"] == "Let me think."
    assert len(thinking["signature"]) == 64
    assert text == {"type": "text", "text": "Sure, checking."}
    assert first["type"] == "tool_use" and first["id"].startswith("toolu_")
    assert (first["name"], first["input"]) == ("get_weather", {"city": "Paris"})
    assert second["id"] == "toolu_model"  # the model's own id, where its format has one


@pytest.mark.parametrize(
    ("done", "stops", "reason", "sequence"),
    [
        (DoneEvent(ID, "stop"), None, "end_turn", None),
        (DoneEvent(ID, "length"), None, "max_tokens", None),
        (DoneEvent(ID, "stop", stop_sequence="END"), ["END"], "stop_sequence", "END"),
        # A stop the request did not send (the model's own, a template's) ends the turn.
        (DoneEvent(ID, "stop", stop_sequence="<|im_end|>"), ["END"], "end_turn", None),
    ],
)
def test_stop_reasons(
    models: None, done: DoneEvent, stops: list[str] | None, reason: str, sequence: str | None
) -> None:
    body = {"model": "tools", "max_tokens": 5, "messages": ASK, "stop_sequences": stops}
    message = call("/v1/messages", body, ScriptedFactory([TextEvent(ID, "a"), done])).json()
    assert (message["stop_reason"], message["stop_sequence"]) == (reason, sequence)
    streamed = call("/v1/messages", {**body, "stream": True}, ScriptedFactory([done]))
    (delta,) = [data for name, data in events_of(streamed.text) if name == "message_delta"]
    assert delta["delta"] == {"stop_reason": reason, "stop_sequence": sequence}


def test_the_stream_is_anthropics_event_sequence(models: None) -> None:
    response = call(
        "/v1/messages",
        {"model": "tools", "max_tokens": 5, "messages": ASK, "tools": [WEATHER], "stream": True},
        ScriptedFactory(ANSWER),
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = events_of(response.text)
    assert all(name == data["type"] for name, data in events)
    shapes = [
        (
            name,
            data.get("index"),
            (data.get("delta") or data.get("content_block") or {}).get("type"),
        )
        for name, data in events
    ]
    assert shapes == [
        ("message_start", None, None),
        ("content_block_start", 0, "thinking"),
        ("content_block_delta", 0, "thinking_delta"),
        ("content_block_delta", 0, "thinking_delta"),
        ("content_block_delta", 0, "signature_delta"),
        ("content_block_stop", 0, None),
        ("content_block_start", 1, "text"),
        ("content_block_delta", 1, "text_delta"),
        ("content_block_delta", 1, "text_delta"),
        ("content_block_stop", 1, None),
        ("content_block_start", 2, "tool_use"),
        ("content_block_delta", 2, "input_json_delta"),
        ("content_block_stop", 2, None),
        ("content_block_start", 3, "tool_use"),
        ("content_block_delta", 3, "input_json_delta"),
        ("content_block_stop", 3, None),
        ("message_delta", None, None),
        ("message_stop", None, None),
    ]
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None
    # The runner's first event told the prompt's length: 40 tokens, 30 of them cached.
    assert start["usage"] == {
        "input_tokens": 10,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 30,
        "output_tokens": 0,
    }
    assert events[1][1]["content_block"] == {"type": "thinking", "thinking": "", "signature": ""}
    assert events[10][1]["content_block"]["input"] == {}
    assert json.loads(events[11][1]["delta"]["partial_json"]) == {"city": "Paris"}
    assert events[-2][1]["usage"]["output_tokens"] == 5
    assert not response.text.rstrip().endswith("[DONE]")


def test_the_sdk_reads_the_stream_and_the_whole_message_alike(
    sdk: tuple[anthropic.Anthropic, FakeFactory, FastAPI],
) -> None:
    client, factory, _ = sdk
    tools: Any = [WEATHER]
    whole = client.messages.create(model="tools", max_tokens=5, messages=ASK, tools=tools)  # type: ignore[arg-type]
    with client.messages.stream(model="tools", max_tokens=5, messages=ASK, tools=tools) as stream:  # type: ignore[arg-type]
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Sure, checking."
    assert final.stop_reason == whole.stop_reason == "tool_use"
    assert [b.type for b in final.content] == [b.type for b in whole.content]
    assert [b.type for b in final.content] == ["thinking", "text", "tool_use", "tool_use"]
    thinking = final.content[0]
    assert thinking.type == "thinking" and thinking.thinking == "Let me think."
    assert thinking.signature == whole.content[0].signature  # type: ignore[union-attr]
    calls = [b for b in final.content if b.type == "tool_use"]
    assert [(c.name, c.input) for c in calls] == [
        ("get_weather", {"city": "Paris"}),
        ("get_weather", {"city": "Lyon"}),
    ]
    assert final.usage.input_tokens == whole.usage.input_tokens == 10
    assert final.usage.cache_read_input_tokens == 30 and final.usage.output_tokens == 5
    # The stream asked the runner for progress (its status and pings hang on it).
    assert [job.progress for job in factory.runners[0].requests] == [False, True]


def test_count_tokens_counts_the_job_a_message_would_run(
    sdk: tuple[anthropic.Anthropic, FakeFactory, FastAPI],
) -> None:
    client, factory, _ = sdk
    tools: Any = [WEATHER]
    counted = client.messages.count_tokens(
        model="tools", system="Be brief.", messages=ASK, tools=tools
    )
    assert counted.input_tokens == COUNTED
    client.messages.create(
        model="tools", max_tokens=5, system="Be brief.", messages=ASK, tools=tools
    )
    runner = factory.runners[0]
    (counted_job,), (generated,) = runner.counted, runner.requests
    assert counted_job.messages == generated.messages  # the same prompt: system, turns
    assert counted_job.tools == generated.tools and counted_job.tool_choice == "auto"


# --------------------------------------------------------------------- errors


def test_each_error_is_the_sdks_exception(
    sdk: tuple[anthropic.Anthropic, FakeFactory, FastAPI],
) -> None:
    client, factory, app = sdk
    with pytest.raises(anthropic.BadRequestError) as bad:
        # (This SDK has no temperature argument any more; other clients send it.)
        client.messages.create(
            model="tools", max_tokens=5, messages=ASK, extra_body={"temperature": 1.5}
        )
    assert bad.value.status_code == 400
    assert bad.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(model="claude-sonnet-4-5", max_tokens=5, messages=ASK)
    message = missing.value.body["error"]["message"]  # type: ignore[index]
    assert 'model "claude-sonnet-4-5" not found' in message
    assert "localserve pull" in message and "localserve cp MODEL claude-sonnet-4-5" in message
    # A full queue: Anthropic's 529, overloaded_error (the SDK retries it after
    # Retry-After; here it may not).
    app.state.scheduler.max_queue = 0
    with pytest.raises(anthropic.InternalServerError) as busy:
        client.messages.create(model="tools", max_tokens=5, messages=ASK)
    assert busy.value.status_code == 529
    assert busy.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    assert busy.value.response.headers["retry-after"] == "1"
    assert type(busy.value).__name__ == "OverloadedError"
    with pytest.raises(anthropic.InternalServerError) as busy_count:
        client.messages.count_tokens(model="tools", messages=ASK)
    assert busy_count.value.status_code == 529
    assert factory.runners == []  # nothing of these reached a runner


@pytest.mark.parametrize("header", ["authorization", "x-api-key"])
def test_the_api_key_in_either_header(models: None, header: str) -> None:
    app = create_app(Settings(api_key="s3cret"), runner_factory=ScriptedFactory(ANSWER))
    with serving(app) as url:
        with (
            anthropic.Anthropic(base_url=url, api_key="wrong", max_retries=0) as wrong,
            pytest.raises(anthropic.AuthenticationError) as refused,
        ):
            wrong.messages.create(model="tools", max_tokens=5, messages=ASK)
        assert refused.value.body == {  # type: ignore[comparison-overlap]
            "type": "error",
            "error": {"type": "authentication_error", "message": "missing or invalid API key"},
        }
        # The SDK sends x-api-key for api_key, Authorization: Bearer for auth_token.
        key = {"api_key": "s3cret"} if header == "x-api-key" else {"auth_token": "s3cret"}
        with anthropic.Anthropic(base_url=url, max_retries=0, **key) as client:  # type: ignore[arg-type]
            assert client.messages.create(model="tools", max_tokens=5, messages=ASK).content


def test_a_prompt_too_long_is_said_in_anthropics_words(models: None) -> None:
    from localserve.errors import PromptTooLongError

    too_long = PromptTooLongError("too long", tokens=19_512, limit=4096)
    for stream in (False, True):
        body = {"model": "tools", "max_tokens": 5, "messages": ASK, "stream": stream}
        response = call("/v1/messages", body, ScriptedFactory([too_long]))
        assert response.status_code == 400
        assert response.json() == {
            "type": "error",
            "error": {
                "type": "invalid_request_error",
                "message": "prompt is too long: 19512 tokens > 4096 maximum",
            },
        }


def test_a_runner_failing_mid_stream_ends_it_with_an_error_event(
    sdk: tuple[anthropic.Anthropic, FakeFactory, FastAPI],
) -> None:
    client, factory, _ = sdk
    factory.events = [TextEvent(ID, "Hel"), RunnerCrashedError("the model runner stopped: boom")]  # type: ignore[attr-defined]
    seen: list[str] = []

    def read() -> None:
        with client.messages.stream(model="tools", max_tokens=5, messages=ASK) as stream:
            seen.extend(event.type for event in stream)

    with pytest.raises(anthropic.APIStatusError) as failed:
        read()
    assert seen[:3] == ["message_start", "content_block_start", "content_block_delta"]
    assert failed.value.body == {  # type: ignore[comparison-overlap]
        "type": "error",
        "error": {"type": "api_error", "message": "the model runner stopped: boom"},
    }


# -------------------------------------------------------------------- liveness


class SlowReader(FakeRunner):
    """Takes the job (its first progress event), then reads the prompt until ``gate``."""

    gate: threading.Event

    async def generate(self, job: GenerateJob) -> AsyncIterator[Event]:
        self.requests.append(job)
        yield ProgressEvent(ID, total=900, cache=100, processed=0, time_ms=0)
        while not self.gate.is_set():
            await asyncio.sleep(0.001)
        yield TextEvent(ID, "Hi")
        yield DoneEvent(ID, "stop", prompt_eval_count=900, prompt_cached=100, eval_count=1)


class SlowFactory(FakeFactory):
    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()

    async def __call__(self, load: LoadRequest) -> FakeRunner:
        runner = SlowReader(load.paths, load.options)
        runner.gate = self.gate
        self.runners.append(runner)
        return runner


def test_ping_events_while_a_long_prompt_is_read(
    models: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOCALSERVE_STREAM_PING", "10ms")
    factory = SlowFactory()
    app = create_app(load_settings(), runner_factory=factory)
    body = {"model": "tools", "max_tokens": 5, "messages": ASK, "stream": True}
    names: list[str] = []
    with serving(app) as url, httpx.stream("POST", url + "/v1/messages", json=body) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line == 'data: {"type": "ping"}':
                assert names[-1] == "ping"
            elif line.startswith("event: "):
                names.append(line[7:])
                if names.count("ping") == 3:
                    factory.gate.set()
    first_text = names.index("content_block_start")
    assert names[0] == "message_start"  # first, as Anthropic sends it
    assert names[1:first_text] == ["ping"] * (first_text - 1) and first_text >= 4
    assert names[-2:] == ["message_delta", "message_stop"]


def test_no_max_tokens_is_needed_to_count(models: None) -> None:
    response = call(
        "/v1/messages/count_tokens",
        {"model": "tools", "messages": ASK, "tools": [WEATHER], "max_tokens": "ignored"},
        FakeFactory(),
    )
    assert response.status_code == 200 and response.json() == {"input_tokens": COUNTED}
    missing = call(
        "/v1/messages/count_tokens", {"model": "nothere", "messages": ASK}, FakeFactory()
    )
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "not_found_error"


def test_a_count_and_a_message_share_the_runner(models: None) -> None:
    """A count and a message run on the same resident runner (no reload between them)."""
    factory = ScriptedFactory([DONE])
    app = create_app(load_settings(), runner_factory=factory)

    async def go() -> None:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
                body = {"model": "tools", "messages": ASK}
                assert (await c.post("/v1/messages/count_tokens", json=body)).status_code == 200
                body["max_tokens"] = 5  # type: ignore[assignment]
                assert (await c.post("/v1/messages", json=body)).status_code == 200

    asyncio.run(go())
    assert len(factory.loads) == 1
    assert isinstance(factory.loads[0].options, LoadOptions)
