"""`localserve run MODEL [PROMPT]`: make sure the daemon and the model are there, then
answer once or chat.

- No daemon answers: start one (detached) and say so in one line on stderr.
- A Hugging Face name not yet in the store: pull it first, with `pull`'s progress bars.
- A PROMPT, piped stdin (put before PROMPT when both) or a stdout that is not a
  terminal: one answer, nothing else on stdout, exit 0. Otherwise the interactive chat.

Everything the user typed is checked before the first request (option names and
values, the format, the keep-alive duration, the model name), so a typo costs no
model load.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

import typer

from localserve.cli import output
from localserve.cli.params import ModelArg

if TYPE_CHECKING:
    from collections.abc import Generator

    from localserve.client import Client
    from localserve.config import Settings
    from localserve.store.progress import Progress

app = typer.Typer()

FORMATS = ("json",)


@app.command()
def run(
    model: ModelArg,
    prompt: Annotated[
        list[str] | None,
        typer.Argument(
            help="The prompt (several words are joined). Without one, and without piped "
            "input, an interactive chat starts.",
            show_default=False,
            metavar="PROMPT",
        ),
    ] = None,
    option: Annotated[
        list[str] | None,
        typer.Option(
            "--option",
            "-o",
            metavar="KEY=VALUE",
            help="A model option, repeatable: num_predict, temperature, top_k, top_p, min_p, "
            "seed, num_ctx, stop (repeat for several), repeat_penalty, ...",
            show_default=False,
        ),
    ] = None,
    system: Annotated[
        str | None,
        typer.Option("--system", metavar="TEXT", help="System prompt.", show_default=False),
    ] = None,
    format: Annotated[
        str | None,
        typer.Option(
            "--format", metavar="FORMAT", help="Answer in this format: json.", show_default=False
        ),
    ] = None,
    keepalive: Annotated[
        str | None,
        typer.Option(
            "--keepalive",
            metavar="DURATION",
            help="How long the model stays loaded afterwards: 5m, 1h, 0 (unload), -1 (forever).",
            show_default=False,
        ),
    ] = None,
    verbose: Annotated[
        bool,
        typer.Option("--verbose", help="Print timings and token rates to stderr after answers."),
    ] = False,
    nowordwrap: Annotated[
        bool, typer.Option("--nowordwrap", help="Do not break lines between words.")
    ] = False,
    think: Annotated[
        bool | None,
        typer.Option(
            "--think/--no-think",
            help="Have a thinking model reason before it answers, or not (default: the "
            "model's own).",
            show_default=False,
        ),
    ] = None,
    hidethinking: Annotated[
        bool,
        typer.Option("--hidethinking", help="Let a thinking model think, but do not show it."),
    ] = False,
) -> None:
    """Chat with a model, or have it answer one prompt (starts the daemon, pulls if needed)."""
    from localserve.cli import options
    from localserve.cli.answer import Conversation
    from localserve.client import Client
    from localserve.config import load_settings, parse_duration
    from localserve.errors import InvalidOptionError
    from localserve.store.refs import parse_ref

    parse_ref(model)
    model_options = options.parse_pairs(option or [])
    if format is not None and format not in FORMATS:
        raise InvalidOptionError(f"unsupported format {format!r}", hint="use --format json")
    if keepalive is not None:
        parse_duration(keepalive)
    settings = load_settings()

    text = " ".join(prompt or [])
    if not sys.stdin.isatty():
        piped = sys.stdin.read()
        if piped.strip():
            text = f"{piped.rstrip()}\n\n{text}" if text else piped
    interactive = not text and sys.stdin.isatty() and sys.stdout.isatty()

    conversation = Conversation(
        model,
        system=system,
        options=model_options,
        format=format,
        keep_alive=keepalive,
        verbose=verbose,
        wordwrap=not nowordwrap,
        think=think,
        hide_thinking=hidethinking,
    )
    with Client.from_settings(settings) as client:
        check_local_name(settings, model)
        ensure_daemon(client, settings)
        ensure_model(client, settings, model)
        if interactive:
            from localserve.cli.chat import chat

            chat(client, conversation, settings.state_dir / "history")
            return
        if not text:
            # Nothing to ask (e.g. `< /dev/null`): load the model, as Ollama does.
            client.load(model, options=model_options, keep_alive=keepalive)
            return
        answer = conversation.ask(client, text, sys.stdout, output.stderr())
        if answer.interrupted:
            raise KeyboardInterrupt  # the error edge exits with 130


def is_local(host: str) -> bool:
    """True when ``host`` is this machine (where we may start a daemon and use the store)."""
    from localserve.config import is_loopback

    # A daemon bound to every address (0.0.0.0, ::) is this machine's too.
    return host in ("0.0.0.0", "::", "") or is_loopback(host)


def ensure_daemon(client: Client, settings: Settings) -> None:
    """Start the daemon in the background when none answers (only for a local address)."""
    if client.ping():
        return
    from localserve.client.wire import not_running

    host, _ = settings.bind
    if not is_local(host):
        raise not_running(client.base_url)
    output.stderr().print("starting localserve daemon...")
    from localserve.errors import LocalserveError
    from localserve.server.daemon import start_detached

    try:
        start_detached(settings)
    except LocalserveError:
        if not client.ping():  # another `run` may have started one at the same moment
            raise


def check_local_name(settings: Settings, name: str) -> None:
    """A local name (no ``/``) that is not in the store fails here, before a daemon is
    started for nothing; a Hub reference is pulled by ``ensure_model`` instead."""
    from localserve.errors import ModelNotFoundError
    from localserve.store.refs import parse_ref
    from localserve.store.store import ModelStore

    ref = parse_ref(name)
    host, _ = settings.bind
    if not ref.is_hub and is_local(host) and ModelStore(settings.models_dir).find(ref) is None:
        raise ModelNotFoundError(name)


def ensure_model(client: Client, settings: Settings, name: str) -> None:
    """Pull a Hugging Face model that is not in the store yet; local names are left to the
    daemon (which says "not found" with the next step)."""
    import contextlib

    from localserve.store.refs import parse_ref

    ref = parse_ref(name)
    if not ref.is_hub:
        return
    host, _ = settings.bind
    if is_local(host):
        from localserve.store.pull import pull_model
        from localserve.store.store import ModelStore

        store = ModelStore(settings.models_dir)
        if store.find(ref) is not None:
            return
        events = pull_model(store, name)
    else:
        # A daemon on another machine has its own store: ask it, and let it pull.
        from localserve.errors import ModelNotFoundError

        try:
            client.show(name)
            return
        except ModelNotFoundError:
            pass
        events = _remote_pull(client, name)
    try:
        with contextlib.closing(events):
            output.show_progress(events)
    except KeyboardInterrupt:
        from localserve.cli.errors import EXIT_INTERRUPTED

        output.stderr().print(
            f"pull interrupted; what was downloaded is kept: run `localserve run {name}` "
            "(or `localserve pull`) to resume"
        )
        raise typer.Exit(EXIT_INTERRUPTED) from None


def _remote_pull(client: Client, name: str) -> Generator[Progress]:
    from localserve.store.progress import Progress

    for event in client.pull(name, stream=True):
        digest = event.digest.removeprefix("sha256:") if event.digest else None
        yield Progress(event.status, digest, event.total, event.completed)
