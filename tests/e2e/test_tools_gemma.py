"""Tool calls and thinking from a real model, through the official clients.

Gemma 3 270M is a base model with no chat template; it gets one of ours (Qwen 3
style: Hermes calls and <think> blocks) with the gguf metadata writer. Under greedy
decoding it copies the pattern of a few-shot history, so its calls and its thinking
are reproducible. Gemma's vocabulary does not know ``<|im_end|>`` as the end of a
turn (a real Qwen does), so the requests add it as a stop string.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ollama
import openai
import pytest

from tests.support import chat_templates
from tests.support.daemon import Daemon, add_model, running_daemon

pytestmark = pytest.mark.slow

MODEL = "gemma-tools"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def _call(city: str) -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": city}}}
        ],
    }


FEW_SHOT_TOOLS: list[dict[str, Any]] = [
    {"role": "user", "content": "What is the weather in Rome?"},
    _call("Rome"),
    {"role": "tool", "content": "18 C, sunny"},
    {"role": "assistant", "content": "It is 18 C and sunny in Rome."},
    {"role": "user", "content": "What is the weather in Oslo?"},
    _call("Oslo"),
    {"role": "tool", "content": "2 C, snow"},
    {"role": "assistant", "content": "It is 2 C with snow in Oslo."},
    {"role": "user", "content": "What is the weather in Paris?"},
]
FEW_SHOT_THINKING: list[dict[str, Any]] = [
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "reasoning_content": "Two plus two is four.", "content": "4"},
    {"role": "user", "content": "What is 3 + 3?"},
    {"role": "assistant", "reasoning_content": "Three plus three is six.", "content": "6"},
    {"role": "user", "content": "What is 4 + 4?"},
]
STOP = ["<|im_end|>"]
OPTIONS = {"temperature": 0, "num_predict": 60, "stop": STOP}


def with_template(source: Path, target: Path, template: str) -> Path:
    """A copy of ``source`` carrying ``template`` (gguf's own metadata writer)."""
    template_file = target.with_suffix(".jinja")
    template_file.write_text(template)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "gguf.scripts.gguf_new_metadata",
            str(source),
            str(target),
            "--chat-template-file",
            str(template_file),
            "--force",
        ],
        check=True,
        capture_output=True,
    )
    return target


@pytest.fixture(scope="module")
def gemma_daemon(
    tmp_path_factory: pytest.TempPathFactory, gemma_gguf_path: Path
) -> Iterator[Daemon]:
    folder = tmp_path_factory.mktemp("gemma-tools")
    model = with_template(gemma_gguf_path, folder / "gemma-qwen3.gguf", chat_templates.QWEN3)
    home = folder / "localserve-home"
    # Debug: the runner logs each prompt (Daemon.next_logged_prompt).
    env = {"LOCALSERVE_CONTEXT_LENGTH": "2048", "LOCALSERVE_DEBUG": "1"}
    with running_daemon(home, env=env) as started:
        add_model(home, model, MODEL)
        yield started


@pytest.fixture
def client(gemma_daemon: Daemon) -> Iterator[ollama.Client]:
    with ollama.Client(host=gemma_daemon.url, timeout=120) as client:
        yield client


@pytest.fixture
def oai(gemma_daemon: Daemon) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gemma_daemon.url + "/v1", api_key="unused", timeout=120) as client:
        yield client


