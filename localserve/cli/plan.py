"""`localserve plan`: where a model's bytes would go, and whether they fit, without loading it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from localserve.cli import output
from localserve.cli.params import JsonOpt, ModelArg, RpcOpt

if TYPE_CHECKING:
    from localserve.plan import Plan
    from localserve.plan.source import ModelHeader

app = typer.Typer()


@app.command()
def plan(
    model: ModelArg,
    ctx: Annotated[
        int | None,
        typer.Option(
            "--ctx",
            metavar="N",
            min=16,
            max=1 << 22,
            help="Context per sequence [default: LOCALSERVE_CONTEXT_LENGTH, capped at "
            "the model's training context].",
            show_default=False,
        ),
    ] = None,
    parallel: Annotated[
        int | None,
        typer.Option(
            "--parallel",
            metavar="N",
            min=1,
            max=256,
            help="Sequences decoded together [default: LOCALSERVE_NUM_PARALLEL].",
            show_default=False,
        ),
    ] = None,
    gpu_memory: Annotated[
        str | None,
        typer.Option(
            "--gpu-memory",
            metavar="SIZE",
            help="Plan for one empty GPU of this size (24GiB, 512MiB, 8GB; 0 for none) "
            "instead of this machine's GPUs.",
            show_default=False,
        ),
    ] = None,
    num_gpu: Annotated[
        int | None,
        typer.Option(
            "--num-gpu",
            metavar="N",
            min=0,
            help="Layers to offload, as the num_gpu option sets it [default: as many as fit].",
            show_default=False,
        ),
    ] = None,
    kv_cache_type: Annotated[
        str | None,
        typer.Option(
            "--kv-cache-type",
            metavar="TYPE",
            help="KV cache type: f16, q8_0, q4_0 (or f32, bf16, q4_1, iq4_nl, q5_0, q5_1) "
            "[default: LOCALSERVE_KV_CACHE_TYPE].",
            show_default=False,
        ),
    ] = None,
    rpc: RpcOpt = None,
    spread: Annotated[
        bool | None,
        typer.Option(
            "--spread/--no-spread",
            help="Cut the layers across all devices in proportion to free memory instead of "
            "filling the largest first [default: LOCALSERVE_SCHED_SPREAD].",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Show how a model would be split between GPU and CPU memory, without loading it.

    MODEL may be a Hugging Face reference that is not pulled yet: then only its GGUF
    header is fetched, a few MB over HTTP Range requests.
    """
    from localserve.config import kv_cache_type as check_kv_cache_type
    from localserve.config import load_settings
    from localserve.plan.source import load_header

    settings = load_settings()
    kv_type = (
        settings.kv_cache_type
        if kv_cache_type is None
        else check_kv_cache_type(kv_cache_type, "--kv-cache-type")
    )
    header = load_header(model)
    result, reason = planned(
        header,
        ctx=ctx or settings.context_length,
        parallel=parallel,
        gpu_memory=gpu_memory,
        num_gpu=num_gpu,
        kv_type=kv_type,
        rpc=rpc,
        spread=spread,
    )
    if as_json:
        output.print_json({**_entry(header, result), "context_reason": reason})
    else:
        _render(header, result, reason)
    for note in result.notes:
        output.stderr().print(f"note: {note}", markup=False)
    result.require_fit()


