"""What each coding agent needs to use a localserve model: environment variables and
arguments, built from where the daemon answers, the model's name and its context. Pure
data: `localserve launch` (cli/launch.py) sets it and runs the tool, `--print` shows it,
and docs/agents.md is checked against it.

Nothing here writes a file: the user's own configuration (~/.claude, ~/.codex,
~/.config/opencode, ...) is never touched. Each tool gets what it needs by environment or
by command-line overrides, which win over its files for this run only.

Three tools are launched (Claude Code, Codex, OpenCode: installed from npm, tested end to
end); the others (Continue, Cline, Goose, aider) only have their settings printed.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field

# A placeholder where a tool insists on a key but the daemon wants none.
NO_KEY = "localserve"


@dataclass(frozen=True)
class Target:
    """Where and what: the daemon's base URL (no trailing slash), the model's name, the
    context a load of it gets (None when unknown: a daemon on another machine) and the
    key the daemon requires (None: none)."""

    base_url: str
    model: str
    num_ctx: int | None = None
    api_key: str | None = None

    @property
    def key(self) -> str:
        return self.api_key or NO_KEY


@dataclass(frozen=True)
class Setup:
    """What a tool is given: variables set, variables removed, arguments put before the
    user's own, and for a tool configured in a file or a form, the text to paste there."""

    env: dict[str, str] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)
    unset: tuple[str, ...] = ()
    config: tuple[str, str] | None = None  # (where it goes, the text)


@dataclass(frozen=True)
class Tool:
    name: str  # as typed: `localserve launch NAME`
    title: str
    setup: Callable[[Target], Setup]
    # The smallest context it works in (see the thresholds below), None: no advice.
    min_context: int | None = None
    binary: str | None = None  # None: --print only
    install: str | None = None  # the command that installs it

    @property
    def launchable(self) -> bool:
        return self.binary is not None

    @property
    def bin_variable(self) -> str:
        """The variable that names the binary instead of PATH (tests use it)."""
        return f"LOCALSERVE_{self.name.upper()}_BIN"


# Context thresholds: each tool's first request, measured against this daemon and
# llama-server (/work/shared/NOTES-agents.md, docs/agents.md), plus room for a few turns
# of files and answers, rounded up to the power of two a user would set.
# - Claude Code: ~19.5k tokens of system prompt and tool definitions before the first
#   word of the user's; 32k leaves ~12k for the conversation (and Claude Code compacts
#   when the daemon says "prompt is too long").
# - Codex: ~6.3k tokens; OpenCode: ~7.5k tokens. 16k leaves about as much again.
CLAUDE_MIN_CONTEXT = 32768
CODEX_MIN_CONTEXT = 16384
OPENCODE_MIN_CONTEXT = 16384


# How long Claude Code may wait for a stream's next event (see claude_setup).
CLAUDE_STREAM_IDLE_MS = 30 * 60 * 1000


def claude_setup(target: Target) -> Setup:
    """Claude Code on the Anthropic Messages API (/v1/messages): every model tier it may
    ask for is the local model, and the switches below keep its requests' prefix
    identical from one request to the next (so the daemon's prefix cache holds) and stop
    its traffic to Anthropic. Checked in the 2.1.197 binary:

    - CLAUDE_CODE_ATTRIBUTION_HEADER=0: without it the first block of every system prompt
      is "x-anthropic-billing-header: cc_version=2.1.197.<hash of the messages>; ...",
      different in every request (the daemon also drops that line, schemas/anthropic.py;
      this keeps it from being sent at all).
    - CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1: no telemetry, error reports, feature
      flags or release notes from Anthropic's servers; it also turns off the terminal
      title, which interactive sessions otherwise update from the conversation.
    - DISABLE_AUTOUPDATER=1: no update checks or downloads while it runs.
    - CLAUDE_CODE_ENABLE_PROMPT_SUGGESTION=false: after each turn an interactive session
      may ask the model to guess the user's next prompt: a background request with its
      own prompt that takes the model's time (off by default today, behind a feature flag).
    - CLAUDE_CODE_ENABLE_AWAY_SUMMARY=0: on by default: when the user comes back to an
      idle session it asks the model for a summary, again a request of its own.
    - CLAUDE_STREAM_IDLE_TIMEOUT_MS=1800000: Claude Code drops a stream that has sent no
      event for 5 minutes (its default and floor) and asks again without streaming; the
      Anthropic SDK hides `ping` events from it, so the daemon's keepalives do not count.
      A first read of its ~20k-token prompt on a CPU can take longer than that (measured:
      over 5 minutes on 2 busy cores), and the retry would read it all again; 30 minutes.
    - CLAUDE_CODE_SUBAGENT_MODEL: sub-agents (the Task tool) use the local model too.
    - ANTHROPIC_API_KEY is removed: with both a key and a token set, Claude Code asks
      which to use (and would send the user's Anthropic key to the daemon).
    """
    model = target.model
    tiers = (
        "ANTHROPIC_MODEL",
        "ANTHROPIC_SMALL_FAST_MODEL",
        "ANTHROPIC_DEFAULT_HAIKU_MODEL",
        "ANTHROPIC_DEFAULT_SONNET_MODEL",
        "ANTHROPIC_DEFAULT_OPUS_MODEL",
        "CLAUDE_CODE_SUBAGENT_MODEL",
    )
    env = {
        "ANTHROPIC_BASE_URL": target.base_url,
        "ANTHROPIC_AUTH_TOKEN": target.key,
        **dict.fromkeys(tiers, model),
        "CLAUDE_CODE_ATTRIBUTION_HEADER": "0",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
        "CLAUDE_CODE_ENABLE_PROMPT_SUGGESTION": "false",
        "CLAUDE_CODE_ENABLE_AWAY_SUMMARY": "0",
        "CLAUDE_STREAM_IDLE_TIMEOUT_MS": str(CLAUDE_STREAM_IDLE_MS),
    }
    return Setup(env=env, unset=("ANTHROPIC_API_KEY",))


