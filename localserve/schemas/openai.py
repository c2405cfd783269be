"""OpenAI's wire format for /v1: the request fields we honour, and chunk builders.

The official ``openai`` SDK is the judge (tests/test_compat_openai.py). Beyond
OpenAI's fields, ``options`` (Ollama's options object) and ``num_ctx`` are accepted
as extra body fields: a top complaint about Ollama is that /v1 cannot set the
context size.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import Field

from localserve.errors import InvalidOptionError
from localserve.schemas.base import Request


class StreamOptions(Request):
    include_usage: bool = False


class ResponseFormat(Request):
    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: dict[str, Any] | None = None


class SamplingFields(Request):
    model: str = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=0)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=1)
    user: str | None = None
    # localserve extensions
    options: dict[str, Any] | None = None
    num_ctx: int | None = Field(default=None, ge=16)
    keep_alive: str | float | int | None = None

    def overrides(self, max_tokens: int | None) -> dict[str, Any]:
        """These fields as Ollama options (they win over the same keys in ``options``)."""
        return {
            "num_predict": max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "stop": self.stop,
            "frequency_penalty": self.frequency_penalty,
            "presence_penalty": self.presence_penalty,
            "num_ctx": self.num_ctx,
        }

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(SamplingFields):
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=0)
    response_format: ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None

    def engine_messages(self) -> list[dict[str, Any]]:
        """The messages in the forms chat templates know (the engine checks the rest)."""
        return [_engine_message(m) if isinstance(m, dict) else m for m in self.messages]

    def output_format(self) -> str | dict[str, Any] | None:
        fmt = self.response_format
        if fmt is None or fmt.type == "text":
            return None
        if fmt.type == "json_object":
            return "json"
        schema = (fmt.json_schema or {}).get("schema")
        if not isinstance(schema, dict):
            raise InvalidOptionError(
                "response_format.json_schema.schema must be a JSON schema object"
            )
        return schema


def _engine_message(message: dict[str, Any]) -> dict[str, Any]:
    """``developer`` is OpenAI's newer name for the ``system`` role; tool-call arguments
    come as a JSON string where templates expect an object (Ollama parses them too)."""
    result = dict(message)
    if result.get("role") == "developer":
        result["role"] = "system"
    calls = result.get("tool_calls")
    if isinstance(calls, list):
        result["tool_calls"] = [_parsed_arguments(call) for call in calls]
    return result


def _parsed_arguments(call: Any) -> Any:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("arguments"), str):
        return call
    try:
        arguments = json.loads(function["arguments"] or "{}")
    except ValueError:
        raise InvalidOptionError(
            f"tool call arguments are not valid JSON: {function['arguments'][:100]!r}"
        ) from None
    return {**call, "function": {**function, "arguments": arguments}}


class CompletionRequest(SamplingFields):
    prompt: str | list[str] = ""
    suffix: str | None = None
    echo: bool = False


class EmbeddingRequest(Request):
    model: str = Field(min_length=1)
    input: str | list[str] = Field(min_length=1)  # OpenAI refuses an empty list
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None
    options: dict[str, Any] | None = None
    keep_alive: str | float | int | None = None


def usage(done: dict[str, Any]) -> dict[str, int]:
    prompt = int(done.get("prompt_eval_count", 0))
    completion = int(done.get("eval_count", 0))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def finish_reason(done: dict[str, Any]) -> str:
    return "length" if done.get("done_reason") == "length" else "stop"
