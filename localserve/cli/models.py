"""Commands on the model store: pull, import, create, list, show, rm, cp.

These work on the store directly and need no daemon; `rm` also asks a daemon running
on this machine to let go of the model (see rm).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from localserve.cli import output
from localserve.cli.errors import EXIT_INTERRUPTED, report
from localserve.cli.params import JsonOpt, ModelArg

if TYPE_CHECKING:
    from localserve.client import Client
    from localserve.store.store import ModelStore, StoredModel

app = typer.Typer()


def _store() -> ModelStore:
    from localserve.store.store import ModelStore

    return ModelStore.from_settings()


@app.command()
def pull(
    model: ModelArg,
    connections: Annotated[
        int, typer.Option(min=1, max=16, help="Parallel connections for large files.")
    ] = 4,
    no_mmproj: Annotated[
        bool,
        typer.Option(
            "--no-mmproj",
            help="Leave out the repository's multimodal projector (images in), "
            "which is pulled with the model by default.",
        ),
    ] = False,
) -> None:
    """Download a GGUF model from Hugging Face (resumable, sha256-verified)."""
    from localserve.store.download import DownloadOptions
    from localserve.store.pull import hub_ref, pull_model

    store = _store()
    # A bad name fails here, before anything touches the network; so does a damaged
    # local model, with how to repair it.
    hub_ref(model, store)
    events = pull_model(
        store, model, options=DownloadOptions(connections=connections), projector=not no_mmproj
    )
    try:
        with contextlib.closing(events):
            output.show_progress(events)
    except KeyboardInterrupt:
        output.stderr().print(
            f"pull interrupted; what was downloaded is kept: run `localserve pull {model}` to resume"
        )
        raise typer.Exit(EXIT_INTERRUPTED) from None


@app.command("import")
def import_(
    file: Annotated[
        Path,
        typer.Argument(
            help="A .gguf file (for a split model, its first part).", show_default=False
        ),
    ],
    name: Annotated[
        str, typer.Argument(help="Name to give it, e.g. mymodel or mymodel:q4.", show_default=False)
    ],
    mmproj: Annotated[
        Path | None,
        typer.Option(
            "--mmproj",
            help="The model's multimodal projector (an mmproj .gguf), for images in.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Add a local GGUF file to the store under a name (hard-linked when possible)."""
    from localserve.store.importing import import_gguf
    from localserve.store.refs import parse_ref

    ref = parse_ref(name)
    events = import_gguf(_store(), file, name, projector=mmproj)
    with contextlib.closing(events):
        output.show_progress(events)
    with_projector = f" with projector {mmproj.name}" if mmproj is not None else ""
    output.stderr().print(f"imported {file.name}{with_projector} as {ref}")


@app.command("list")
def list_(as_json: JsonOpt = False) -> None:
    """List the models in the store."""
    models = _store().list_models()
    if as_json:
        output.print_json([_model_entry(m) for m in models])
        return
    rows = [
        (
            m.name,
            m.manifest.short_id,
            output.human_size(m.manifest.total_size),
            output.human_age(m.modified_at),
        )
        for m in models
    ]
    output.print_table(("NAME", "ID", "SIZE", "MODIFIED"), rows)


def _model_entry(m: StoredModel) -> dict[str, Any]:
    return {
        "name": m.name,
        "id": m.manifest.short_id,
        "digest": f"sha256:{m.manifest.digest}",
        "size": m.manifest.total_size,
        "modified_at": m.modified_at.isoformat(),
        "quantization": m.manifest.quantization,
        "files": [entry.filename for entry in m.manifest.files],
        "projector": m.manifest.projector.filename if m.manifest.projector else None,
        "source": m.manifest.source.model_dump(),
    }


