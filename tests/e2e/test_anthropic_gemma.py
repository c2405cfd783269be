"""A tool loop and thinking through the ``anthropic`` SDK on a real model: Gemma 3 270M
with a Qwen 3 style template (Hermes calls, <think> blocks; tests/e2e/test_tools_gemma.py
says why), which under greedy decoding copies the pattern of a few-shot history.

The loop as an agent runs it: the model answers ``tool_use``, the client runs the tool
and sends a ``tool_result``, the model answers in words. Gemma's vocabulary does not end
a turn at ``<|im_end|>``, so the requests stop there (and say so: ``stop_sequence``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import pytest

from tests.e2e.test_tools_gemma import MODEL, STOP, gemma_daemon
from tests.support.daemon import Daemon

__all__ = ["gemma_daemon"]  # the module-scoped fixture, imported to be used here

pytestmark = pytest.mark.slow

WEATHER: Any = {
    "name": "get_weather",
    "description": "Current weather in a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
GREEDY: Any = {"temperature": 0}


def _turn(city: str, weather: str, answer: str) -> list[dict[str, Any]]:
    call_id = f"toolu_{city.lower()}"
    return [
        {"role": "user", "content": f"What is the weather in {city}?"},
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": call_id, "name": "get_weather", "input": {"city": city}}
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": call_id, "content": weather}],
        },
        {"role": "assistant", "content": answer},
    ]


FEW_SHOT: list[dict[str, Any]] = [
    *_turn("Rome", "18 C, sunny", "It is 18 C and sunny in Rome."),
    *_turn("Oslo", "2 C, snow", "It is 2 C with snow in Oslo."),
    {"role": "user", "content": "What is the weather in Paris?"},
]


@pytest.fixture
def client(gemma_daemon: Daemon) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(
        base_url=gemma_daemon.url, api_key="unused", max_retries=0, timeout=120
    ) as client:
        yield client


def test_a_tool_loop(client: anthropic.Anthropic, gemma_daemon: Daemon) -> None:
    def ask(messages: list[dict[str, Any]]) -> anthropic.types.Message:
        return client.messages.create(
            model=MODEL,
            max_tokens=60,
            messages=messages,  # type: ignore[arg-type]
            tools=[WEATHER],
            stop_sequences=STOP,
            extra_body=GREEDY,
        )

    seen = len(gemma_daemon.logged_prompts())
    called = ask(FEW_SHOT)
    assert called.stop_reason == "tool_use", called
    (call,) = called.content
    assert call.type == "tool_use" and call.id.startswith("toolu_")
    assert (call.name, call.input) == ("get_weather", {"city": "Paris"})
    # The history's calls and results reached the template as calls and results.
    prompt = gemma_daemon.next_logged_prompt(seen)
    assert prompt.count('<tool_call>\n{"name": "get_weather"') == 2
    assert prompt.count("<tool_response>\n18 C, sunny\n</tool_response>") == 1
    assert "Current weather in a city." in prompt

    result = {"type": "tool_result", "tool_use_id": call.id, "content": "15 C, cloudy"}
    history = [
        *FEW_SHOT,
        {"role": "assistant", "content": [block.model_dump() for block in called.content]},
        {"role": "user", "content": [result]},
    ]
    answered = ask(history)
    assert (answered.stop_reason, answered.stop_sequence) == ("stop_sequence", "<|im_end|>")
    (text,) = answered.content
    assert text.type == "text" and "15 C" in text.text and "Paris" in text.text, text

    # The same first step streamed: one tool_use block, its input as one JSON delta.
    with client.messages.stream(
        model=MODEL,
        max_tokens=60,
        messages=FEW_SHOT,  # type: ignore[arg-type]
        tools=[WEATHER],
        stop_sequences=STOP,
        extra_body=GREEDY,
    ) as stream:
        final = stream.get_final_message()
    assert [(b.type, getattr(b, "input", None)) for b in final.content] == [
        ("tool_use", {"city": "Paris"})
    ]
    assert final.stop_reason == "tool_use"


def test_thinking_then_an_answer(client: anthropic.Anthropic) -> None:
    """A few-shot history whose answers think first: the reply's thinking comes in a
    thinking block (with a signature), its answer in a text block after it."""
    history: list[dict[str, Any]] = []
    for question, thought, answer in (
        ("What is 2 + 2?", "Two plus two is four.", "4"),
        ("What is 3 + 3?", "Three plus three is six.", "6"),
    ):
        history += [
            {"role": "user", "content": question},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": thought, "signature": "from-before"},
                    {"type": "text", "text": answer},
                ],
            },
        ]
    history.append({"role": "user", "content": "What is 4 + 4?"})
    message = client.messages.create(
        model=MODEL,
        max_tokens=40,
        messages=history,  # type: ignore[arg-type]
        thinking={"type": "enabled", "budget_tokens": 1024},
        stop_sequences=STOP,
        extra_body=GREEDY,
    )
    thinking, text = message.content
    assert thinking.type == "thinking" and "four" in thinking.thinking, message
    assert thinking.signature
    assert text.type == "text" and text.text.strip() == "8", message
