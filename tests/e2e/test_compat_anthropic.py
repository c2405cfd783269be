"""The official ``anthropic`` SDK against a real daemon's /v1/messages (tests/support/daemon.py).

The SDK is the judge: its response models parse every answer, its stream accumulator
checks the event order. The models are the tiny random ones (with templates that take
tools and think, and with the tiny projector for images), so checks are about shapes,
counts, reasons and grammars, never about words; tests/e2e/test_anthropic_gemma.py has
a real tool loop.

This SDK no longer takes ``temperature`` as an argument (newer models ignore it); other
clients send it, so greedy requests here pass it as an extra body field.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import numpy as np
import pytest
from PIL import Image

from tests.support.daemon import Daemon, add_model, add_tool_models, running_daemon
from tests.support.tiny_projector import write_tiny_projector

MODEL = "tiny"
USER: Any = [{"role": "user", "content": "Hello!"}]
GREEDY: Any = {"temperature": 0}
IMAGE_TOKENS = 4  # the tiny projector turns a 32x32 picture into 4 embeddings
WEATHER: Any = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {
        "type": "object",
        # Every part bounded, so random weights finish the call within max_tokens.
        "properties": {
            "city": {"type": "string", "enum": ["Paris", "Rome", "Oslo"]},
            "days": {"type": "integer"},
        },
        "required": ["city", "days"],
        "additionalProperties": False,
    },
}
TIME: Any = {
    "name": "get_time",
    "input_schema": {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 8}}},
}
ASK: Any = [{"role": "user", "content": "Weather in Paris for 3 days?"}]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, tiny_gguf_path: Path) -> Iterator[Daemon]:
    """The tiny model, its tool and thinking variants, and a vision one."""
    home = tmp_path_factory.mktemp("anthropic") / "localserve-home"
    folder = tmp_path_factory.mktemp("anthropic-models")
    with running_daemon(home, tiny_gguf_path) as started:
        add_tool_models(home, folder)
        add_model(home, tiny_gguf_path, "tiny-vision", write_tiny_projector(folder / "p.gguf"))
        yield started


@pytest.fixture
def client(daemon: Daemon) -> Iterator[anthropic.Anthropic]:
    # No retries: an error must show as the error it is, not as a slow pass.
    with anthropic.Anthropic(
        base_url=daemon.url, api_key="unused", max_retries=0, timeout=120
    ) as client:
        yield client


def png(seed: int, side: int = 32) -> str:
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


# ------------------------------------------------------------------ messages


def test_create(client: anthropic.Anthropic) -> None:
    message = client.messages.create(model=MODEL, max_tokens=8, messages=USER, extra_body=GREEDY)
    assert message.type == "message" and message.role == "assistant"
    assert message.id.startswith("msg_") and message.model == MODEL
    (block,) = message.content
    assert block.type == "text" and block.text
    assert message.stop_reason == "max_tokens" and message.stop_sequence is None
    usage = message.usage
    assert usage.output_tokens == 8 and usage.cache_creation_input_tokens == 0
    assert usage.input_tokens + (usage.cache_read_input_tokens or 0) > 5


def test_stream_text_and_final_message(client: anthropic.Anthropic) -> None:
    with client.messages.stream(
        model=MODEL, max_tokens=6, messages=USER, extra_body=GREEDY
    ) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    whole = client.messages.create(model=MODEL, max_tokens=6, messages=USER, extra_body=GREEDY)
    assert streamed and [b.type for b in final.content] == ["text"]
    assert streamed == final.content[0].text == whole.content[0].text  # type: ignore[union-attr]
    assert final.stop_reason == "max_tokens" and final.usage.output_tokens == 6
    assert final.id.startswith("msg_")


def test_the_sse_framing(daemon: Daemon) -> None:
    body = {"model": MODEL, "max_tokens": 3, "messages": USER, "stream": True}
    with httpx.stream("POST", daemon.url + "/v1/messages", json=body, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].split(";")[0] == "text/event-stream"
        text = response.read().decode()
    frames = [frame.split("\n") for frame in text.split("\n\n") if frame]
    names = [name.removeprefix("event: ") for name, _ in frames]
    assert all(
        json.loads(data.removeprefix("data: "))["type"] == n
        for n, (_, data) in zip(names, frames, strict=True)
    )
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    assert names[1] == "content_block_start" and names[-3] == "content_block_stop"
    assert set(names[2:-3]) == {"content_block_delta"}
    start = json.loads(frames[0][1][6:])["message"]
    # The runner had taken the job when the stream opened: the prompt's length is known.
    assert start["usage"]["input_tokens"] + start["usage"]["cache_read_input_tokens"] > 5


def test_stop_sequences_and_a_single_call_cap(client: anthropic.Anthropic) -> None:
    free = client.messages.create(model=MODEL, max_tokens=12, messages=USER, extra_body=GREEDY)
    text = free.content[0].text  # type: ignore[union-attr]
    stop = text[len(text) // 2 :][:2]  # two characters from its middle
    assert stop.strip(), text
    stopped = client.messages.create(
        model=MODEL, max_tokens=12, messages=USER, stop_sequences=[stop], extra_body=GREEDY
    )
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == stop
    assert stopped.content[0].text == text[: text.index(stop)]  # type: ignore[union-attr]


def test_count_tokens_is_the_prompt_a_message_reads(client: anthropic.Anthropic) -> None:
    """count_tokens renders and tokenizes as the message does: its count is the message's
    whole prompt (input_tokens read anew plus cache_read_input_tokens)."""
    system = "Answer in one word. (count-check)"
    messages: Any = [
        {"role": "user", "content": "What is the weather like today, in one word?"},
        {"role": "assistant", "content": "Sunny."},
        {"role": "user", "content": [{"type": "text", "text": "And tomorrow?"}]},
    ]
    counted = client.messages.count_tokens(
        model="tiny-tools", system=system, messages=messages, tools=[WEATHER]
    )
    message = client.messages.create(
        model="tiny-tools", max_tokens=1, system=system, messages=messages, tools=[WEATHER]
    )
    usage = message.usage
    assert counted.input_tokens == usage.input_tokens + (usage.cache_read_input_tokens or 0)
    without_tools = client.messages.count_tokens(
        model="tiny-tools", system=system, messages=messages
    )
    assert without_tools.input_tokens + 20 < counted.input_tokens  # the tools are in the prompt


def test_the_prefix_cache_shows_as_cache_reads(client: anthropic.Anthropic) -> None:
    messages: Any = [{"role": "user", "content": "a shared beginning " * 20 + "then a question"}]
    first = client.messages.create(model=MODEL, max_tokens=1, messages=messages)
    again = client.messages.create(model=MODEL, max_tokens=1, messages=messages)
    whole = first.usage.input_tokens + (first.usage.cache_read_input_tokens or 0)
    assert again.usage.input_tokens + (again.usage.cache_read_input_tokens or 0) == whole
    assert whole // 2 < (again.usage.cache_read_input_tokens or 0) < whole


# ------------------------------------------------------------- tools, thinking


@pytest.mark.parametrize("choice", [{"type": "any"}, {"type": "tool", "name": "get_weather"}])
def test_enforced_tool_choice_gives_a_valid_call_even_from_random_weights(
    client: anthropic.Anthropic, choice: Any
) -> None:
    tools = [WEATHER] if choice["type"] == "any" else [TIME, WEATHER]
    for _ in range(3):  # sampled, not greedy: the grammar holds for any draw
        message = client.messages.create(
            model="tiny-tools",
            max_tokens=300,
            messages=ASK,
            tools=tools,
            tool_choice={**choice, "disable_parallel_tool_use": True},
            extra_body={"temperature": 1.0},
        )
        assert message.stop_reason == "tool_use", message
        (call,) = [b for b in message.content if b.type == "tool_use"]
        assert call.id.startswith("toolu_") and call.name == "get_weather"
        assert set(call.input) == {"city", "days"}  # type: ignore[arg-type]
        assert call.input["city"] in ("Paris", "Rome", "Oslo")  # type: ignore[index]
        assert isinstance(call.input["days"], int)  # type: ignore[index]


def test_a_streamed_call_is_one_tool_use_block(client: anthropic.Anthropic) -> None:
    with client.messages.stream(
        model="tiny-tools",
        max_tokens=300,
        messages=ASK,
        tools=[WEATHER],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
    ) as stream:
        kinds = [(e.type, getattr(getattr(e, "delta", None), "type", None)) for e in stream]
        final = stream.get_final_message()
    assert ("content_block_delta", "input_json_delta") in kinds
    (call,) = [b for b in final.content if b.type == "tool_use"]
    assert call.name == "get_weather" and call.input["city"] in ("Paris", "Rome", "Oslo")  # type: ignore[index]
    assert final.stop_reason == "tool_use"


def test_tool_choice_none_calls_nothing(client: anthropic.Anthropic) -> None:
    message = client.messages.create(
        model="tiny-tools",
        max_tokens=5,
        messages=ASK,
        tools=[WEATHER],
        tool_choice={"type": "none"},
        extra_body=GREEDY,
    )
    assert message.stop_reason == "max_tokens"
    assert [b.type for b in message.content] == ["text"]


def test_thinking_comes_in_thinking_blocks(client: anthropic.Anthropic) -> None:
    """tiny-r1's prompt opens the thinking block: its answer starts as reasoning."""
    thinking: Any = {"type": "enabled", "budget_tokens": 1024}
    message = client.messages.create(
        model="tiny-r1", max_tokens=10, messages=USER, thinking=thinking, extra_body=GREEDY
    )
    (block,) = message.content
    assert block.type == "thinking" and block.thinking and block.signature
    with client.messages.stream(
        model="tiny-r1", max_tokens=10, messages=USER, thinking=thinking, extra_body=GREEDY
    ) as stream:
        deltas = [e.delta.type for e in stream if e.type == "content_block_delta"]
        final = stream.get_final_message()
    assert set(deltas) == {"thinking_delta", "signature_delta"}
    assert deltas[-1] == "signature_delta"  # the block ends with its signature
    assert final.content[0] == block
    # The conversation goes on with the thinking block in it, signature and all.
    again = client.messages.create(
        model="tiny-r1",
        max_tokens=2,
        messages=[*USER, {"role": "assistant", "content": message.content}, *USER],
        extra_body=GREEDY,
    )
    assert again.content