@app.command()
def show(
    model: ModelArg,
    as_json: JsonOpt = False,
    template: Annotated[
        bool, typer.Option("--template", help="Print only the chat template.")
    ] = False,
    license_: Annotated[bool, typer.Option("--license", help="Print only the licence.")] = False,
    modelfile: Annotated[
        bool, typer.Option("--modelfile", help="Print a Modelfile that recreates the model.")
    ] = False,
    parameters: Annotated[
        bool, typer.Option("--parameters", help="Print only the model's default parameters.")
    ] = False,
    system: Annotated[
        bool, typer.Option("--system", help="Print only the model's system prompt.")
    ] = False,
) -> None:
    """Show a model's architecture, size, quantization, context length (trained, and what
    a load gets here, and why) and licence."""
    store = _store()
    ref, manifest = store.get(model)
    from localserve.store.create import iter_config_lines, model_modelfile, read_config
    from localserve.store.gguf import parameter_size_label, read_gguf_model, read_projector

    info = read_gguf_model(store.blob_paths(manifest))
    config = read_config(store, manifest)
    chat_template = config.template if config.template is not None else info.chat_template
    licence = config.license if config.license is not None else info.license
    if modelfile:
        typer.echo(model_modelfile(store, manifest, config, chat_template), nl=False)
        return
    if parameters:
        for line in iter_config_lines(config):
            typer.echo(line)
        return
    if system:
        typer.echo(config.system or "")
        return
    projector_path = store.projector_path(manifest)
    projector = read_projector(projector_path) if projector_path is not None else None
    facts: dict[str, Any] = {
        "name": str(ref),
        "id": manifest.short_id,
        "digest": f"sha256:{manifest.digest}",
        "size": manifest.total_size,
        "architecture": info.architecture,
        "parameters": parameter_size_label(info.parameter_count),
        "parameter_count": info.parameter_count,
        "quantization": manifest.quantization or info.quantization,
        "context_length": info.context_length,
        "embedding_length": info.embedding_length,
        "layers": info.block_count,
        "chat_template": chat_template,
        "capabilities": info.capabilities(
            _capabilities(chat_template), projector.modalities if projector is not None else ()
        ),
        "license": licence,
        "source": manifest.source.model_dump(),
        "projector": None,
        "base": manifest.base,
        "parameters_default": config.parameters,
        "system": config.system,
        "messages": config.messages,
        "adapters": [{"file": a.filename, "scale": a.scale} for a in manifest.adapters],
    }
    if as_json or not (template or license_):
        facts["context_here"] = context_here(store, str(ref), config.parameters)
    if projector is not None and manifest.projector is not None:
        facts["projector"] = {
            "file": manifest.projector.filename,
            "digest": f"sha256:{manifest.projector.digest}",
            "size": manifest.projector.size,
            "projector_type": projector.projector_type,
            "vision": projector.has_vision,
            "audio": projector.has_audio,
            "embedding_length": projector.n_embd_out,
        }
    if template:
        typer.echo(chat_template or "")
        return
    if license_:
        typer.echo(licence or "")
        return
    if as_json:
        output.print_json(facts)
        return
    from rich.table import Table

    table = Table(box=None, show_header=False, pad_edge=False, show_edge=False)
    table.add_column(style="dim")
    table.add_column()
    for label, key in (
        ("architecture", "architecture"),
        ("parameters", "parameters"),
        ("quantization", "quantization"),
        ("context length", "context_length"),
        ("embedding length", "embedding_length"),
        ("layers", "layers"),
    ):
        table.add_row(label, str(facts[key]) if facts[key] is not None else "unknown")
    here = facts["context_here"]
    table.add_row("context here", f"{here['num_ctx']} ({here['why']})")
    table.add_row("chat template", "yes" if chat_template else "none (raw completion)")
    if manifest.base is not None:
        table.add_row("created from", manifest.base)
    for line in iter_config_lines(config):
        table.add_row("parameter", line)
    if config.system is not None:
        table.add_row("system", config.system.strip().splitlines()[0] if config.system else "")
    for adapter in manifest.adapters:
        table.add_row("adapter", f"{adapter.filename} (scale {adapter.scale})")
    table.add_row("capabilities", ", ".join(facts["capabilities"]))
    if projector is not None:
        kinds = " and ".join(projector.modalities)
        table.add_row(
            "projector",
            f"{projector.projector_type} ({kinds}), {output.human_size(projector.size)}",
        )
    table.add_row("size", output.human_size(manifest.total_size))
    source = manifest.source
    table.add_row(
        "source",
        f"hf.co/{source.repo}@{source.revision[:12]}"
        if source.type == "huggingface"
        else source.type,
    )
    console = output.stdout()
    console.print(f"  [bold]{ref}[/bold]")
    console.print(table)
    if licence:
        first = licence.strip().splitlines()[0] if licence.strip() else ""
        console.print(f"\n  [bold]License[/bold]\n    {first}")


