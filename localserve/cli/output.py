"""Rendering shared by commands: consoles, sizes, ages, where a model runs, and progress bars."""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Iterable
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


def print_json(value: Any) -> None:
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
