"""`localserve launch TOOL [--model NAME] [-- TOOL ARGS...]`: run a coding agent (Claude
Code, Codex, OpenCode) on a local model, as `ollama launch` does.

In order: the model is found in the store (a missing one gets the pull hint, or is pulled
with --pull), the daemon is started if none answers (as `run` does), a one-line warning
goes to stderr when the model's context here is below what the tool needs, and the tool
replaces this process (exec) with what cli/agents.py says it needs, set by environment
and arguments only: the user's own configuration files are not touched.

`--print` shows those settings instead (for any tool cli/agents.py knows, also those
that are configured by hand: Continue, Cline, Goose, aider) and starts nothing.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Annotated

import typer

from localserve.cli import output

if TYPE_CHECKING:
    from localserve.cli.agents import Target, Tool
    from localserve.client import Client
    from localserve.config import Settings

app = typer.Typer()


@app.command()
def launch(
    tool: Annotated[
        str,
        typer.Argument(
            help="claude, codex or opencode (with --print also continue, cline, goose, aider).",
            show_default=False,
            metavar="TOOL",
        ),
    ],
    tool_args: Annotated[
        list[str] | None,
        typer.Argument(
            help='Arguments for the tool, after `--`: launch claude -- -p "Say hello."',
            show_default=False,
            metavar="ARGS",
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            metavar="NAME",
            help="The model [default: the only one in the store].",
            show_default=False,
        ),
    ] = None,
    pull: Annotated[
        bool, typer.Option("--pull", help="Pull a Hugging Face model that is not in the store.")
    ] = False,
    print_only: Annotated[
        bool,
        typer.Option(
            "--print", help="Print the settings (shell lines ready to paste) and run nothing."
        ),
    ] = False,
) -> None:
    """Run a coding agent (Claude Code, Codex, OpenCode) on a local model, without
    touching its configuration files (starts the daemon)."""
    from localserve.cli.agents import LAUNCHABLE, TOOLS, Target, context_warning, render
    from localserve.client import Client
    from localserve.config import load_settings
    from localserve.errors import InvalidOptionError

    chosen = TOOLS.get(tool)
    if chosen is None or not (chosen.launchable or print_only):
        problem = (
            f"unknown tool {tool!r}"
            if chosen is None
            else f"{chosen.title} is set up by hand: `localserve launch {tool} --print` shows how"
        )
        by_hand = ", ".join(name for name in TOOLS if name not in LAUNCHABLE)
        raise InvalidOptionError(
            problem, hint=f"launch runs {', '.join(LAUNCHABLE)}; --print also knows {by_hand}"
        )
    settings = load_settings()
    with Client.from_settings(settings) as client:
        name = model or _only_model(settings)
        num_ctx = _check_model(client, settings, name, pull=pull and not print_only)
        api_key = settings.api_key.get_secret_value() if settings.api_key else None
        target = Target(client.base_url.rstrip("/"), name, num_ctx, api_key)
        if print_only:
            typer.echo(render(chosen, target, tool_args or []), nl=False)
            return
        binary = _find(chosen)
        from localserve.cli.run import ensure_daemon

        ensure_daemon(client, settings)
    warning = context_warning(chosen, target)
    if warning:
        output.stderr().print(warning, markup=False, highlight=False)
    _exec(chosen, binary, target, tool_args or [])


def _only_model(settings: Settings) -> str:
    """Without --model: the one model in a local store; otherwise ask for a name."""
    from localserve.cli.run import is_local
    from localserve.errors import InvalidOptionError

    host, _ = settings.bind
    names: list[str] = []
    if is_local(host):
        from localserve.store.store import ModelStore

        names = sorted(str(m.name) for m in ModelStore(settings.models_dir).list_models())
    if len(names) == 1:
        return names[0]
    shown = f": {', '.join(names)}" if names else ""
    raise InvalidOptionError(
        "name the model with --model NAME",
        hint=f"the store holds {len(names)} models{shown}" if is_local(host) else None,
    )


def _check_model(client: Client, settings: Settings, name: str, *, pull: bool) -> int | None:
    """Make sure ``name`` is there (pulling it with ``pull``); the context a load of it
    gets here (None for a daemon on another machine, whose memory we cannot plan)."""
    from localserve.cli.run import ensure_model, is_local
    from localserve.errors import ModelNotFoundError
    from localserve.store.refs import parse_ref

    ref = parse_ref(name)
    hint = (
        f"pull it first: localserve pull {name} (or launch with --pull)"
        if ref.is_hub
        else None  # the default: see `localserve list`, or import a file
    )
    host, _ = settings.bind
    if not is_local(host):
        try:
            client.show(name)
        except ModelNotFoundError:
            if not (pull and ref.is_hub):
                raise ModelNotFoundError(name, hint=hint) from None
            ensure_model(client, settings, name)
        return None

    from localserve.store.store import ModelStore

    store = ModelStore(settings.models_dir)
    if store.find(ref) is None:
        if not (pull and ref.is_hub):
            raise ModelNotFoundError(name, hint=hint)
        ensure_model(client, settings, name)
    from localserve.cli.models import context_here
    from localserve.store.create import read_config

    _, manifest = store.get(name)
    here = context_here(store, name, read_config(store, manifest).parameters)
    num_ctx: int = here["num_ctx"]
    return num_ctx


def _find(tool: Tool) -> str:
    """The tool's executable: LOCALSERVE_<TOOL>_BIN, else the first on PATH."""
    import shutil

    from localserve.errors import LocalserveError

    assert tool.binary is not None
    override = os.environ.get(tool.bin_variable)
    path = override or shutil.which(tool.binary)
    if not path or not os.access(path, os.X_OK):
        where = f"{tool.bin_variable}={override}" if override else f"no {tool.binary!r} on PATH"
        raise LocalserveError(f"{tool.title} is not installed ({where}): {tool.install}")
    return path


def _exec(tool: Tool, binary: str, target: Target, extra: list[str]) -> None:
    from localserve.cli.agents import command_line

    setup = tool.setup(target)
    env = {k: v for k, v in os.environ.items() if k not in setup.unset}
    env.update(setup.env)
    argv = command_line(tool, setup, extra)
    argv[0] = binary
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(binary, argv, env)