# ------------------------------------------------------------------- images


def test_an_image_block(client: anthropic.Anthropic) -> None:
    def ask(content: Any) -> anthropic.types.Message:
        return client.messages.create(
            model="tiny-vision",
            max_tokens=1,
            messages=[{"role": "user", "content": content}],
            extra_body=GREEDY,
        )

    def prompt(message: anthropic.types.Message) -> int:
        return message.usage.input_tokens + (message.usage.cache_read_input_tokens or 0)

    text_only = ask([{"type": "text", "text": "What is it?"}])
    source = {"type": "base64", "media_type": "image/png", "data": png(1)}
    seen = ask([{"type": "image", "source": source}, {"type": "text", "text": "What is it?"}])
    assert prompt(seen) >= prompt(text_only) + IMAGE_TOKENS
    with pytest.raises(anthropic.BadRequestError, match="does not fetch URLs"):
        ask([{"type": "image", "source": {"type": "url", "url": "http://169.254.169.254/x.png"}}])
    with pytest.raises(anthropic.BadRequestError, match="tiny does not support images"):
        client.messages.create(
            model=MODEL,
            max_tokens=1,
            messages=[{"role": "user", "content": [{"type": "image", "source": source}]}],  # type: ignore[list-item]
        )


# ------------------------------------------------------------------- errors


