"""What the sync and async clients share: request bodies, error mapping, stream decoding.

Kept free of I/O so both clients (and tests) use the very same rules:

- an error answer (status >= 400) becomes the library's exception by status;
- a stream line ``{"error": ...}`` (an error after the status was sent) raises;
- NDJSON: one JSON object per line; SSE (the /v1 routes): ``data: {json}`` events up
  to ``data: [DONE]``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from localserve.client.types import Message
from localserve.errors import (
    DaemonNotRunningError,
    EngineError,
    InvalidOptionError,
    LocalserveError,
    ModelNotFoundError,
    ServerBusyError,
    StoreError,
)

Options = Mapping[str, Any]
KeepAlive = str | float | int | None
Format = str | dict[str, Any] | None
Messages = Sequence[Message | Mapping[str, Any]]


def not_running(base_url: str) -> DaemonNotRunningError:
    return DaemonNotRunningError(
        "localserve is not running: start it with `localserve serve`",
        hint=f"nothing answers at {base_url}; set LOCALSERVE_HOST if the daemon listens elsewhere",
    )


def connection_lost(base_url: str, exc: Exception) -> LocalserveError:
    return LocalserveError(
        f"lost the connection to localserve at {base_url}: {exc or type(exc).__name__}",
        hint="the daemon may have stopped; its log says why (localserve serve --foreground shows it)",
    )


def error_message(body: Any, status: int) -> str:
    message = body.get("error") if isinstance(body, dict) else None
    if isinstance(message, dict):  # the /v1 routes' shape
        message = message.get("message")
    if not message and isinstance(body, str) and body.strip():
        message = body.strip().splitlines()[0]
    return str(message or f"HTTP {status}")


def raise_for_error(
    status: int,
    body: Any,
    model: str | None = None,
    failure: type[LocalserveError] = EngineError,
) -> None:
    """Turn an error answer into the matching exception (by status, never by text).

    ``failure`` is what a 5xx means for this route: the engine failed (generation), or
    Hugging Face did (a pull).
    """
    if status < 400:
        return
    text = error_message(body, status)
    if status == 404 and model:
        raise ModelNotFoundError(model)
    if status == 400:
        raise InvalidOptionError(text)
    if status == 503:
        raise ServerBusyError(text, hint="the daemon's queue is full; try again in a moment")
    if status in (409, 422, 507):  # a damaged or invalid model file, a full disk
        raise StoreError(text)
    if status >= 500:
        raise failure(text)
    raise LocalserveError(text)


def decode_body(content: bytes) -> Any:
    if not content:
        return None
    try:
        return json.loads(content)
    except ValueError:
        return content.decode(errors="replace")


def decode_line(line: str, error: type[LocalserveError] = EngineError) -> dict[str, Any] | None:
    """One NDJSON line; None for a blank one. ``{"error": ...}`` raises ``error``."""
    if not line.strip():
        return None
    try:
        chunk = json.loads(line)
    except ValueError:
        raise LocalserveError(f"the daemon sent a line that is not JSON: {line[:80]!r}") from None
    if not isinstance(chunk, dict):
        raise LocalserveError(f"the daemon sent a line that is not an object: {line[:80]!r}")
    if "error" in chunk:
        raise error(error_message(chunk, 500))
    return chunk


def iter_sse(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """The JSON payloads of a server-sent event stream, up to ``data: [DONE]``.

    An ``{"error": {...}}`` payload raises EngineError, as an NDJSON error line does.
    """
    data: list[str] = []
    for line in lines:
        if line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
            continue
        if line.strip() or not data:
            continue  # comments, event names, ids, and blank lines between events
        payload = "\n".join(data)
        data = []
        if payload.strip() == "[DONE]":
            return
        chunk = decode_line(payload)
        if chunk is not None:
            yield chunk
    if data and "\n".join(data).strip() != "[DONE]":
        chunk = decode_line("\n".join(data))
        if chunk is not None:
            yield chunk


def _message(m: Message | Mapping[str, Any]) -> dict[str, Any]:
    return m.to_wire() if isinstance(m, Message) else dict(m)


def _common(
    stream: bool, format: Format, options: Options | None, keep_alive: KeepAlive
) -> dict[str, Any]:
    body: dict[str, Any] = {"stream": stream}
    if format:
        body["format"] = format
    if options:
        body["options"] = dict(options)
    if keep_alive is not None:
        body["keep_alive"] = keep_alive
    return body


def generate_body(
    model: str,
    prompt: str,
    *,
    system: str | None,
    raw: bool,
    format: Format,
    options: Options | None,
    keep_alive: KeepAlive,
    stream: bool,
) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "prompt": prompt}
    if system is not None:
        body["system"] = system
    if raw:
        body["raw"] = True
    return body | _common(stream, format, options, keep_alive)


def chat_body(
    model: str,
    messages: Messages,
    *,
    format: Format,
    options: Options | None,
    keep_alive: KeepAlive,
    stream: bool,
    think: bool | str | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": [_message(m) for m in messages]}
    if think is not None:
        body["think"] = think
    return body | _common(stream, format, options, keep_alive)
