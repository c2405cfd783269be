"""`localserve worker`: serve this machine's devices to another machine's localserve."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from localserve.cli import output

app = typer.Typer()


@app.command()
def worker(
    host: Annotated[
        str,
        typer.Option(
            "--host",
            metavar="HOST",
            help="Address to listen on (loopback unless --allow-network).",
        ),
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", metavar="PORT", min=1, max=65535, help="TCP port.")
    ] = 50052,
    threads: Annotated[
        int | None,
        typer.Option(
            "--threads",
            metavar="N",
            min=1,
            help="CPU threads for a CPU device [default: physical cores].",
            show_default=False,
        ),
    ] = None,
    device: Annotated[
        list[str] | None,
        typer.Option(
            "--device",
            metavar="NAME",
            help="Serve this ggml device (CUDA0, Vulkan0, CPU; repeat or comma-separate) "
            "[default: every GPU, else the CPU].",
            show_default=False,
        ),
    ] = None,
    cache: Annotated[
        Path | None,
        typer.Option(
            "--cache",
            metavar="DIR",
            help="Keep large tensors received here, so the next load of the model skips "
            "sending them.",
            show_default=False,
        ),
    ] = None,
    allow_network: Annotated[
        bool,
        typer.Option(
            "--allow-network",
            help="Allow an address other machines can reach. The RPC protocol has no "
            "authentication or encryption: use a private network or an SSH tunnel.",
        ),
    ] = False,
) -> None:
    """Run a llama.cpp RPC worker in the foreground until Ctrl+C.

    Another machine's daemon lists it in LOCALSERVE_RPC_WORKERS (or `serve --rpc`) and
    puts model layers in this machine's memory (docs/scale.md).
    """
    from localserve.config import is_loopback
    from localserve.engine import rpc
    from localserve.errors import InvalidOptionError
    from localserve.runtime.options import default_threads

    if not is_loopback(host) and not allow_network:
        raise InvalidOptionError(
            f"refusing to listen on {host}: anyone who can reach it could use this "
            "machine's memory and compute, with no password and no encryption",
            hint="keep the default 127.0.0.1 and use an SSH tunnel (docs/scale.md), or "
            "add --allow-network on a private network you trust",
        )
    rpc.load_library()  # before anything else: a build without RPC says how to rebuild
    names = [n.strip() for d in device or () for n in d.split(",") if n.strip()]
    pointers, served = rpc.worker_devices(names)
    n_threads = threads or default_threads()
    err = output.stderr()
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
    err.print(f"localserve worker listening on {host}:{port} (llama.cpp RPC)", markup=False)
    for d in served:
        err.print(
            f"  serving {d.name} ({d.description}): {output.human_size(d.free_bytes)} free "
            f"of {output.human_size(d.total_bytes)}",
            markup=False,
        )
    if cache is not None:
        err.print(f"  tensor cache: {cache}", markup=False)
    if not is_loopback(host):
        err.print(
            f"warning: no authentication, no encryption: {rpc.exposure(host, port)} can "
            "read and write this machine's memory through this worker. Stop it when not in use.",
            markup=False,
        )
    err.print("Ctrl+C stops it.", markup=False)
    rpc.serve(host, port, devices=pointers, threads=n_threads, cache_dir=cache)
