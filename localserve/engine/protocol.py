"""The daemon <-> runner wire: length-prefixed JSON frames over the runner's stdin/stdout.

Each frame is a 4-byte big-endian length and a UTF-8 JSON object. The daemon sends
one request per frame (``{"op": "generate" | "embed" | "cancel" | "stats" |
"shutdown", "id": ...}``); the runner answers with ``{"events": [...]}`` frames,
one per engine step carrying the events of every request in that step (text
deltas, done, error), so a busy runner makes one write per step, not one per token.
Its first frame after a ``load`` is ``{"ready": {...}}`` or ``{"fatal": "..."}``.
"""

from __future__ import annotations

import json
import struct
from typing import Any

HEADER = struct.Struct(">I")
MAX_FRAME = 256 << 20  # a batch of embeddings for many long inputs is the largest thing sent


class ProtocolError(Exception):
    """A frame that is not what the protocol says (a bug, or a corrupted pipe)."""


def encode(message: dict[str, Any]) -> bytes:
    data = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()
    if len(data) > MAX_FRAME:
        raise ProtocolError(f"frame of {len(data)} bytes is over the limit")
    return HEADER.pack(len(data)) + data


def decode_body(body: bytes) -> dict[str, Any]:
    try:
        message = json.loads(body)
    except ValueError as exc:
        raise ProtocolError(f"undecodable frame: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError("a frame must hold a JSON object")
    return message


class FrameReader:
    """Incremental decoder: feed it bytes as they arrive, get whole messages back."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self._buffer += data
        messages = []
        while len(self._buffer) >= HEADER.size:
            (size,) = HEADER.unpack_from(self._buffer)
            if size > MAX_FRAME:
                raise ProtocolError(f"frame of {size} bytes is over the limit")
            if len(self._buffer) < HEADER.size + size:
                break
            body = bytes(self._buffer[HEADER.size : HEADER.size + size])
            del self._buffer[: HEADER.size + size]
            messages.append(decode_body(body))
        return messages
