"""The base of every wire request model: unknown fields ignored, null means "default".

Ollama's Go decoder leaves a field at its default on null (``"stream": null``
streams), and OpenAI documents most fields as "<type> or null"; clients that
serialise every field rely on both.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator


class Request(BaseModel):
    model_config = ConfigDict(extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _null_is_absent(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None}
        return data
