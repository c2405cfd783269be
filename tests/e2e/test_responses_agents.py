"""Agents on the Responses API against a real daemon at its default context, with Gemma
3 270M carrying a tool-calling template (Qwen 3 style, as test_tools_gemma.py): a
function-calling loop through the ``openai`` package, the OpenAI Agents SDK's
``Runner.run`` with one function tool, and Codex itself (``codex exec``).

Gemma is a base model: under greedy decoding it copies the pattern of a few-shot history,
so its calls are reproducible. Its vocabulary does not know ``<|im_end|>`` as the end of
a turn, so the models here are derived ones (``/api/create``) that stop there and cap
their output: the Responses API has no ``stop``, and Codex sends no output limit
(NOTES-agents). Codex's model also carries two example exchanges (a Modelfile's
MESSAGE), so that Gemma writes a short answer and ends its turn.

Codex comes from npm: .ci/run installs it under .cache/agents (the version pinned
there); elsewhere its test skips, saying how to install it.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.test_tools_gemma import with_template
from tests.support import chat_templates
from tests.support.daemon import REPO_ROOT, Daemon, add_model, running_daemon

pytestmark = pytest.mark.slow

CODEX = REPO_ROOT / ".cache" / "agents" / "node_modules" / ".bin" / "codex"
# Two short exchanges before the agent's turn, so that Gemma answers briefly.
BRIEF_EXAMPLES = [
    {"role": "user", "content": "Say goodbye."},
    {"role": "assistant", "content": "Goodbye!"},
    {"role": "user", "content": "Say thanks."},
    {"role": "assistant", "content": "Thanks!"},
]
AGENT = "gemma-agent"
STOP = ["<|im_end|>"]
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


def _asked(city: str, call: str, weather: str, answer: str) -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": f"What is the weather in {city}?"},
        {
            "type": "function_call",
            "call_id": call,
            "name": "get_weather",
            "arguments": json.dumps({"city": city}),
        },
        {"type": "function_call_output", "call_id": call, "output": weather},
        {"role": "assistant", "content": answer},
    ]


# The history that makes Gemma call get_weather for Paris (test_tools_gemma.py's, as
# Responses items).
FEW_SHOT: list[dict[str, Any]] = [
    *_asked("Rome", "call_rome", "18 C, sunny", "It is 18 C and sunny in Rome."),
    *_asked("Oslo", "call_oslo", "2 C, snow", "It is 2 C with snow in Oslo."),
    {"role": "user", "content": "What is the weather in Paris?"},
]


def create_model(daemon: Daemon, name: str, **fields: Any) -> None:
    body = {"model": name, "from": "gemma", "stream": False, **fields}
    answer = httpx.post(daemon.url + "/api/create", json=body, timeout=120)
    assert answer.status_code == 200, answer.text


@pytest.fixture(scope="module")
def agent_daemon(
    tmp_path_factory: pytest.TempPathFactory, gemma_gguf_path: Path
) -> Iterator[Daemon]:
    folder = tmp_path_factory.mktemp("responses-agents")
    model = with_template(gemma_gguf_path, folder / "gemma-qwen3.gguf", chat_templates.QWEN3)
    home = folder / "home"
    with running_daemon(home) as started:  # no LOCALSERVE_CONTEXT_LENGTH: the default
        add_model(home, model, "gemma")
        greedy = {"temperature": 0, "num_predict": 64, "stop": STOP}
        create_model(started, AGENT, parameters=greedy)
        create_model(started, "gemma-codex", parameters=greedy, messages=BRIEF_EXAMPLES)
        yield started


def test_function_calling_loop(agent_daemon: Daemon) -> None:
    with openai.OpenAI(
        base_url=agent_daemon.url + "/v1", api_key="unused", max_retries=0, timeout=300
    ) as client:
        first = client.responses.create(model=AGENT, input=FEW_SHOT, tools=[WEATHER])  # type: ignore[arg-type,list-item]
        (call,) = [item for item in first.output if item.type == "function_call"]
        assert (call.name, json.loads(call.arguments)) == ("get_weather", {"city": "Paris"})
        assert first.status == "completed"
        result = {"type": "function_call_output", "call_id": call.call_id, "output": "25 C, clear"}
        second = client.responses.create(
            model=AGENT,
            previous_response_id=first.id,
            input=[result],  # type: ignore[list-item]
            tools=[WEATHER],  # type: ignore[list-item]
        )
        assert second.status == "completed"
        assert "25 C" in second.output_text and "Paris" in second.output_text
        assert not [item for item in second.output if item.type == "function_call"]
        # Turn 2 read only what was new: turn 1's prompt and answer came from the prefix
        # cache (but the last position, which is always computed again).
        assert first.usage is not None and second.usage is not None
        turn_one = first.usage.input_tokens + first.usage.output_tokens
        assert second.usage.input_tokens_details.cached_tokens >= turn_one - 1


def test_agents_sdk_tool_round_trip(agent_daemon: Daemon) -> None:
    from agents import (
        Agent,
        ModelSettings,
        OpenAIResponsesModel,
        Runner,
        function_tool,
        set_tracing_disabled,
    )

    set_tracing_disabled(True)  # traces would go to OpenAI's servers
    asked: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """Current weather in a city."""
        asked.append(city)
        return "25 C, clear"

    async def run() -> Any:
        async with openai.AsyncOpenAI(
            base_url=agent_daemon.url + "/v1", api_key="unused", max_retries=0, timeout=300
        ) as client:
            agent = Agent(
                name="weather",
                tools=[get_weather],
                model=OpenAIResponsesModel(model=AGENT, openai_client=client),
                model_settings=ModelSettings(temperature=0, max_tokens=64),
            )
            return await Runner.run(agent, FEW_SHOT, max_turns=4)  # type: ignore[arg-type]

    result = asyncio.run(run())
    assert asked == ["Paris"]
    kinds = [item.type for item in result.new_items]
    assert kinds == ["tool_call_item", "tool_call_output_item", "message_output_item"], kinds
    assert "25 C" in result.final_output


@pytest.mark.timeout(1500)
@pytest.mark.skipif(
    not CODEX.exists(),
    reason="Codex is not installed: npm install --prefix .cache/agents @openai/codex (.ci/run does)",
)
def test_codex_exec_gets_an_answer(agent_daemon: Daemon, tmp_path: Path) -> None:
    home = tmp_path / "agent-home"
    codex_home = home / ".codex"
    codex_home.mkdir(parents=True)
    # Codex offers a web search tool (which this server cannot run: a 400) and sub-agent
    # tools unless told not to.
    (codex_home / "config.toml").write_text(
        f"""model = "gemma-codex"
model_provider = "localserve"
web_search = "disabled"

[agents]
enabled = false

[model_providers.localserve]
name = "localserve"
base_url = "{agent_daemon.url}/v1"
wire_api = "responses"
"""
    )
    work = tmp_path / "project"
    work.mkdir()
    done = subprocess.run(
        [str(CODEX), "exec", "--skip-git-repo-check", "Say hello."],
        cwd=work,
        env={**os.environ, "HOME": str(home), "CODEX_HOME": str(codex_home)},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip(), done.stderr[-3000:]
