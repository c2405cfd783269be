"""The `localserve` command: one root whose commands load when they run.

Commands stay thin (parse, one library or client call, render); errors become words
in exactly one place, cli/errors.py. Heavy libraries (pydantic, httpx, huggingface_hub,
uvicorn, llama_cpp, prompt_toolkit) are imported inside the commands that need them,
and help is plain text (Typer's rich help pulls in rich.markdown and friends).

`localserve --help` imports no command module at all: the root lists the commands
from `COMMANDS` below (name, module, one-line summary) and imports a command's module
only when that command runs or its own help is asked for. Typer builds every
command's parameters when it builds a group, so an eager root paid for all fourteen
commands' modules and signatures on every start (benchmarks/cli_start.py measures
it). tests/unit/test_cli_commands.py keeps the table equal to the commands' own help.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import typer
import typer.core
import typer.main

from localserve import __version__
from localserve.cli.errors import run_with_error_edge


@dataclass(frozen=True)
class CommandEntry:
    module: str  # localserve.cli.<module> defines it on its `app`
    summary: str  # the first paragraph of the command's help, for the root's list


# The order here is the order of `localserve --help`.
COMMANDS: dict[str, CommandEntry] = {
    "run": CommandEntry(
        "run",
        "Chat with a model, or have it answer one prompt (starts the daemon, pulls if needed).",
    ),
    "launch": CommandEntry(
        "launch",
        "Run a coding agent (Claude Code, Codex, OpenCode) on a local model, without"
        " touching its configuration files (starts the daemon).",
    ),
    "pull": CommandEntry(
        "models", "Download a GGUF model from Hugging Face (resumable, sha256-verified)."
    ),
    "import": CommandEntry(
        "models", "Add a local GGUF file to the store under a name (hard-linked when possible)."
    ),
    "list": CommandEntry("models", "List the models in the store."),
    "show": CommandEntry(
        "models",
        "Show a model's architecture, size, quantization, context length (trained, and what"
        " a load gets here, and why) and licence.",
    ),
    "create": CommandEntry(
        "models",
        "Create a model from a Modelfile (FROM, PARAMETER, SYSTEM, TEMPLATE, MESSAGE,"
        " ADAPTER, LICENSE), sharing its base's files.",
    ),
    "rm": CommandEntry(
        "models", "Delete models; a file goes only when no other name still uses it."
    ),
    "cp": CommandEntry("models", "Give a model a second name (no bytes are copied)."),
    "plan": CommandEntry(
        "plan", "Show how a model would be split between GPU and CPU memory, without loading it."
    ),
    "ps": CommandEntry(
        "ps", "List the models loaded in the daemon, and when each will be unloaded."
    ),
    "bench": CommandEntry(
        "bench",
        "Measure a model's speed here: prefill and decode tokens/s, and throughput and"
        " time to first token with several streams at once (starts the daemon if needed).",
    ),
    "serve": CommandEntry(
        "daemon", "Start the daemon (in the background unless --foreground) on LOCALSERVE_HOST."
    ),
    "stop": CommandEntry(
        "daemon", "Unload a model, or stop the daemon (in-flight requests end with an error)."
    ),
    "worker": CommandEntry("worker", "Run a llama.cpp RPC worker in the foreground until Ctrl+C."),
}


def load_command(name: str) -> Any:
    """Import the module that defines command `name` and build its click command."""
    module = importlib.import_module(f"localserve.cli.{COMMANDS[name].module}")
    # As a group even when the module has one command: a lone Typer command would
    # get Typer's shell-completion options, which a subcommand never shows.
    built: Any = typer.main.get_group(module.app).commands[name]
    built.rich_markup_mode = None  # plain help, as the root's (see the module docstring)
    return built


class LazyCommandMap(Mapping[str, Any]):
    """The root's commands by name: the names are known at once, a command loads on
    first lookup (click and Typer look commands up through this mapping, and suggest
    "Did you mean" from its keys)."""

    def __init__(self) -> None:
        self._loaded: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        if name not in COMMANDS:
            raise KeyError(name)
        if name not in self._loaded:
            self._loaded[name] = load_command(name)
        return self._loaded[name]

    def __iter__(self) -> Iterator[str]:
        return iter(COMMANDS)

    def __len__(self) -> int:
        return len(COMMANDS)


class LazyCommands(typer.core.TyperGroup):
    """The root group: lists `COMMANDS` from the table; loads one when it is used."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        self.commands = LazyCommandMap()  # type: ignore[assignment]

    def list_commands(self, ctx: Any) -> list[str]:
        return list(COMMANDS)

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        """The list in `--help`, from the summaries: no command is loaded for it."""
        limit = formatter.width - 6 - max(len(name) for name in COMMANDS)
        rows = [
            (name, typer.core.TyperCommand(name=name, help=entry.summary).get_short_help_str(limit))
            for name, entry in COMMANDS.items()
        ]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


app = typer.Typer(
    name="localserve",
    cls=LazyCommands,
    help="Run GGUF language models locally: pull from Hugging Face, serve, chat.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if not value:
        return
    typer.echo(f"localserve version {__version__}")
    from localserve.client import Client

    with Client.from_settings(timeout=5.0) as client:
        if client.ping():
            typer.echo(f"localserve daemon version {client.version()} at {client.base_url}")
        else:
            typer.echo(f"no daemon answers at {client.base_url}", err=True)
    raise typer.Exit


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            "-v",
            callback=_version,
            is_eager=True,
            help="Print the version (and the running daemon's) and exit.",
        ),
    ] = False,
) -> None:
    """Run GGUF language models locally: pull from Hugging Face, serve, chat."""


def main() -> None:
    """Console-script entry point."""
    run_with_error_edge(app)