def planned(
    header: ModelHeader,
    *,
    ctx: int | None = None,
    parallel: int | None = None,
    gpu_memory: str | None = None,
    num_gpu: int | None = None,
    kv_type: str | None = None,
    rpc: list[str] | None = None,
    spread: bool | None = None,
) -> tuple[Plan, str]:
    """The plan of ``header``'s model on this machine (or the one ``gpu_memory``
    describes), and why its context is what it is: ``ctx`` when set, else the runner's
    own choice (plan/context.py). The defaults are the daemon's settings."""
    from localserve.config import load_settings, parse_workers
    from localserve.engine.devices import probe, with_workers
    from localserve.plan import parse_size, ram_only
    from localserve.plan import plan as make_plan
    from localserve.plan.context import choose_context

    settings = load_settings()
    simulated = parse_size(gpu_memory) if gpu_memory is not None else None
    devices = probe() if simulated is None else ram_only().simulate_gpu(simulated)
    workers = parse_workers(rpc) if rpc else tuple(settings.rpc_workers)
    if workers and num_gpu != 0:
        devices, _ = with_workers(devices, workers, timeout=min(5.0, settings.rpc_timeout_seconds))
    num_parallel = parallel or settings.num_parallel

    def plan_for(num_ctx: int, kv_cells: int | None = None) -> Plan:
        return make_plan(
            header.info,
            num_ctx=num_ctx,
            num_parallel=num_parallel,
            devices=devices,
            num_gpu=-1 if num_gpu is None else num_gpu,
            kv_type=kv_type or settings.kv_cache_type,
            projector=header.projector,
            adapters=header.adapters,
            spread=settings.sched_spread if spread is None else spread,
            kv_cells=kv_cells,
            swa_full=settings.swa_full,
        )

    if ctx:
        return plan_for(ctx), "set"
    choice = choose_context(header.info, num_parallel=num_parallel, plan_for=plan_for)
    return plan_for(choice.num_ctx, choice.kv_cells), choice.reason


def _entry(header: ModelHeader, result: Plan) -> dict[str, Any]:
    return {
        "model": header.name,
        "source": header.source,
        "files": list(header.files),
        "projector": header.projector_file,
        "file_size": header.size,
        "header_bytes_read": header.bytes_read,
        **result.to_dict(),
    }


CONTEXT_REASONS = {
    "set": "as set",
    "trained": "the model's training length",
    "cap": "the longest an automatic context allows",
    "memory": "as much as the memory holds",
}


def _render(header: ModelHeader, result: Plan, reason: str) -> None:
    from rich.table import Table

    size = output.human_size
    console = output.stdout()
    where = "the store"
    if header.source == "hub":
        where = (
            f"Hugging Face, header only: {size(header.bytes_read)} read of "
            f"{size(header.size)} in {header.requests} requests"
        )
    console.print(
        f"model      {header.name} ({result.architecture or 'unknown'}, from {where})",
        markup=False,
    )
    console.print(
        f"context    {result.num_ctx} per sequence ({CONTEXT_REASONS[reason]}), "
        f"{result.num_parallel} parallel sharing {result.kv_cells} KV cells "
        f"({result.kv_type}"
        + (f"; {result.swa_cells} in the sliding window" if result.swa_cells else "")
        + f"), batch {result.num_batch}, micro-batch {result.num_ubatch}",
        markup=False,
    )
    console.print()

    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    table.add_column("")
    for device in result.devices:
        # An RPC worker's device: its address under its name.
        remote = f"\n{device.description}" if device.name.startswith("RPC") else ""
        table.add_column(device.name + remote, justify="right", no_wrap=True)
    table.add_column("TOTAL", justify="right", no_wrap=True)
    rows = (
        ("weights", "weights_bytes", result.weights_bytes),
        ("KV cache", "kv_bytes", result.kv_bytes),
        ("compute", "compute_bytes", result.compute_bytes),
        ("overhead", "overhead_bytes", result.overhead_bytes),
        ("projector", "projector_bytes", result.projector_bytes),
        ("adapters", "adapter_bytes", result.adapter_bytes),
        ("total", "total_bytes", result.total_bytes),
    )
    for label, attribute, total in rows:
        if attribute in ("projector_bytes", "adapter_bytes") and not total:
            continue  # a text-only model, or one without adapters
        table.add_row(label, *(size(getattr(d, attribute)) for d in result.devices), size(total))
    table.add_row("free", *(size(d.free_bytes) for d in result.devices), "")
    table.add_row("layers", *(str(d.layers) for d in result.devices), str(result.n_layers))
    console.print(table)
    console.print()
    console.print(
        f"layers     {result.gpu_layers}/{result.n_layers} on the GPU (num_gpu "
        f"{result.gpu_layers}; {result.n_layers - 1} blocks + the output layer, offloaded "
        "from the output layer down)"
    )
    console.print(f"processor  {result.processor}")