def _toml(value: str | int | bool) -> str:
    # JSON strings, integers and booleans are valid TOML values.
    return json.dumps(value)


def codex_setup(target: Target) -> Setup:
    """Codex on the Responses API (/v1/responses): a provider of its own given as ``-c``
    overrides (checked with codex 0.171.0: they win over ~/.codex/config.toml, which is
    left alone). Its web search tool runs on OpenAI's servers, which localserve cannot
    do, so it is off; the context window tells Codex when to compact (without it, it
    warns that the model's metadata is unknown and assumes a window of its own)."""
    provider = "model_providers.localserve"
    overrides: list[tuple[str, str | int | bool]] = [
        ("model", target.model),
        ("model_provider", "localserve"),
        (f"{provider}.name", "localserve"),
        (f"{provider}.base_url", target.base_url + "/v1"),
        (f"{provider}.wire_api", "responses"),
        ("web_search", "disabled"),
    ]
    env: dict[str, str] = {}
    if target.api_key:
        # Codex reads a provider's key from the variable that env_key names.
        overrides.append((f"{provider}.env_key", "LOCALSERVE_API_KEY"))
        env["LOCALSERVE_API_KEY"] = target.api_key
    if target.num_ctx:
        overrides.append(("model_context_window", target.num_ctx))
    args = [part for key, value in overrides for part in ("-c", f"{key}={_toml(value)}")]
    return Setup(env=env, args=args)


