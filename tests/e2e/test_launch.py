"""`localserve launch` against real daemons on real ports.

The three real agents (Claude Code, Codex, OpenCode: installed by .ci/run under
.cache/agents, put on PATH here as a user's npm install puts them) are started by
`localserve launch TOOL --model NAME -- ARGS` with nothing but LOCALSERVE_HOME and
LOCALSERVE_HOST set, as a user would, and must each get an answer and exit 0: what
launch sets is all they need. The model is Gemma 3 270M with a tool-calling template
(they all send tools), made to end its turn at the end of its first line, as in
test_claude_code.py and test_responses_agents.py. Minutes each on two cores: their first
prompts are 7k to 20k tokens, read whole.

aider is not launched but set up by hand: the shell lines `launch aider --print` prints
are run as they are (aider is installed by .ci/run in a virtualenv of its own under
.cache/aider), and what aider prints must be Gemma's answer. Seconds: its prompt is 730
tokens.

A stand-in tool (LOCALSERVE_CLAUDE_BIN, a shell script) shows the rest cheaply, on the
tiny model: launch starts the daemon, warns that the context is too short for the tool,
and replaces itself with the tool, which gets the settings and the user's arguments.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_responses_agents import BRIEF_EXAMPLES, CODEX
from tests.e2e.test_responses_agents import create_model as create_from_gemma
from tests.e2e.test_tools_gemma import with_template
from tests.support import chat_templates
from tests.support.claude_code import CLAUDE
from tests.support.claude_code import claude as run_claude
from tests.support.daemon import (
    Daemon,
    add_model,
    daemon_env,
    free_port,
    running_daemon,
    stopped_afterwards,
)
from tests.support.fakehub import FakeHub

AGENTS = CLAUDE.parent  # .cache/agents/node_modules/.bin
OPENCODE = AGENTS / "opencode"
# aider comes from PyPI into a virtualenv of its own (it pins many packages): .ci/run.
AIDER = CLAUDE.parents[3] / "aider" / "bin" / "aider"
AGENT_TIMEOUT = 1800
# Greedy, one line: a base model does not end its turn by itself (NOTES-agents).
ONE_LINE = {"temperature": 0, "num_predict": 64, "stop": ["<|im_end|>", "\n"]}


def not_installed(binary: Path) -> pytest.MarkDecorator:
    folder = binary.relative_to(CLAUDE.parents[4]).parts[:2]
    return pytest.mark.skipif(
        not binary.exists(),
        reason=f"{binary.name} is not installed: .ci/run installs it under {'/'.join(folder)}",
    )


@pytest.fixture(scope="module")
def agent_daemon(
    tmp_path_factory: pytest.TempPathFactory, gemma_gguf_path: Path
) -> Iterator[Daemon]:
    folder = tmp_path_factory.mktemp("launch")
    model = with_template(gemma_gguf_path, folder / "gemma-qwen3.gguf", chat_templates.QWEN3)
    home = folder / "home"
    # No LOCALSERVE_CONTEXT_LENGTH: the default. Debug: runners log each prompt, which
    # aider's test asks again.
    with running_daemon(home, env={"LOCALSERVE_DEBUG": "1"}) as started:
        add_model(home, model, "gemma")
        create_from_gemma(started, "gemma-line", parameters=ONE_LINE)
        # aider's, and its twin that asks again: both used once, so both read from a
        # cold start, in the same steps, whatever ran before.
        create_from_gemma(started, "gemma-aider", parameters=ONE_LINE)
        create_from_gemma(started, "gemma-aider-again", parameters=ONE_LINE)
        # Codex's and OpenCode's model also carries two short exchanges, so that Gemma
        # answers briefly (test_responses_agents.py).
        create_from_gemma(started, "gemma-codex", parameters=ONE_LINE, messages=BRIEF_EXAMPLES)
        yield started


def user_env(daemon: Daemon, home: Path) -> dict[str, str]:
    """A user whose localserve settings point at the daemon, with the agents on PATH,
    a HOME of their own, and none of the agents' own variables set."""
    env = {
        k: v
        for k, v in daemon_env(daemon.home, daemon.port).items()
        if not k.startswith(("ANTHROPIC_", "CLAUDE_", "OPENAI_", "CODEX_", "OPENCODE_", "AIDER_"))
    }
    env["HOME"] = str(home)
    env["PATH"] = f"{AGENTS}{os.pathsep}{env.get('PATH', '')}"
    return env


