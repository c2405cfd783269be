"""Claude Code, non-interactive (``claude -p ... --output-format json``), against a real
daemon at its default context (issue 29): its first request is ~19.5k tokens of system
prompt and tool definitions over /v1/messages, streamed. Claude Code is the judge: it
must get an answer (``is_error: false``). A second task in the same HOME reads its system
prompt and tools from the prefix cache (``cache_read_input_tokens``).

The model is Gemma 3 270M with a tool-calling template (Claude Code always sends tools),
created as a model whose parameters make a base model end its turn: greedy, and a stop at
the end of its first line (a base model does not stop by itself, and Claude Code reports
an answer cut at its output cap as an error; NOTES-agents). What it says is not the
point; that Claude Code's requests, its stream and its stop are understood is.

Claude Code comes from npm: .ci/run installs it under .cache/agents (the version pinned
there); elsewhere the test skips, saying how to install it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.test_tools_gemma import with_template
from tests.support import chat_templates
from tests.support.claude_code import CLAUDE
from tests.support.claude_code import claude as run_claude
from tests.support.daemon import Daemon, add_model, running_daemon

pytestmark = pytest.mark.slow

MODEL = "gemma"
# Minutes on two cores: the first prompt is read whole (llama-server: 110 s).
AGENT_TIMEOUT = 1800


@pytest.fixture(scope="module")
def agent_daemon(
    tmp_path_factory: pytest.TempPathFactory, gemma_gguf_path: Path
) -> Iterator[Daemon]:
    folder = tmp_path_factory.mktemp("claude-code")
    model = with_template(gemma_gguf_path, folder / "gemma-qwen3.gguf", chat_templates.QWEN3)
    home = folder / "home"
    with running_daemon(home) as started:  # no LOCALSERVE_CONTEXT_LENGTH: the default
        add_model(home, model, "gemma-tools")
        created = httpx.post(
            started.url + "/api/create",
            json={
                "model": MODEL,
                "from": "gemma-tools",
                "parameters": {"temperature": 0, "stop": ["<|im_end|>", "\n"]},
                "stream": False,
            },
            timeout=60,
        )
        assert created.status_code == 200, created.text
        yield started


def claude(daemon: Daemon, home: Path, prompt: str) -> dict[str, Any]:
    return run_claude(daemon.url, home, prompt, model=MODEL, timeout=AGENT_TIMEOUT)


@pytest.mark.skipif(
    not CLAUDE.exists(),
    reason="Claude Code is not installed: npm install --prefix .cache/agents "
    "@anthropic-ai/claude-code (.ci/run does)",
)
@pytest.mark.timeout(2 * AGENT_TIMEOUT)
def test_claude_code_gets_an_answer(agent_daemon: Daemon, tmp_path: Path) -> None:
    home = tmp_path / "agent-home"
    first = claude(agent_daemon, home, "Say hello.")
    assert first["is_error"] is False, first
    assert first["result"], first
    usage = first["usage"]
    prompt = usage["input_tokens"] + usage["cache_read_input_tokens"]
    assert prompt > 10_000, usage  # its system prompt and tools, read at the default context
    [model] = httpx.get(agent_daemon.url + "/api/ps").json()["models"]
    assert model["context_length"] == 32768

    # Another task in the same project: its system prompt and tools come from the prefix
    # cache (Claude Code's billing line, which changes with the prompt, is left out of
    # the system prompt); only its turn is read anew.
    again = claude(agent_daemon, home, "What is two plus two?")
    assert again["is_error"] is False, again
    reused = again["usage"]["cache_read_input_tokens"]
    assert reused > 0.8 * prompt, again["usage"]
