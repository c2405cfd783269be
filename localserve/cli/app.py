"""The `localserve` command: one root composed from a module per command group.

Commands stay thin (parse, one library or client call, render); errors become words
in exactly one place, cli/errors.py. Heavy libraries (pydantic, httpx, huggingface_hub,
uvicorn, llama_cpp, prompt_toolkit) are imported inside the commands that need them,
and help is plain text (Typer's rich help pulls in rich.markdown and friends), so
`localserve --help` costs about as much as importing typer itself
(benchmarks/cli_start.py measures it).
"""

from __future__ import annotations

from typing import Annotated

import typer

from localserve import __version__
from localserve.cli import bench, daemon, models, plan, ps, run, worker
from localserve.cli.errors import run_with_error_edge

app = typer.Typer(
    name="localserve",
    help="Run GGUF language models locally: pull from Hugging Face, serve, chat.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
# The order here is the order of `localserve --help`.
app.add_typer(run.app)
app.add_typer(models.app)
app.add_typer(plan.app)
app.add_typer(ps.app)
app.add_typer(bench.app)
app.add_typer(daemon.app)
app.add_typer(worker.app)


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