def test_ollama_auto_tool_call_whole_and_streamed(client: ollama.Client) -> None:
    result = client.chat(MODEL, FEW_SHOT_TOOLS, tools=[WEATHER], options=OPTIONS)
    calls = result.message.tool_calls or []
    assert [(c.function.name, dict(c.function.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris"})
    ], result.message
    assert result.message.content == "" and result.done_reason == "stop"

    chunks = list(client.chat(MODEL, FEW_SHOT_TOOLS, tools=[WEATHER], options=OPTIONS, stream=True))
    streamed = [c for chunk in chunks for c in chunk.message.tool_calls or []]
    assert [(c.function.name, dict(c.function.arguments)) for c in streamed] == [
        ("get_weather", {"city": "Paris"})
    ]
    assert "".join(chunk.message.content or "" for chunk in chunks) == ""


def test_openai_auto_tool_call_whole_and_streamed(oai: openai.OpenAI) -> None:
    extra = {"temperature": 0, "max_tokens": 60, "stop": STOP}
    completion = oai.chat.completions.create(
        model=MODEL,
        messages=FEW_SHOT_TOOLS,  # type: ignore[arg-type]
        tools=[WEATHER],  # type: ignore[list-item]
        **extra,  # type: ignore[arg-type]
    )
    (choice,) = completion.choices
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}

    stream = oai.chat.completions.create(
        model=MODEL,
        messages=FEW_SHOT_TOOLS,  # type: ignore[arg-type]
        tools=[WEATHER],  # type: ignore[list-item]
        stream=True,
        **extra,  # type: ignore[arg-type]
    )
    name, arguments, finish = "", "", None
    for chunk in stream:
        for delta in chunk.choices[0].delta.tool_calls or []:
            name += (delta.function and delta.function.name) or ""
            arguments += (delta.function and delta.function.arguments) or ""
        finish = chunk.choices[0].finish_reason or finish
    assert (name, json.loads(arguments), finish) == ("get_weather", {"city": "Paris"}, "tool_calls")


def test_tool_choice_none_gives_no_call(oai: openai.OpenAI, gemma_daemon: Daemon) -> None:
    """The history that makes Gemma call get_weather (the tests above), with
    ``tool_choice: "none"``: the runner leaves the tools out of the prompt and builds no
    call grammar and no call parser, so no call comes back, whatever Gemma writes."""
    extra = {"temperature": 0, "max_tokens": 60, "stop": STOP}

    def ask(choice: str) -> tuple[Any, str]:
        seen = len(gemma_daemon.logged_prompts())
        completion = oai.chat.completions.create(
            model=MODEL,
            messages=FEW_SHOT_TOOLS,  # type: ignore[arg-type]
            tools=[WEATHER],  # type: ignore[list-item]
            tool_choice=choice,  # type: ignore[arg-type]
            **extra,  # type: ignore[arg-type]
        )
        (choice_made,) = completion.choices
        return choice_made, gemma_daemon.next_logged_prompt(seen)

    # The control: the same request with "auto" calls, and its prompt lists the tool.
    called, auto_prompt = ask("auto")
    assert called.finish_reason == "tool_calls" and called.message.tool_calls, called
    assert "<tools>" in auto_prompt and "Current weather in a city." in auto_prompt

    answer, prompt = ask("none")
    assert answer.finish_reason == "stop" and not answer.message.tool_calls, answer
    assert "<tools>" not in prompt and "Current weather in a city." not in prompt
    # The history's calls are still in it (they are the conversation, not the tools).
    assert prompt.count("<tool_call>") == 2 and prompt.count("<tool_response>") == 2
    # Gemma copies the history's calls as it would under "auto" (this build writes the
    # call's text): it stays text.
    assert answer.message.content


def test_langchain_bind_tools(gemma_daemon: Daemon) -> None:
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
    from langchain_core.tools import tool
    from langchain_ollama import ChatOllama

    @tool
    def get_weather(city: str) -> str:
        """Current weather in a city."""
        return "mild"

    history: list[Any] = []
    for index, (city, weather, answer) in enumerate(
        [
            ("Rome", "18 C, sunny", "It is 18 C and sunny in Rome."),
            ("Oslo", "2 C, snow", "It is 2 C with snow in Oslo."),
        ]
    ):
        call_id = f"call_{index}"
        history += [
            HumanMessage(f"What is the weather in {city}?"),
            AIMessage(
                "", tool_calls=[{"name": "get_weather", "args": {"city": city}, "id": call_id}]
            ),
            ToolMessage(weather, tool_call_id=call_id),
            AIMessage(answer),
        ]
    history.append(HumanMessage("What is the weather in Paris?"))
    llm = ChatOllama(
        model=MODEL, base_url=gemma_daemon.url, temperature=0, num_predict=60, stop=STOP
    )
    try:
        reply = llm.bind_tools([get_weather]).invoke(history)
    finally:
        llm._client.close()  # ChatOllama never closes its ollama.Client (an open socket)
    assert [(c["name"], c["args"]) for c in reply.tool_calls] == [
        ("get_weather", {"city": "Paris"})
    ]


def test_thinking_split_from_the_answer(client: ollama.Client, oai: openai.OpenAI) -> None:
    # Ollama's name for a turn's reasoning is "thinking" (its client drops other keys).
    ollama_history = [
        {"role": m["role"], "content": m["content"], "thinking": m.get("reasoning_content")}
        for m in FEW_SHOT_THINKING
    ]
    result = client.chat(MODEL, ollama_history, think=True, options=OPTIONS)
    assert "plus" in (result.message.thinking or ""), result.message
    assert result.message.content.strip() == "8"
    assert "<think>" not in result.message.content and "</think>" not in result.message.content

    chunks = list(client.chat(MODEL, ollama_history, think=True, options=OPTIONS, stream=True))
    assert "".join(c.message.thinking or "" for c in chunks) == result.message.thinking
    assert "".join(c.message.content or "" for c in chunks) == result.message.content

    hidden = client.chat(MODEL, ollama_history, think=False, options=OPTIONS)
    assert hidden.message.thinking is None and "<think>" not in hidden.message.content

    completion = oai.chat.completions.create(
        model=MODEL,
        messages=FEW_SHOT_THINKING,  # type: ignore[arg-type]
        temperature=0,
        max_tokens=60,
        stop=STOP,
        reasoning_effort="low",
    )
    message = completion.choices[0].message
    assert "plus" in (getattr(message, "reasoning_content", None) or "")
    assert (message.content or "").strip() == "8"
