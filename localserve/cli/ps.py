"""`localserve ps`: the models the daemon holds in memory right now."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer

from localserve.cli import output
from localserve.cli.params import JsonOpt

if TYPE_CHECKING:
    from localserve.client import RunningModel

app = typer.Typer()


@app.command()
def ps(as_json: JsonOpt = False) -> None:
    """List the models loaded in the daemon, and when each will be unloaded."""
    from localserve.client import Client

    # Here, not at the top: the planner module brings the settings (pydantic) and the
    # GGUF reader, which `localserve --help` must not pay for.
    from localserve.plan.planner import processor_label

    with Client.from_settings() as client:
        running = client.ps()
    if as_json:
        output.print_json([_entry(m) for m in running])
        return
    rows = [
        (
            m.name,
            m.short_id,
            output.human_size(m.size),
            processor_label(m.size, m.size_vram) + (f" (layers: {m.split})" if m.devices else ""),
            _context(m),
            output.human_until(m.expires_at),
        )
        for m in running
    ]
    output.print_table(("NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"), rows)


def _entry(m: RunningModel) -> dict[str, Any]:
    from localserve.plan.planner import processor_label

    return {
        "name": m.name,
        "id": m.short_id,
        "digest": m.digest,
        "size": m.size,
        "size_vram": m.size_vram,
        "processor": processor_label(m.size, m.size_vram),
        "context_length": m.context_length,
        "context_reason": m.context_reason or None,
        "expires_at": m.expires_at.isoformat() if m.expires_at else None,
        "until": output.human_until(m.expires_at),
        **({"devices": list(m.devices)} if m.devices else {}),
    }


def _context(m: RunningModel) -> str:
    """The context, and why when the planner chose it (``32768 (trained)``)."""
    if not m.context_length:
        return ""
    chosen = m.context_reason not in ("", "set")
    return f"{m.context_length} ({m.context_reason})" if chosen else str(m.context_length)