def context_here(store: ModelStore, name: str, parameters: dict[str, Any]) -> dict[str, Any]:
    """The context a load of the model gets on this machine with the daemon's settings
    (its Modelfile's num_ctx, else LOCALSERVE_CONTEXT_LENGTH, else the planner's choice),
    and why: what `localserve plan` shows."""
    from localserve.cli.plan import CONTEXT_REASONS, planned
    from localserve.config import load_settings
    from localserve.plan.source import load_header

    result, reason = planned(
        load_header(name, store),
        ctx=parameters.get("num_ctx") or load_settings().context_length,
    )
    return {"num_ctx": result.num_ctx, "reason": reason, "why": CONTEXT_REASONS[reason]}


@app.command()
def create(
    name: Annotated[str, typer.Argument(help="Name of the new model.", show_default=False)],
    file: Annotated[
        Path,
        typer.Option("-f", "--file", help="The Modelfile.", show_default=True),
    ] = Path("Modelfile"),
) -> None:
    """Create a model from a Modelfile (FROM, PARAMETER, SYSTEM, TEMPLATE, MESSAGE,
    ADAPTER, LICENSE), sharing its base's files."""
    from functools import partial

    from localserve.errors import ImportSourceError
    from localserve.store.create import create_model
    from localserve.store.modelfile import parse_modelfile
    from localserve.store.pull import pull_model
    from localserve.store.refs import parse_ref

    ref = parse_ref(name)
    try:
        text = file.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ImportSourceError(f"cannot read the Modelfile {file}: {exc}") from None
    spec = parse_modelfile(text)
    store = _store()
    events = create_model(
        store, name, spec, folder=file.absolute().parent, pull=partial(pull_model, store)
    )
    with contextlib.closing(events):
        output.show_progress(events)
    output.stderr().print(f"created {ref}")


def _capabilities(template: str | None) -> tuple[str, ...]:
    """What the chat template can do (tools, thinking), found by rendering it as the
    daemon does for /api/show."""
    from localserve.errors import TemplateError
    from localserve.runtime.chat.formats import PLAIN, detect
    from localserve.runtime.templates import ChatTemplate

    try:
        return (detect(ChatTemplate(template)) if template else PLAIN).capabilities
    except TemplateError:
        return PLAIN.capabilities


@app.command()
def rm(
    models: Annotated[list[str], typer.Argument(help="Models to delete.", show_default=False)],
) -> None:
    """Delete models; a file goes only when no other name still uses it."""
    store = _store()
    failed = 0
    with contextlib.ExitStack() as stack:
        daemon = _local_daemon()
        if daemon is not None:
            stack.enter_context(daemon)
        for name in models:
            try:
                ref = _remove(store, daemon, name)
            except Exception as exc:
                failed = failed or report(exc)
                continue
            output.stderr().print(f"deleted '{ref}'")
    if failed:
        raise typer.Exit(failed)


def _local_daemon() -> Client | None:
    """A client of the daemon running on this machine, if one answers."""
    from localserve.cli.run import is_local
    from localserve.client import Client
    from localserve.config import load_settings

    settings = load_settings()
    if not is_local(settings.bind[0]):
        return None  # a daemon elsewhere has a store of its own
    client = Client.from_settings(settings, timeout=60.0)
    if client.ping():
        return client
    client.close()
    return None


def _remove(store: ModelStore, daemon: Client | None, name: str) -> str:
    """Delete ``name``; through a running daemon, so that it unloads the model first
    (a runner must not keep the deleted files open, nor load them again)."""
    from localserve.errors import ModelNotFoundError

    ref, _ = store.get(name)
    if daemon is not None:
        with contextlib.suppress(ModelNotFoundError):  # that daemon serves another store
            daemon.delete(str(ref))
    if store.find(ref) is not None:
        store.remove(str(ref))
    return str(ref)


@app.command()
def cp(
    source: Annotated[str, typer.Argument(help="Existing model.", show_default=False)],
    destination: Annotated[str, typer.Argument(help="New name.", show_default=False)],
) -> None:
    """Give a model a second name (no bytes are copied)."""
    dst_ref = _store().copy(source, destination)
    output.stderr().print(f"copied '{source}' to '{dst_ref}'")