def test_errors_are_the_sdks_exceptions(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as bad:
        client.messages.create(model=MODEL, max_tokens=5, messages=USER, extra_body={"top_k": -1})
    assert bad.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(model="claude-sonnet-4-5", max_tokens=5, messages=USER)
    assert "localserve cp MODEL claude-sonnet-4-5" in missing.value.body["error"]["message"]  # type: ignore[index]
    with pytest.raises(anthropic.NotFoundError):
        client.messages.count_tokens(model="claude-haiku-4-5", messages=USER)


@pytest.mark.parametrize("stream", [False, True])
def test_a_prompt_over_the_context_is_prompt_too_long(
    client: anthropic.Anthropic, stream: bool
) -> None:
    """What Claude Code looks for before it compacts a conversation: Anthropic's words,
    with both lengths, from the real runner (the tiny model's context is 2048)."""
    long: Any = [{"role": "user", "content": "many words " * 1500}]
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(model=MODEL, max_tokens=1, messages=long, stream=stream)
    message = caught.value.body["error"]["message"]  # type: ignore[index]
    assert message.startswith("prompt is too long: ") and message.endswith(" maximum")
    tokens, limit = (int(n) for n in message[20:-8].split(" tokens > "))
    assert tokens > limit > 0
    counted = client.messages.count_tokens(model=MODEL, messages=long)
    assert counted.input_tokens == tokens  # counted whole, as the refusal says


def test_a_runner_crash_mid_stream_is_an_error_event(
    client: anthropic.Anthropic, daemon: Daemon
) -> None:
    raised: anthropic.APIStatusError | None = None
    for _ in range(3):  # the tiny model is fast: a run may end before the kill lands
        try:
            with client.messages.stream(model=MODEL, max_tokens=100000, messages=USER) as stream:
                for event in stream:
                    if event.type == "content_block_delta":
                        daemon.kill_runners()
        except anthropic.APIStatusError as exc:
            raised = exc
            break
    assert raised is not None and raised.body["error"]["type"] == "api_error"  # type: ignore[index]
    assert "runner" in raised.body["error"]["message"]  # type: ignore[index]
    again = client.messages.create(model=MODEL, max_tokens=2, messages=USER)
    assert again.stop_reason == "max_tokens"


def test_the_api_key_from_either_header(tiny_gguf_path: Path, isolated_home: Path) -> None:
    env = {"LOCALSERVE_API_KEY": "s3cret"}
    with running_daemon(isolated_home, tiny_gguf_path, env=env) as started:
        for key in ({"api_key": "s3cret"}, {"auth_token": "s3cret"}):  # x-api-key, Bearer
            with anthropic.Anthropic(base_url=started.url, max_retries=0, **key) as good:  # type: ignore[arg-type]
                assert good.messages.create(model=MODEL, max_tokens=1, messages=USER).content
        with (
            anthropic.Anthropic(base_url=started.url, api_key="wrong", max_retries=0) as bad,
            pytest.raises(anthropic.AuthenticationError),
        ):
            bad.messages.create(model=MODEL, max_tokens=1, messages=USER)