def launch(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_as_user([sys.executable, "-m", "localserve", "launch", *args], env=env, cwd=cwd)


def run_as_user(
    argv: list[str], *, env: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    """A command with no terminal input, its output captured, given an agent's time."""
    return subprocess.run(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=AGENT_TIMEOUT,
        check=False,
    )


@pytest.mark.slow
@not_installed(CLAUDE)
@pytest.mark.timeout(AGENT_TIMEOUT + 60)
def test_claude_code_through_launch(agent_daemon: Daemon, tmp_path: Path) -> None:
    home = tmp_path / "agent-home"
    launch_env = {k: v for k, v in daemon_env(agent_daemon.home, agent_daemon.port).items()
                  if k.startswith("LOCALSERVE_")}  # fmt: skip
    result = run_claude(
        agent_daemon.url,
        home,
        "Say hello.",
        model="gemma-line",
        timeout=AGENT_TIMEOUT,
        launch_env=launch_env,
    )
    assert result["is_error"] is False, result
    assert result["result"], result
    # Its system prompt and tools were read: per model, as Claude Code counts them (its
    # top-level usage can stay 0 when its last request was not streamed).
    usage = result["modelUsage"]["gemma-line"]
    assert usage["inputTokens"] + usage["cacheReadInputTokens"] > 10_000, result


@pytest.mark.slow
@not_installed(CODEX)
@pytest.mark.timeout(AGENT_TIMEOUT + 60)
def test_codex_through_launch(agent_daemon: Daemon, tmp_path: Path) -> None:
    work = tmp_path / "project"
    work.mkdir()
    env = user_env(agent_daemon, tmp_path / "agent-home")
    done = launch(
        "codex", "--model", "gemma-codex", "--", "exec", "--skip-git-repo-check", "Say hello.",
        env=env, cwd=work,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip(), done.stderr[-3000:]
    # Its settings went on the command line only: no config file was written for it.
    assert not (tmp_path / "agent-home" / ".codex" / "config.toml").exists()


@pytest.mark.slow
@not_installed(OPENCODE)
@pytest.mark.timeout(AGENT_TIMEOUT + 60)
def test_opencode_through_launch(agent_daemon: Daemon, tmp_path: Path) -> None:
    work = tmp_path / "project"
    work.mkdir()
    env = user_env(agent_daemon, tmp_path / "agent-home")
    env["PWD"] = str(work)  # OpenCode takes its project from $PWD
    env["OPENCODE_DISABLE_AUTOUPDATE"] = "1"
    before = chat_completions(agent_daemon)
    # The model with two short exchanges: with one line and no examples, Gemma's greedy
    # answer to OpenCode's prompt (which names the test's folder) is sometimes an empty
    # line, and OpenCode prints nothing for it.
    done = launch(
        "opencode", "--model", "gemma-codex", "--", "run", "Say hello.", env=env, cwd=work
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # It talked to the daemon's chat completions API, the one its settings name.
    assert chat_completions(agent_daemon) > before, done.stderr[-3000:]
    assert done.stdout.strip(), done.stderr[-3000:]


@pytest.mark.slow
@not_installed(AIDER)
@pytest.mark.timeout(AGENT_TIMEOUT + 60)
def test_aider_with_the_printed_settings(agent_daemon: Daemon, tmp_path: Path) -> None:
    """aider is set up by hand: what `launch aider --print` prints, run in sh as a user
    pastes it, is all it needs to get Gemma's answer from the daemon."""
    work = tmp_path / "project"
    work.mkdir()
    env = user_env(agent_daemon, tmp_path / "agent-home")
    env["PATH"] = f"{AIDER.parent}{os.pathsep}{env['PATH']}"
    # One message, no git repo, no question asked, and none of aider's own calls out
    # (a version check on PyPI, analytics, release notes in a browser).
    task = ["--message", "Say hello.", "--yes-always", "--no-git", "--no-check-update",
            "--no-analytics", "--no-show-release-notes", "--no-pretty"]  # fmt: skip
    printed = launch("aider", "--model", "gemma-aider", "--print", "--", *task, env=env, cwd=work)
    assert printed.returncode == 0, printed.stderr
    before, seen = chat_completions(agent_daemon), len(agent_daemon.logged_prompts())
    done = run_as_user(["sh", "-c", printed.stdout], env=env, cwd=work)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # One request to the chat completions API that the printed variables name.
    assert chat_completions(agent_daemon) == before + 1, done.stdout[-3000:]
    # Gemma's answer to the prompt aider sent, asked again of its twin (a model of its
    # own gets a runner of its own: same prompt from a cold start, same greedy steps),
    # is what aider printed.
    prompt = agent_daemon.next_logged_prompt(seen)
    assert not re.search(r"\[\.\.\. \d+ characters \.\.\.\]", prompt), "logged cut: too long"
    again = httpx.post(
        agent_daemon.url + "/api/generate",
        json={"model": "gemma-aider-again", "prompt": prompt, "raw": True, "stream": False},
        timeout=AGENT_TIMEOUT,
    )
    assert again.status_code == 200, again.text
    answer = again.json()["response"].strip()
    assert answer, again.text
    assert answer in done.stdout, (answer, done.stdout[-3000:])


def chat_completions(daemon: Daemon) -> float:
    """Answered /v1/chat/completions requests, from the daemon's /metrics."""
    metrics = httpx.get(daemon.url + "/metrics", timeout=30).text
    pattern = r'^localserve_requests_total\{route="/v1/chat/completions",status="200"\} (\S+)$'
    found = re.search(pattern, metrics, re.MULTILINE)
    return float(found[1]) if found else 0.0


STAND_IN = """#!/bin/sh
env > "$0.env"
printf '%s\\n' "$@" > "$0.argv"
exit 7
"""


def stand_in(path: Path) -> Path:
    path.write_text(STAND_IN)
    path.chmod(0o755)
    return path


def test_launch_starts_the_daemon_warns_and_execs_the_tool(
    tmp_path: Path, tiny_gguf_path: Path
) -> None:
    home = tmp_path / "home"
    env = daemon_env(home, free_port())
    subprocess.run(
        [sys.executable, "-m", "localserve", "import", str(tiny_gguf_path), "tiny"],
        env=env, check=True, capture_output=True,
    )  # fmt: skip
    tool = stand_in(tmp_path / "claude-stand-in")
    env.update({"LOCALSERVE_CLAUDE_BIN": str(tool), "ANTHROPIC_API_KEY": "the user's own"})
    with stopped_afterwards(home):
        done = launch("claude", "--", "-p", "two words", env=env, cwd=tmp_path)
        # The tool replaced launch: its exit code is launch's.
        assert done.returncode == 7, done.stderr
        assert "starting localserve daemon" in done.stderr
        # The tiny model's context here is its training length, 2048: too short.
        [warning] = [line for line in done.stderr.splitlines() if "warning" in line]
        assert "context of 2048 tokens" in warning and "at least 32768" in warning
        assert (tool.parent / f"{tool.name}.argv").read_text() == "-p\ntwo words\n"
        seen = dict(
            line.split("=", 1)
            for line in (tool.parent / f"{tool.name}.env").read_text().splitlines()
            if "=" in line
        )
        assert seen["ANTHROPIC_BASE_URL"] == f"http://{env['LOCALSERVE_HOST']}"
        assert seen["ANTHROPIC_MODEL"] == "tiny:latest"  # the only model in the store
        assert seen["CLAUDE_CODE_ATTRIBUTION_HEADER"] == "0"
        assert "ANTHROPIC_API_KEY" not in seen
        # The daemon it started answers.
        assert httpx.get(seen["ANTHROPIC_BASE_URL"] + "/api/version", timeout=10).is_success


def test_launch_pulls_a_missing_hub_model_with_pull(
    tmp_path: Path, fake_hub: FakeHub, tiny_gguf_path: Path
) -> None:
    fake_hub.add_repo("tester/launch-GGUF", {"launch-Q4_K_M.gguf": tiny_gguf_path})
    home = tmp_path / "home"
    env = daemon_env(home, free_port(), {"HF_ENDPOINT": fake_hub.url})
    env.pop("HF_HUB_OFFLINE", None)
    tool = stand_in(tmp_path / "codex-stand-in")
    env["LOCALSERVE_CODEX_BIN"] = str(tool)
    name = "hf.co/tester/launch-GGUF"
    with stopped_afterwards(home):
        missing = launch("codex", "--model", name, env=env, cwd=tmp_path)
        assert missing.returncode == 3, missing.stderr
        assert f"localserve pull {name}" in missing.stderr and "--pull" in missing.stderr
        assert not fake_hub.requests  # nothing pulled without --pull
        done = launch("codex", "--model", name, "--pull", "--", "exec", "hi", env=env, cwd=tmp_path)
        assert done.returncode == 7, done.stderr
        assert "success" in done.stderr  # pull's progress
        argv = (tool.parent / f"{tool.name}.argv").read_text().splitlines()
        assert f'model="{name}"' in argv and argv[-2:] == ["exec", "hi"]
        assert f'model_providers.localserve.base_url="http://{env["LOCALSERVE_HOST"]}/v1"' in argv
