"""Kept responses of /v1/responses (``store: true``): what ``previous_response_id``
continues, and what ``GET``/``DELETE /v1/responses/{id}`` read and remove.

::

    <state dir>/responses/
      resp_<hex>.json     one response: {"response": the response object,
                          "context": the items of the turns before it,
                          "input": its own input items}

Each file holds its whole conversation (``context``), so a response can be continued
whatever became of the ones before it. The files are bounded by count and by bytes
(``LOCALSERVE_RESPONSES_MAX_COUNT``, ``..._MAX_BYTES``): after each write the oldest go
first (by the time they were written). A file appears only by an atomic rename, so a
crash leaves the old set or the new one, and a daemon restart finds them all.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localserve.errors import ResponseNotFoundError
from localserve.store.store import atomic_write

log = logging.getLogger("localserve.store")

# Our ids are "resp_" and 32 hex digits; anything else is no file of ours (never a path).
_ID = re.compile(r"resp_[0-9a-zA-Z]{1,64}")


@dataclass(frozen=True)
class KeptResponse:
    """One kept response: the response object (as sent), the items of the turns before
    it, and its own input items (each an item dict of the Responses API)."""

    response: dict[str, Any]
    context: list[dict[str, Any]]
    input: list[dict[str, Any]]

    def conversation(self) -> list[dict[str, Any]]:
        """The items a response continuing this one starts from: everything before it,
        its input and its output (not its instructions: OpenAI does not carry those)."""
        output = self.response.get("output") or []
        return [*self.context, *self.input, *output]

    def to_json(self) -> bytes:
        data = {"response": self.response, "context": self.context, "input": self.input}
        return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


class ResponseStore:
    """All reads and writes of the kept responses go through here (blocking: the daemon
    calls it in a thread)."""

    def __init__(self, root: Path, *, max_count: int, max_bytes: int) -> None:
        self.root = Path(root).absolute()
        self.max_count = max_count
        self.max_bytes = max_bytes
        self._lock = threading.Lock()  # one prune at a time

    def path(self, response_id: str) -> Path:
        """The file of ``response_id``; ResponseNotFoundError for an id that cannot be ours."""
        if not _ID.fullmatch(response_id):
            raise ResponseNotFoundError(response_id)
        return self.root / f"{response_id}.json"

    def put(self, response_id: str, kept: KeptResponse) -> bool:
        """Keep a response, then drop the oldest beyond the bounds. False when it was not
        kept: bounds of 0, or a response larger than all the bytes allowed."""
        data = kept.to_json()
        if self.max_count == 0 or len(data) > self.max_bytes:
            log.info(
                "response %s not kept: %d bytes, bounds %d responses, %d bytes",
                response_id,
                len(data),
                self.max_count,
                self.max_bytes,
            )
            return False
        path = self.path(response_id)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            # Not fsynced: a response lost to a power cut is a 404 later, not damage.
            atomic_write(path, data, durable=False)
        except OSError as exc:
            # The answer is still good; only its continuation will be a 404.
            log.warning("response %s not kept: %s", response_id, exc)
            return False
        self._prune()
        return True

    def get(self, response_id: str) -> KeptResponse:
        try:
            data = json.loads(self.path(response_id).read_bytes())
            return KeptResponse(data["response"], data["context"], data["input"])
        except FileNotFoundError:
            raise ResponseNotFoundError(response_id) from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # A damaged file is as good as gone; say so in the log, not as a 500.
            log.warning("kept response %s cannot be read: %s", response_id, exc)
            raise ResponseNotFoundError(response_id) from None

    def delete(self, response_id: str) -> None:
        try:
            self.path(response_id).unlink()
        except FileNotFoundError:
            raise ResponseNotFoundError(response_id) from None

    def _prune(self) -> None:
        with self._lock:
            files = []
            with contextlib.suppress(FileNotFoundError):
                for entry in os.scandir(self.root):
                    if entry.name.endswith(".json") and entry.name.startswith("resp_"):
                        with contextlib.suppress(FileNotFoundError):
                            stat = entry.stat()
                            files.append((stat.st_mtime_ns, entry.name, stat.st_size))
            files.sort()
            total = sum(size for _, _, size in files)
            count = len(files)
            for _, name, size in files:
                if count <= self.max_count and total <= self.max_bytes:
                    break
                with contextlib.suppress(FileNotFoundError):
                    (self.root / name).unlink()
                count -= 1
                total -= size
