"""The `localserve` command: one root composed from a module per command group.

Commands stay thin (parse, one library or client call, render); errors become words
in exactly one place, cli/errors.py. Heavy libraries are imported inside the
commands that need them, so `localserve --help` starts fast.
"""

from __future__ import annotations

from typing import Annotated

import typer

from localserve import __version__
from localserve.cli import daemon, models
from localserve.cli.errors import run_with_error_edge

app = typer.Typer(
    name="localserve",
    help="Run GGUF language models locally: pull from Hugging Face, serve, chat.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(models.app)
app.add_typer(daemon.app)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"localserve version {__version__}")
        raise typer.Exit


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", "-v", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Run GGUF language models locally: pull from Hugging Face, serve, chat."""


def main() -> None:
    """Console-script entry point."""
    run_with_error_edge(app)
