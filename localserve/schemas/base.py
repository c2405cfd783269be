"""The base of every wire request model: unknown fields ignored, null means "default",
types checked strictly, text that is valid Unicode.

Ollama's Go decoder leaves a field at its default on null (``"stream": null``
streams), and OpenAI documents most fields as "<type> or null"; clients that
serialise every field rely on both. Types are strict, as both servers' are: ``"stream":
"yes"`` or ``"max_tokens": "5"`` are a 400, not silently coerced (an integer is still
a valid float).

JSON may escape half of a surrogate pair (``"\\ud800"``); Python's JSON parser lets it
through as a string no UTF-8 encoder accepts, so it would fail deep inside (the
tokenizer, the runner pipe) as a 500. It is refused here instead, as a 400.
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
