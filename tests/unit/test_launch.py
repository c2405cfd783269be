"""`localserve launch`: the settings built for each coding agent (cli/agents.py), what
`--print` shows, docs/agents.md kept in step with them, and the errors (unknown tool, a
missing model, a tool that is not installed), with no daemon: every error here comes
before one would start, and `--print` starts none."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from localserve.cli.agents import TOOLS, Target, context_warning, render
from localserve.cli.app import app
from localserve.store.importing import import_gguf
from localserve.store.store import ModelStore
from tests.support.cli import assert_clean_error

DOCS = Path(__file__).parents[2] / "docs" / "agents.md"
# The target docs/agents.md shows.
DOC_TARGET = Target("http://127.0.0.1:11435", "gemma3", 32768)


def test_claude_code_gets_every_tier_and_the_stable_prefix_switches() -> None:
    setup = TOOLS["claude"].setup(Target("http://127.0.0.1:9", "coder", 32768))
    env = setup.env
    assert env["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:9"
    assert env["ANTHROPIC_AUTH_TOKEN"]
    for tier in (
        "MODEL",
        "SMALL_FAST_MODEL",
        *(f"DEFAULT_{t}_MODEL" for t in ("HAIKU", "SONNET", "OPUS")),
    ):
        assert env[f"ANTHROPIC_{tier}"] == "coder"
    assert env["CLAUDE_CODE_SUBAGENT_MODEL"] == "coder"
    assert env["CLAUDE_CODE_ATTRIBUTION_HEADER"] == "0"  # the per-request billing line
    # a first read of its prompt on a CPU may be silent for longer than its 5 minutes
    assert int(env["CLAUDE_STREAM_IDLE_TIMEOUT_MS"]) >= 30 * 60 * 1000
    assert env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1"
    assert env["DISABLE_AUTOUPDATER"] == "1"
    assert "ANTHROPIC_API_KEY" in setup.unset and "ANTHROPIC_API_KEY" not in env
    assert setup.args == []
    keyed = TOOLS["claude"].setup(Target("http://h:1", "coder", None, api_key="s3cret"))
    assert keyed.env["ANTHROPIC_AUTH_TOKEN"] == "s3cret"


def merge(into: dict[str, Any], more: dict[str, Any]) -> None:
    for key, value in more.items():
        if isinstance(value, dict):
            merge(into.setdefault(key, {}), value)
        else:
            into[key] = value


def test_codex_gets_a_provider_as_toml_overrides() -> None:
    setup = TOOLS["codex"].setup(Target("http://127.0.0.1:9", 'odd "name"', 16384))
    assert set(setup.args[::2]) == {"-c"}
    overrides: dict[str, Any] = {}
    for override in setup.args[1::2]:  # each one is a line of valid TOML, as Codex reads it
        merge(overrides, tomllib.loads(override))
    assert overrides["model"] == 'odd "name"'
    assert overrides["model_provider"] == "localserve"
    assert overrides["model_providers"]["localserve"] == {
        "name": "localserve",
        "base_url": "http://127.0.0.1:9/v1",
        "wire_api": "responses",
    }
    assert overrides["web_search"] == "disabled"
    assert overrides["model_context_window"] == 16384
    assert setup.env == {}
    keyed = TOOLS["codex"].setup(Target("http://h:1", "m", None, api_key="s3cret"))
    assert 'model_providers.localserve.env_key="LOCALSERVE_API_KEY"' in keyed.args
    assert keyed.env == {"LOCALSERVE_API_KEY": "s3cret"}
    assert not any("model_context_window" in a for a in keyed.args)  # unknown: not said


def test_opencode_gets_its_config_by_environment() -> None:
    setup = TOOLS["opencode"].setup(Target("http://127.0.0.1:9", "coder", 32768))
    config = json.loads(setup.env["OPENCODE_CONFIG_CONTENT"])
    provider = config["provider"]["localserve"]
    assert provider["npm"] == "@ai-sdk/openai-compatible"
    assert provider["options"]["baseURL"] == "http://127.0.0.1:9/v1"
    assert provider["models"]["coder"]["limit"] == {"context": 32768, "output": 8192}
    assert config["model"] == "localserve/coder"
    assert setup.args == []


@pytest.mark.parametrize(
    ("tool", "needs"), [("claude", 32768), ("codex", 16384), ("opencode", 16384)]
)
def test_a_short_context_gets_one_warning(tool: str, needs: int) -> None:
    chosen = TOOLS[tool]
    short = context_warning(chosen, Target("http://h:1", "m", needs - 1))
    assert short is not None and "\n" not in short
    assert f"at least {needs}" in short and "LOCALSERVE_CONTEXT_LENGTH" in short
    assert context_warning(chosen, Target("http://h:1", "m", needs)) is None
    assert context_warning(chosen, Target("http://h:1", "m", None)) is None  # unknown


def test_print_is_shell_that_sets_exactly_the_settings() -> None:
    target = Target("http://127.0.0.1:9", "it's", 32768)
    for name in ("claude", "codex", "opencode", "goose", "aider"):
        tool = TOOLS[name]
        setup = tool.setup(target)
        text = render(tool, target, ["-p", "Say hello."])
        # Run the printed lines in a shell: what it exports and the command it ends with
        # are the settings, quoting and all.
        script = text.rsplit("\n", 2)[0] + '\nenv -0; printf "\\0--\\0"; printf "%s\\0" "$@"'
        command = shlex.split(text.strip().splitlines()[-1])
        done = subprocess.run(
            ["sh", "-c", script, "sh", *command],
            env={"PATH": os.environ["PATH"], "ANTHROPIC_API_KEY": "mine"},
            capture_output=True,
            check=True,
        )
        exported, argv = done.stdout.split(b"\0--\0")
        env = dict(item.decode().split("=", 1) for item in exported.split(b"\0") if item)
        for key, value in setup.env.items():
            assert env[key] == value, (name, key)
        for key in setup.unset:
            assert key not in env
        assert argv.decode().split("\0")[:-1] == [command[0], *setup.args, "-p", "Say hello."]


def test_print_names_the_key_instead_of_showing_it() -> None:
    """Where the key is a variable of its own (OpenCode's is inside its JSON: shown)."""
    target = Target("http://127.0.0.1:9", "m", 32768, api_key="s3cret")
    for name in ("claude", "codex", "aider"):
        tool = TOOLS[name]
        text = render(tool, target)
        assert "s3cret" not in text, name
        keyed = [k for k, v in tool.setup(target).env.items() if v == "s3cret"]
        assert keyed, name  # the tool is given the key...
        script = text.rsplit("\n", 2)[0] + "\n" + "".join(f'printf "%s\\0" "${k}";' for k in keyed)
        done = subprocess.run(  # ...from the variable, when the printed lines run
            ["sh", "-c", script],
            env={"PATH": os.environ["PATH"], "LOCALSERVE_API_KEY": "s3cret"},
            capture_output=True,
            check=True,
        )
        assert done.stdout.split(b"\0")[:-1] == [b"s3cret"] * len(keyed), name


def test_docs_show_what_print_prints() -> None:
    text = DOCS.read_text()
    for name, tool in TOOLS.items():
        assert f"## {tool.title}" in text, name
        assert render(tool, DOC_TARGET) in text, (
            f"docs/agents.md is stale for {name}: paste `localserve launch {name} --print`"
        )


@pytest.fixture
def stored(isolated_home: Path, tiny_gguf_path: Path) -> str:
    for _ in import_gguf(ModelStore(isolated_home / "models"), tiny_gguf_path, "tiny"):
        pass
    return "tiny"


def test_print_runs_nothing(stored: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCALSERVE_HOST", "127.0.0.1:9")  # nothing answers there
    result = CliRunner().invoke(app, ["launch", "codex", "--print", "--", "exec", "hi"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("# Codex with localserve at http://127.0.0.1:9, model tiny:latest")
    # The tiny model's context here: its training length, 2048.
    assert "model_context_window=2048" in lines[-1]
    assert lines[-1].endswith(" exec hi")
    for name in TOOLS:  # every tool, launchable or not
        printed = CliRunner().invoke(app, ["launch", name, "--print", "--model", stored])
        assert printed.exit_code == 0, printed.output
        assert "tiny" in printed.stdout


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "localserve", "launch", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "LOCALSERVE_HOST": "127.0.0.1:9", **(env or {})},
        timeout=60,
        check=False,
    )


def test_unknown_tool_is_a_usage_error() -> None:
    assert_clean_error(cli("vim", "--model", "x"), 2, "unknown tool 'vim'", "claude, codex")
    # A tool set up by hand is printed, not launched.
    assert_clean_error(cli("aider", "--model", "x"), 2, "launch aider --print")


def test_missing_model_gets_the_pull_hint(
    stored: str, isolated_home: Path, tiny_gguf_path: Path
) -> None:
    assert_clean_error(cli("claude", "--model", "nope"), 3, "'nope' not found", "localserve list")
    hub = cli("claude", "--model", "someone/some-GGUF")
    assert_clean_error(hub, 3, "not found", "localserve pull someone/some-GGUF", "--pull")
    # Without --model: the only model in the store, and a question when there are two.
    assert "tiny:latest" in cli("claude", "--print").stdout
    for _ in import_gguf(ModelStore(isolated_home / "models"), tiny_gguf_path, "other"):
        pass
    assert_clean_error(cli("claude"), 2, "--model", "other:latest, tiny:latest")


def test_a_tool_that_is_not_installed_says_how_to_install_it(stored: str) -> None:
    for name, package in (
        ("claude", "npm install -g @anthropic-ai/claude-code"),
        ("codex", "npm install -g @openai/codex"),
        ("opencode", "npm install -g opencode-ai"),
    ):
        result = cli(name, env={"PATH": "/nonexistent"})
        assert_clean_error(result, 1, "not installed", package)
        assert len(result.stderr.strip().splitlines()) == 1
    missing = cli("claude", env={"LOCALSERVE_CLAUDE_BIN": "/nonexistent/claude"})
    assert_clean_error(missing, 1, "LOCALSERVE_CLAUDE_BIN=/nonexistent/claude")
