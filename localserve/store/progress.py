"""Progress of long store work (pull, import), as a stream of small events.

The same events feed the CLI's progress bars and, later, the daemon's ``/api/pull``
NDJSON stream, whose wire shape they mirror (status, digest, total, completed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Progress:
    status: str
    digest: str | None = None  # 64 hex of the blob this event is about
    total: int | None = None
    completed: int | None = None
    filename: str | None = None  # a readable label for the blob

    def to_wire(self) -> dict[str, Any]:
        """The Ollama ``/api/pull`` stream object for this event."""
        wire: dict[str, Any] = {"status": self.status}
        if self.digest is not None:
            wire["digest"] = f"sha256:{self.digest}"
        if self.total is not None:
            wire["total"] = self.total
        if self.completed is not None:
            wire["completed"] = self.completed
        return wire
