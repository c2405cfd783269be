"""The official ``openai`` package's Responses client against a real daemon's
/v1/responses (tests/support/daemon.py): create, stream, parse, tool calls enforced on
random weights, reasoning items, the kept responses across a daemon restart, errors.

The model is the tiny random one, so checks are about shapes, counts and reasons,
never words (Gemma's tool loop, the Agents SDK and Codex: test_responses_agents.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from pydantic import BaseModel

from tests.e2e.test_compat_openai import assert_weather_arguments
from tests.support.daemon import Daemon, daemon, debug_daemon, running_daemon, tool_models

__all__ = ["daemon", "debug_daemon", "tool_models"]  # module-scoped fixtures used here

MODEL = "tiny"
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "strict": True,
    "parameters": {
        "type": "object",
        "properties": {
            # Every part bounded, so random weights finish the call (test_compat_openai).
            "city": {"type": "string", "enum": ["Paris", "Rome", "Oslo"]},
            "days": {"type": "integer"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city", "days", "unit"],
        "additionalProperties": False,
    },
}


class Answer(BaseModel):
    ok: bool


@pytest.fixture
def client(daemon: Daemon) -> Iterator[openai.OpenAI]:
    # No retries: a 5xx must show up as the error it is, not as a slow pass.
    with openai.OpenAI(
        base_url=daemon.url + "/v1", api_key="unused", max_retries=0, timeout=120
    ) as client:
        yield client


def test_create_text(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=MODEL, input="Hello!", max_output_tokens=8, temperature=0
    )
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.model == MODEL
    # Random weights never end by themselves: cut by the limit.
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    (message,) = response.output
    assert message.type == "message" and message.role == "assistant"
    assert response.output_text
    usage = response.usage
    assert usage is not None and usage.output_tokens == 8 and usage.input_tokens > 0
    assert usage.total_tokens == usage.input_tokens + 8
    assert usage.output_tokens_details.reasoning_tokens == 0


def test_instructions_and_a_multi_turn_input(debug_daemon: Daemon) -> None:
    items: list[dict[str, object]] = [
        {"role": "developer", "content": "Answer in one word. (dev-turn)"},
        {"role": "user", "content": [{"type": "input_text", "text": "Capital of France?"}]},
        {"role": "assistant", "content": "Paris."},
        {"type": "message", "role": "user", "content": "And Italy? (multi-turn)"},
    ]
    with openai.OpenAI(
        base_url=debug_daemon.url + "/v1", api_key="unused", max_retries=0, timeout=60
    ) as client:
        response = client.responses.create(
            model=MODEL,
            instructions="You are terse. (instructions)",
            input=items,  # type: ignore[arg-type]
            max_output_tokens=2,
        )
    assert response.instructions == "You are terse. (instructions)"
    assert response.usage is not None and response.usage.output_tokens == 2
    prompt = debug_daemon.logged_prompt("(multi-turn)")
    order = [
        "<|im_start|>system\nYou are terse. (instructions)<|im_end|>",
        "<|im_start|>user\nCapital of France?<|im_end|>",
        "<|im_start|>assistant\nParis.<|im_end|>",
        "<|im_start|>user\nAnd Italy? (multi-turn)<|im_end|>\n<|im_start|>assistant\n",
    ]
    assert all(part in prompt for part in order), prompt
    assert [prompt.index(part) for part in order] == sorted(prompt.index(p) for p in order)


def test_stream_events_and_the_final_response(client: openai.OpenAI) -> None:
    # A schema's grammar ends the answer, so the stream completes (a stream cut by the
    # limit ends in response.incomplete, which the helper does not take for a final one).
    with client.responses.stream(
        model=MODEL,
        input="Is the sky blue?",
        max_output_tokens=200,
        temperature=0,
        text_format=Answer,
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    names = [e.type for e in events]
    assert names[:2] == ["response.created", "response.in_progress"]
    begin = names.index("response.output_item.added")
    assert names[begin + 1] == "response.content_part.added"
    end = names.index("response.output_text.done")
    assert set(names[begin + 2 : end]) == {"response.output_text.delta"}
    assert names[end:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    streamed = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert final.status == "completed" and final.output_text == streamed
    assert isinstance(final.output_parsed, Answer)
    whole = client.responses.create(
        model=MODEL,
        input="Is the sky blue?",
        max_output_tokens=200,
        temperature=0,
        text={
            "format": {
                "type": "json_schema",
                "name": "Answer",
                "schema": Answer.model_json_schema(),
            }
        },
    )
    assert whole.output_text == streamed


def test_sse_framing(daemon: Daemon) -> None:
    body = {"model": MODEL, "input": "Hi", "max_output_tokens": 3, "stream": True}
    with httpx.stream("POST", daemon.url + "/v1/responses", json=body, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].split(";")[0] == "text/event-stream"
        text = response.read().decode()
    blocks = [b for b in text.split("\n\n") if b and not b.startswith(":")]
    for block in blocks:
        name, data = block.split("\n")
        assert json.loads(data.removeprefix("data: "))["type"] == name.removeprefix("event: ")
    assert blocks[-1].startswith("event: response.incomplete\n")
    assert "[DONE]" not in text


def test_parse_with_a_pydantic_model(client: openai.OpenAI) -> None:
    parsed = client.responses.parse(
        model=MODEL,
        input="Is the sky blue?",
        max_output_tokens=200,
        temperature=0,
        text_format=Answer,
    )
    assert parsed.status == "completed"
    assert isinstance(parsed.output_parsed, Answer)


def test_required_tool_choice_on_random_weights(
    client: openai.OpenAI, tool_models: dict[str, str]
) -> None:
    for seed in (1, 2):  # sampled, not greedy: the grammar holds for any draw
        response = client.responses.create(
            model="tiny-tools",
            input="Weather in Paris for 3 days?",
            tools=[WEATHER],  # type: ignore[list-item]
            tool_choice="required",
            parallel_tool_calls=False,
            max_output_tokens=300,
            temperature=1.0,
            extra_body={"options": {"seed": seed}},
        )
        calls = [item for item in response.output if item.type == "function_call"]
        (call,) = calls
        assert call.name == "get_weather" and call.call_id and call.status == "completed"
        assert_weather_arguments(call.arguments)
    named = client.responses.create(
        model="tiny-tools",
        input="Weather?",
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice={"type": "function", "name": "get_weather"},
        parallel_tool_calls=False,
        max_output_tokens=300,
    )
    assert [i.type for i in named.output if i.type == "function_call"] == ["function_call"]


def test_streamed_function_call(client: openai.OpenAI, tool_models: dict[str, str]) -> None:
    with client.responses.stream(
        model="tiny-tools",
        input="Weather?",
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="required",
        parallel_tool_calls=False,
        max_output_tokens=300,
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    (done,) = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert done.arguments == deltas
    assert_weather_arguments(deltas)
    (call,) = [i for i in final.output if i.type == "function_call"]
    assert call.arguments == deltas and call.id == done.item_id


def test_reasoning_items(client: openai.OpenAI, tool_models: dict[str, str]) -> None:
    response = client.responses.create(
        model="tiny-r1",
        input="Hi",
        max_output_tokens=10,
        temperature=0,
        include=["reasoning.encrypted_content"],
    )
    reasoning = response.output[0]
    assert reasoning.type == "reasoning"
    assert reasoning.content and reasoning.content[0].type == "reasoning_text"
    text = reasoning.content[0].text
    assert text and reasoning.encrypted_content
    assert response.usage is not None
    assert 0 < response.usage.output_tokens_details.reasoning_tokens <= 10
    with client.responses.stream(
        model="tiny-r1", input="Hi", max_output_tokens=10, temperature=0
    ) as stream:
        streamed = "".join(e.delta for e in stream if e.type == "response.reasoning_text.delta")
    assert streamed == text
    # Sent back as Codex does (encrypted, no content), it reads as the reasoning again.
    later = client.responses.create(
        model="tiny-r1",
        input=[
            {"role": "user", "content": "Hi"},
            {
                "type": "reasoning",
                "id": reasoning.id,
                "summary": [],
                "encrypted_content": reasoning.encrypted_content,
            },
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Bye"},
        ],
        max_output_tokens=2,
        store=False,
    )
    assert later.usage is not None and later.usage.output_tokens == 2


def test_previous_response_reuses_the_cache_and_survives_a_restart(
    isolated_home: Path, tiny_gguf_path: Path
) -> None:
    with (
        running_daemon(isolated_home, tiny_gguf_path) as started,
        openai.OpenAI(base_url=started.url + "/v1", api_key="x", max_retries=0) as client,
    ):
        first = client.responses.create(
            model=MODEL, input="a shared beginning " * 20, max_output_tokens=4, temperature=0
        )
        second = client.responses.create(
            model=MODEL, input="then a question", previous_response_id=first.id, max_output_tokens=4
        )
        assert first.usage is not None and second.usage is not None
        # Turn 2 read the first turn's prompt from the prefix cache, not again.
        assert second.usage.input_tokens_details.cached_tokens >= first.usage.input_tokens - 1
        assert second.usage.input_tokens > first.usage.input_tokens + 4
    with (
        running_daemon(isolated_home) as again,
        openai.OpenAI(base_url=again.url + "/v1", api_key="x", max_retries=0) as client,
    ):
        assert client.responses.retrieve(second.id).output_text == second.output_text
        third = client.responses.create(
            model=MODEL, input="and then?", previous_response_id=second.id, max_output_tokens=2
        )
        assert third.usage is not None
        assert third.usage.input_tokens > second.usage.input_tokens + 4
        items = client.responses.input_items.list(third.id, order="asc")
        roles = [(i.type, getattr(i, "role", None)) for i in items.data]
        assert roles == [
            ("message", "user"),
            ("message", "assistant"),
            ("message", "user"),
            ("message", "assistant"),
            ("message", "user"),
        ]
        client.responses.delete(second.id)
        with pytest.raises(openai.NotFoundError, match=second.id):
            client.responses.retrieve(second.id)
        with pytest.raises(openai.NotFoundError, match=second.id):
            client.responses.create(model=MODEL, input="x", previous_response_id=second.id)
        # The third holds its whole conversation: it goes on without the second.
        assert client.responses.create(
            model=MODEL, input="more", previous_response_id=third.id, max_output_tokens=1
        ).usage


def test_store_false_keeps_nothing(client: openai.OpenAI) -> None:
    response = client.responses.create(model=MODEL, input="Hi", max_output_tokens=1, store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"tools": [{"type": "web_search"}]}, "'web_search', which localserve cannot run"),
        ({"tools": [{"type": "file_search", "vector_store_ids": ["v"]}]}, "'file_search'"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "'item_reference'"),
        ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema"),
    ],
)
def test_bad_requests(client: openai.OpenAI, extra: dict[str, object], message: str) -> None:
    body = {"model": MODEL, "input": "Hi", **extra}
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(**body)  # type: ignore[call-overload]
    assert message in caught.value.message
    assert caught.value.type == "invalid_request_error"  # type: ignore[attr-defined]


def test_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError, match="resp_nothere"):
        client.responses.retrieve("resp_nothere")
    with pytest.raises(openai.NotFoundError, match="no-such-model"):
        client.responses.create(model="no-such-model", input="Hi")
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(
            model=MODEL, input="many words " * 200, extra_body={"num_ctx": 64}, stream=True
        )
    assert (caught.value.code, caught.value.param) == ("context_length_exceeded", "input")
    found = re.fullmatch(
        r"This model's maximum context length is 64 tokens\. However, your input resulted in "
        r"(\d+) tokens\. Please reduce the length of the input\.",
        caught.value.body["message"],  # type: ignore[index]
    )
    assert found is not None and int(found[1]) > 64


def test_a_runner_crash_mid_stream_fails_the_response(
    client: openai.OpenAI, daemon: Daemon
) -> None:
    failed = None
    for _ in range(3):  # the tiny model is fast: a run may end before the kill lands
        with client.responses.stream(model=MODEL, input="Hi", max_output_tokens=100000) as stream:
            for event in stream:
                daemon.kill_runners()
                if event.type == "response.failed":
                    failed = event.response
        if failed is not None:
            break
    assert failed is not None and failed.status == "failed"
    assert failed.error is not None and "runner" in failed.error.message
    assert client.responses.create(model=MODEL, input="Hi", max_output_tokens=2).usage
