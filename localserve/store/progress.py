"""Progress of long store work (pull, import), as a stream of small events.

The same events feed the CLI's progress bars and the daemon's ``/api/pull`` and
``/api/create`` NDJSON streams, whose lines mirror them (status, digest, total,
completed: schemas/ollama.py ``ProgressResponse``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Progress:
    status: str
    digest: str | None = None  # 64 hex of the blob this event is about
    total: int | None = None
    completed: int | None = None
    filename: str | None = None  # a readable label for the blob
