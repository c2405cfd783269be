"""Length-prefixed JSON frames: how protocol.py's messages travel over the runner's pipes.

Each frame is a 4-byte big-endian length and a UTF-8 JSON object. The runner reads
its stdin with :class:`FrameReader` (bytes in, whole messages out) and writes its
stdout with :func:`write_frame`; the daemon writes :func:`encode`'s bytes and reads
with :func:`read_frame`, from asyncio. What the objects hold is protocol.py's business.
"""

from __future__ import annotations

import asyncio
import json
import os
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


def write_frame(fd: int, message: dict[str, Any]) -> None:
    """Write one message to a blocking file descriptor (the runner's stdout), whole."""
    data = memoryview(encode(message))
    while data:
        written = os.write(fd, data)
        data = data[written:]


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


async def read_frame(stream: asyncio.StreamReader) -> dict[str, Any] | None:
    """The next message on ``stream``, or None once it is closed."""
    try:
        header = await stream.readexactly(HEADER.size)
        (size,) = HEADER.unpack(header)
        return decode_body(await stream.readexactly(size))
    except asyncio.IncompleteReadError:
        return None