def opencode_config(target: Target) -> dict[str, object]:
    """OpenCode's provider entry for the daemon's chat completions API."""
    model: dict[str, object] = {"name": target.model}
    if target.num_ctx:
        # OpenCode keeps `output` free of the context when it decides to compact; a
        # quarter of the context (at most 8k) leaves most of it to the conversation.
        output = min(8192, target.num_ctx // 4)
        model["limit"] = {"context": target.num_ctx, "output": output}
    provider = {
        "npm": "@ai-sdk/openai-compatible",
        "name": "localserve",
        "options": {"baseURL": target.base_url + "/v1", "apiKey": target.key},
        "models": {target.model: model},
    }
    return {
        "$schema": "https://opencode.ai/config.json",
        "provider": {"localserve": provider},
        "model": f"localserve/{target.model}",
    }


def opencode_setup(target: Target) -> Setup:
    """OpenCode through the AI SDK's OpenAI-compatible provider (/v1/chat/completions),
    its configuration in OPENCODE_CONFIG_CONTENT: opencode 1.18.33 reads it after its
    global and project files (it wins over them) and, with it set, does not write a
    default config.json into the user's config folder."""
    content = json.dumps(opencode_config(target), separators=(",", ":"))
    return Setup(env={"OPENCODE_CONFIG_CONTENT": content})


def continue_setup(target: Target) -> Setup:
    """Continue (VS Code, JetBrains, the `cn` CLI): a model entry in config.yaml."""
    lines = [
        "models:",
        f"  - name: {target.model} (localserve)",
        "    provider: openai",
        f"    model: {target.model}",
        f"    apiBase: {target.base_url}/v1",
        f"    apiKey: {target.key}",
        "    roles: [chat, edit, apply]",
    ]
    if target.num_ctx:
        lines += ["    defaultCompletionOptions:", f"      contextLength: {target.num_ctx}"]
    return Setup(config=("~/.continue/config.yaml", "\n".join(lines)))


def cline_setup(target: Target) -> Setup:
    """Cline (VS Code): its settings form, API Provider "OpenAI Compatible"."""
    lines = [
        "API Provider: OpenAI Compatible",
        f"Base URL: {target.base_url}/v1",
        f"API Key: {target.key}",
        f"Model ID: {target.model}",
    ]
    if target.num_ctx:
        lines.append(f"Context Window Size: {target.num_ctx}")
    return Setup(config=("Cline's settings (the gear in its panel)", "\n".join(lines)))


def goose_setup(target: Target) -> Setup:
    """Goose: its OpenAI provider, configured by environment (which wins over
    ~/.config/goose/config.yaml)."""
    env = {
        "GOOSE_PROVIDER": "openai",
        "GOOSE_MODEL": target.model,
        "OPENAI_HOST": target.base_url,
        "OPENAI_BASE_PATH": "v1/chat/completions",
        "OPENAI_API_KEY": target.key,
    }
    if target.num_ctx:
        env["GOOSE_CONTEXT_LIMIT"] = str(target.num_ctx)
    return Setup(env=env, args=["session"])


def aider_setup(target: Target) -> Setup:
    """aider through litellm's OpenAI provider: ``openai/NAME`` at OPENAI_API_BASE. A
    local name is not in litellm's model list, which aider would warn about."""
    env = {"OPENAI_API_BASE": target.base_url + "/v1", "OPENAI_API_KEY": target.key}
    return Setup(env=env, args=["--model", f"openai/{target.model}", "--no-show-model-warnings"])


TOOLS: dict[str, Tool] = {
    tool.name: tool
    for tool in (
        Tool(
            "claude",
            "Claude Code",
            claude_setup,
            CLAUDE_MIN_CONTEXT,
            binary="claude",
            install="npm install -g @anthropic-ai/claude-code",
        ),
        Tool(
            "codex",
            "Codex",
            codex_setup,
            CODEX_MIN_CONTEXT,
            binary="codex",
            install="npm install -g @openai/codex",
        ),
        Tool(
            "opencode",
            "OpenCode",
            opencode_setup,
            OPENCODE_MIN_CONTEXT,
            binary="opencode",
            install="npm install -g opencode-ai",
        ),
        Tool("continue", "Continue", continue_setup),
        Tool("cline", "Cline", cline_setup),
        Tool("goose", "Goose", goose_setup, binary=None, install=None),
        Tool("aider", "aider", aider_setup, binary=None, install="pip install aider-chat"),
    )
}
LAUNCHABLE = tuple(name for name, tool in TOOLS.items() if tool.launchable)

# The command each print-only tool runs, for the printed command line.
PRINTED_COMMAND = {"goose": "goose", "aider": "aider"}


def context_warning(tool: Tool, target: Target) -> str | None:
    """One line when the model's context here is below what ``tool`` needs, else None."""
    if tool.min_context is None or target.num_ctx is None or target.num_ctx >= tool.min_context:
        return None
    return (
        f"warning: {target.model} gets a context of {target.num_ctx} tokens here, and "
        f"{tool.title} needs at least {tool.min_context}: set LOCALSERVE_CONTEXT_LENGTH="
        f"{tool.min_context} for the daemon, or PARAMETER num_ctx in a Modelfile"
    )


def command_line(tool: Tool, setup: Setup, extra: list[str]) -> list[str]:
    """The tool's command line: its binary (or command), our arguments, then the user's."""
    command = tool.binary or PRINTED_COMMAND[tool.name]
    return [command, *setup.args, *extra]


def render(tool: Tool, target: Target, extra: list[str] | None = None) -> str:
    """What ``launch TOOL --print`` prints: shell lines ready to paste (variables
    exported, the command last), or for a tool set up in a file or a form, its text."""
    setup = tool.setup(target)
    where = f"{target.base_url}, model {target.model}"
    if target.num_ctx:
        where += f", context {target.num_ctx}"
    lines = [f"# {tool.title} with localserve at {where}"]
    if setup.config is not None:
        place, text = setup.config
        lines += [f"# in {place}:", text]
        return "\n".join(lines) + "\n"
    lines += [f"unset {name}" for name in setup.unset]
    lines += [f"export {name}={_shell_value(value, target)}" for name, value in setup.env.items()]
    lines.append(shlex.join(command_line(tool, setup, extra or [])))
    return "\n".join(lines) + "\n"


def _shell_value(value: str, target: Target) -> str:
    """A value quoted for the shell; the daemon's key as a reference to the variable
    that holds it (the pasting shell has it set too), so that it is not printed."""
    if target.api_key and value == target.api_key:
        return '"$LOCALSERVE_API_KEY"'
    return shlex.quote(value)
