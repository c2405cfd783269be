"""The bases of the wire models: :class:`Request` for the bodies the daemon accepts,
:class:`Response` for the objects it sends.

Requests: unknown fields ignored, null means "default", types checked strictly, text
that is valid Unicode.

Ollama's Go decoder leaves a field at its default on null (``"stream": null``
streams), and OpenAI documents most fields as "<type> or null"; clients that
serialise every field rely on both. Types are strict, as both servers' are: ``"stream":
"yes"`` or ``"max_tokens": "5"`` are a 400, not silently coerced (an integer is still
a valid float).

JSON may escape half of a surrogate pair (``"\\ud800"``); Python's JSON parser lets it
through as a string no UTF-8 encoder accepts, so it would fail deep inside (the
tokenizer, the runner pipe) as a 500. It is refused here instead, as a 400.

Responses: one rule says which keys a client sees. A field without a default is always
sent, as null when it is None (OpenAI's ``"finish_reason": null``); a field whose
default is None is left out while it is None (Ollama sends ``thinking`` only when there
is some). Each is written by the same JSON encoder as the dict it replaced, so the
bytes on the wire did not change: streamed chunks and whole answers as a dict for
json.dumps (server/streaming.py, JSONResponse), a route's ``response_model`` by
FastAPI through pydantic (tests/unit/golden/wire.txt pins them all).
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic_core import PydanticCustomError

from localserve.config import parse_duration
from localserve.errors import InvalidOptionError

# A keep-alive longer than this outlives any daemon: it means "forever", and keeping it
# as a number would overflow the wall-clock expiry time.
MAX_KEEP_ALIVE = 100 * 365 * 86400.0


class Request(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _null_is_absent(cls, data: Any) -> Any:
        if isinstance(data, dict):
            _check_unicode(data)
            return {k: v for k, v in data.items() if v is not None}
        return data


class Response(BaseModel):
    """The base of every wire response model (see the module docstring for the rule)."""

    # The daemon builds these itself: an unknown field is a bug to hear about.
    model_config = ConfigDict(extra="forbid")

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        # The rule, applied once per class: pydantic then leaves these keys out itself,
        # in model_dump and in FastAPI's own JSON of a response_model alike.
        optional = [f for f in cls.model_fields.values() if f.default is None]
        if any(f.exclude_if is None for f in optional):
            for field in optional:
                field.exclude_if = _is_none
            cls.model_rebuild(force=True)


def _is_none(value: object) -> bool:
    return value is None


def _check_unicode(value: Any) -> None:
    """Refuse strings (values or keys, at any depth) that cannot be encoded as UTF-8."""
    if isinstance(value, str):
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise PydanticCustomError(
                    "invalid_unicode",
                    "text is not valid Unicode (an unpaired surrogate such as \\ud800)",
                ) from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_unicode(key)
            _check_unicode(item)
    elif isinstance(value, list):
        for item in value:
            _check_unicode(item)


def keep_alive_seconds(value: str | float | int | None) -> float | None:
    """Seconds a model stays loaded after a request (negative: forever; None: the default)."""
    if value is None:
        return None
    seconds = parse_duration(value)
    if math.isnan(seconds):
        raise InvalidOptionError(
            "keep_alive must be a duration, got NaN", hint="use a negative value for forever"
        )
    return -1.0 if seconds > MAX_KEEP_ALIVE else seconds
