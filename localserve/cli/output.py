"""Rendering shared by commands: consoles, sizes, ages, where a model runs, and progress bars."""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

    from localserve.store.progress import Progress


def stdout() -> Console:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


def stderr() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


# Wide enough for any line a table prints: without a terminal nothing is cut.
_NO_TERMINAL_WIDTH = 100_000


def print_table(columns: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    """Columns without borders, as Ollama prints them, where no value is ever cut short:
    without a terminal (a pipe, a script) a line runs as long as it needs; in a terminal
    too narrow for it, only the first column (a model's name) is cut, with an ellipsis,
    never the figures after it. ``--json`` is the form for machines."""
    from rich.console import Console
    from rich.table import Table

    rows = [list(row) for row in rows]
    widths = [
        max([len(column), *(len(row[i]) for row in rows)]) for i, column in enumerate(columns)
    ]
    console = stdout()
    if not console.is_terminal:
        console = Console(highlight=False, soft_wrap=True, width=_NO_TERMINAL_WIDTH)
    # What the first column may take: the rest of the line after the others, whole, and
    # the two spaces between columns (never less than a few characters of the name).
    room = max(8, console.width - sum(widths[1:]) - 2 * (len(columns) - 1))
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for index, column in enumerate(columns):
        if index == 0:
            table.add_column(column, no_wrap=True, overflow="ellipsis", max_width=room)
        else:
            table.add_column(column, no_wrap=True, min_width=widths[index])
    for row in rows:
        table.add_row(*row)
    console.print(table)


def print_json(value: Any) -> None:
    import json  # here: a few ms of every start (`--help` included) for --json alone

    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")


def human_size(n: int) -> str:
    """Decimal units, as Ollama prints them: 253 MB, 4.9 GB."""
    from rich.filesize import decimal

    return decimal(n)


def human_age(when: datetime, now: datetime | None = None) -> str:
    seconds = max(0.0, ((now or datetime.now(UTC)) - when).total_seconds())
    for unit, size in (
        ("year", 31536000),
        ("month", 2592000),
        ("week", 604800),
        ("day", 86400),
        ("hour", 3600),
        ("minute", 60),
    ):
        if seconds >= size:
            count = int(seconds // size)
            return f"{count} {unit}{'s' if count > 1 else ''} ago"
    return "just now"


def human_until(when: datetime | None, now: datetime | None = None) -> str:
    """When a loaded model goes: ``4 minutes from now``, ``Forever``, ``Stopping...``."""
    if when is None:
        return "Unknown"
    if when.year >= 9000:  # a negative keep_alive: kept until the daemon stops
        return "Forever"
    seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if seconds <= 0:
        return "Stopping..."
    if seconds < 1:
        return "Less than a second from now"
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        if seconds >= size:
            count = int(seconds // size)
            return f"{count} {unit}{'s' if count > 1 else ''} from now"
    raise AssertionError("unreachable")


def show_progress(events: Iterable[Progress], console: Console | None = None) -> None:
    """Draw one bar per blob (percent, size, speed, time left) and a line per step."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TaskID,
        TaskProgressColumn,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    console = console or stderr()
    bars = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
    tasks: dict[str, TaskID] = {}
    iterator = iter(events)
    # An error before the first event (a bad name, a missing file) must reach the
    # user as the only output, without an empty progress display before it.
    first = next(iterator, None)
    if first is None:
        return
    with bars:
        for event in itertools.chain([first], iterator):
            if event.total is None:
                bars.console.print(event.status)
                continue
            key = event.digest or event.filename or event.status
            if key not in tasks:
                label = event.filename or event.status
                tasks[key] = bars.add_task(label, total=event.total)
            bars.update(tasks[key], completed=event.completed or 0)
