"""Commands that start and stop the daemon: serve, stop."""

from __future__ import annotations

from typing import Annotated

import typer

from localserve.cli import output
from localserve.cli.params import RpcOpt

app = typer.Typer()


@app.command()
def serve(
    foreground: Annotated[
        bool, typer.Option("--foreground", "-f", help="Stay attached and log to stderr.")
    ] = False,
    rpc: RpcOpt = None,
) -> None:
    """Start the daemon (in the background unless --foreground) on LOCALSERVE_HOST."""
    import logging
    import os

    from localserve.config import load_settings
    from localserve.server import daemon

    if rpc:
        from localserve.config import parse_workers

        # A setting like any other: the daemon and its runners read it from the
        # environment they inherit.
        os.environ["LOCALSERVE_RPC_WORKERS"] = ",".join(parse_workers(rpc))
    settings = load_settings()
    running = daemon.running_daemon(settings)
    if running is not None and daemon.answers(running.host, running.port):
        output.stderr().print(f"localserve is already running at {running.url} (pid {running.pid})")
        return
    if foreground:
        level = logging.DEBUG if settings.debug else logging.INFO
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        daemon.serve_foreground(settings)
        return
    info = daemon.start_detached(settings)
    output.stderr().print(
        f"localserve is running at {info.url} (pid {info.pid}); log: {daemon.log_path(settings)}"
    )


@app.command()
def stop(
    model: Annotated[
        str | None,
        typer.Argument(help="Unload this model; without it, stop the daemon.", show_default=False),
    ] = None,
) -> None:
    """Unload a model, or stop the daemon (in-flight requests end with an error)."""
    from localserve.config import load_settings
    from localserve.server import daemon

    settings = load_settings()
    if model is not None:
        from localserve.client import Client
        from localserve.store.refs import parse_ref

        parse_ref(model)  # a bad name is a usage error, daemon or not

        with Client.from_settings(settings) as client:
            client.unload(model)
        output.stderr().print(f"unloaded {model}")
        return
    stopped = daemon.stop_daemon(settings)
    if stopped is None:
        output.stderr().print("localserve is not running")
        return
    output.stderr().print(f"stopped localserve (pid {stopped.pid})")
