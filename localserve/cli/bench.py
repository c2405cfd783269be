"""`localserve bench MODEL`: how fast a model runs here, measured through the daemon.

The measuring is localserve/client/bench.py; this module checks the options, makes sure a
daemon answers (starting one, as `run` does), shows progress on a terminal, and
prints the medians as a table or one JSON object.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Annotated

import typer

from localserve.cli import output
from localserve.cli.params import JsonOpt, ModelArg

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from localserve.client.bench import BenchResult

app = typer.Typer()

# The defaults live in localserve/client/bench.py; repeated here because help shows them.
DEFAULT_PROMPT_TOKENS = 512
DEFAULT_DECODE_TOKENS = 128
DEFAULT_CONCURRENCY = "1,4,8"
DEFAULT_REPS = 3


@app.command()
def bench(
    model: ModelArg,
    prompt_tokens: Annotated[
        int,
        typer.Option(
            "--prompt-tokens",
            metavar="N",
            help="Length of the prompt whose reading (prefill) is timed, in tokens.",
        ),
    ] = DEFAULT_PROMPT_TOKENS,
    decode_tokens: Annotated[
        int,
        typer.Option(
            "--decode-tokens",
            metavar="N",
            help="Tokens each stream generates (the model's end of text is ignored).",
        ),
    ] = DEFAULT_DECODE_TOKENS,
    concurrency: Annotated[
        str,
        typer.Option(
            "--concurrency",
            metavar="N,N,...",
            help="Streams at once, one table row each. Streams beyond the daemon's "
            "LOCALSERVE_NUM_PARALLEL wait in its queue, which shows in their time to "
            "first token.",
        ),
    ] = DEFAULT_CONCURRENCY,
    reps: Annotated[
        int,
        typer.Option(
            "--reps", metavar="N", help="Repetitions of each measurement; medians are shown."
        ),
    ] = DEFAULT_REPS,
    speculation: Annotated[
        bool,
        typer.Option(
            "--speculation",
            help="Also measure speculative decoding: a copy task and free writing, at 1 "
            "and 4 streams, with the daemon's drafts (LOCALSERVE_SPECULATIVE) and without.",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Measure a model's speed here: prefill and decode tokens/s, and throughput and
    time to first token with several streams at once (starts the daemon if needed).
    """
    import asyncio

    from localserve.cli.run import ensure_daemon
    from localserve.client import Client
    from localserve.client.bench import BenchConfig, parse_concurrency, run_bench
    from localserve.config import load_settings
    from localserve.store.refs import parse_ref

    parse_ref(model)
    config = BenchConfig(
        prompt_tokens=prompt_tokens,
        decode_tokens=decode_tokens,
        concurrency=parse_concurrency(concurrency),
        reps=reps,
        speculation=speculation,
    )
    settings = load_settings()
    with Client.from_settings(settings) as client:
        ensure_daemon(client, settings)
    # Ctrl+C: asyncio.run cancels the benchmark, which closes every open stream (the
    # daemon stops those generations), then raises KeyboardInterrupt.
    try:
        with _progress() as progress:
            result = asyncio.run(run_bench(model, config, settings=settings, progress=progress))
    except KeyboardInterrupt:
        from localserve.cli.errors import EXIT_INTERRUPTED

        output.stderr().print("bench interrupted; its requests were cancelled")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if as_json:
        output.print_json(result.to_json())
        return
    _print_table(result)


@contextlib.contextmanager
def _progress() -> Iterator[Callable[[str], None]]:
    """A spinner naming the current step, on stderr, on a terminal only."""
    console = output.stderr()
    if not console.is_terminal:
        yield lambda _: None
        return
    with console.status("", spinner="dots") as status:
        yield lambda step: status.update(f"bench: {step}...")


def _print_table(result: BenchResult) -> None:
    from rich.table import Table

    loaded = "already loaded" if result.already_loaded else f"loaded in {result.load_s:.2f} s"
    console = output.stdout()
    console.print(f"{result.model}: {loaded}; medians of {result.reps} run(s)")
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    table.add_column("TEST", no_wrap=True)
    for column in ("STREAMS", "TOKENS", "TOK/S", "PER STREAM TOK/S", "TTFT P50", "TTFT P95"):
        table.add_column(column, no_wrap=True, justify="right")
    table.add_row("prefill", "1", str(result.prompt_tokens), f"{result.prefill_tokens_per_s:.1f}")
    table.add_row("decode", "1", str(result.decode_tokens), f"{result.decode_tokens_per_s:.1f}")
    for level in result.levels:
        table.add_row(
            "concurrent",
            str(level.streams),
            str(level.tokens_per_stream),
            f"{level.aggregate_tokens_per_s:.1f}",
            f"{level.per_stream_tokens_per_s:.1f}",
            f"{level.ttft_p50_ms:.1f} ms",
            f"{level.ttft_p95_ms:.1f} ms",
        )
    console.print(table)
    if result.speculation:
        _print_speculation(result)


def _print_speculation(result: BenchResult) -> None:
    from rich.table import Table

    console = output.stdout()
    console.print("speculative decoding (LOCALSERVE_SPECULATIVE), tokens/s of all streams:")
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    table.add_column("TASK", no_wrap=True)
    for column in ("STREAMS", "DRAFTS OFF", "DRAFTS ON", "SPEEDUP", "KEPT"):
        table.add_column(column, no_wrap=True, justify="right")
    for row in result.speculation:
        table.add_row(
            row.task,
            str(row.streams),
            f"{row.off_tokens_per_s:.1f}",
            f"{row.on_tokens_per_s:.1f}",
            f"{row.speedup:.2f}x",
            f"{row.accepted}/{row.drafted}" if row.drafted else "no drafts",
        )
    console.print(table)
