"""Arguments and options several commands share, as ``Annotated`` aliases."""

from __future__ import annotations

from typing import Annotated

import typer

ModelArg = Annotated[
    str,
    typer.Argument(
        help="Model name: hf.co/OWNER/REPO[:QUANT], OWNER/REPO[:QUANT] or NAME[:TAG].",
        show_default=False,
        metavar="MODEL",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
RpcOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--rpc",
        metavar="HOST:PORT,...",
        help="llama.cpp RPC workers (`localserve worker`) whose devices take layers "
        "[default: LOCALSERVE_RPC_WORKERS].",
        show_default=False,
    ),
]
