"""OpenAI's wire format for /v1: the request fields we honour, and chunk builders.

The official ``openai`` SDK is the judge (tests/test_compat_openai.py). Beyond
OpenAI's fields, ``options`` (Ollama's options object) and ``num_ctx`` are accepted
as extra body fields: a top complaint about Ollama is that /v1 cannot set the
context size.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from localserve.errors import InvalidOptionError
from localserve.runtime.options import SamplingOptions
from localserve.runtime.protocol import DoneEvent, GenerateJob
from localserve.schemas.base import Request
from localserve.schemas.media import check_media, from_url
from localserve.schemas.tools import THINK_LEVELS, check_tools, history_message


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
    # Answers decoded side by side from one prefill (their prompt cells are copied).
    n: int = Field(default=1, ge=1, le=16)
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
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool = True
    reasoning_effort: Literal["minimal", "low", "medium", "high"] | None = None
    # llama.cpp's server and vLLM take these: extra variables for the chat template.
    chat_template_kwargs: dict[str, Any] | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)

    def to_job(self, options: SamplingOptions) -> GenerateJob:
        choice = self.choice()
        check_tools(self.tools, choice)
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidOptionError("top_logprobs needs logprobs: true")
        return GenerateJob(
            messages=self.engine_messages(),
            tools=self.tools or None,
            tool_choice=choice,
            parallel_tool_calls=self.parallel_tool_calls,
            format=self.output_format(),
            think=self.think(),
            template_kwargs=dict(self.chat_template_kwargs or {}),
            options=options,
            logprobs=self.logprobs,
            top_logprobs=self.top_logprobs or 0,
            n=self.n,
        )

    def choice(self) -> str:
        """``tool_choice`` as "none", "auto", "required" or the function's name."""
        if self.tool_choice is None:
            return "auto" if self.tools else "none"
        if isinstance(self.tool_choice, str):
            return self.tool_choice
        function = self.tool_choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if self.tool_choice.get("type") != "function" or not isinstance(name, str) or not name:
            raise InvalidOptionError(
                'tool_choice must be "none", "auto", "required" or '
                '{"type": "function", "function": {"name": ...}}'
            )
        return name

    def think(self) -> bool | str | None:
        """Thinking from ``reasoning_effort`` or ``chat_template_kwargs.enable_thinking``."""
        switch = (self.chat_template_kwargs or {}).get("enable_thinking")
        if self.reasoning_effort is not None:
            level = self.reasoning_effort if self.reasoning_effort in THINK_LEVELS else "low"
            return level if switch is not False else False
        return switch if isinstance(switch, bool) else None

    def engine_messages(self) -> list[dict[str, Any]]:
        """The messages in the forms chat templates know (the engine checks the rest)."""
        return [
            _engine_message(m, i) if isinstance(m, dict) else m for i, m in enumerate(self.messages)
        ]

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


def _engine_message(message: dict[str, Any], index: int) -> dict[str, Any]:
    """``developer`` is OpenAI's newer name for the ``system`` role; tool-call arguments
    come as a JSON string where templates expect an object (Ollama parses them too);
    image and audio parts become the message's ``images`` (before its text, as Ollama
    does with them)."""
    result = history_message(message)
    if result.get("role") == "developer":
        result["role"] = "system"
    content = result.get("content")
    if isinstance(content, list):
        media: list[object] = []
        texts: list[Any] = []
        for number, part in enumerate(content):
            where = f"messages[{index}].content[{number}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "image_url":
                image = part.get("image_url")
                url = image.get("url") if isinstance(image, dict) else image
                media.append(from_url(url, f"{where}.image_url"))
            elif kind == "input_audio":
                sound = part.get("input_audio")
                if not isinstance(sound, dict):
                    raise InvalidOptionError(f"{where}.input_audio must be an object")
                media.append(sound.get("data"))
            else:
                texts.append(part)  # text parts, and anything the engine will refuse
        if media:
            checked = check_media(media, f"messages[{index}] media")
            result["images"] = [m.data for m in checked]
            result["content"] = texts
    return result


class CompletionRequest(SamplingFields):
    prompt: str | list[str] = ""
    suffix: str | None = None
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=20)  # the legacy form: top count

    def to_job(self, options: SamplingOptions) -> GenerateJob:
        if self.echo and self.logprobs is not None and self.stream:
            raise InvalidOptionError("echo with logprobs is not supported when streaming")
        return GenerateJob(
            prompt=self.text(),
            suffix=self.suffix or None,  # fill-in-the-middle
            raw=True,
            options=options,
            logprobs=self.logprobs is not None,
            top_logprobs=self.logprobs or 0,
            n=self.n,
            # echo with logprobs: the prompt's tokens come back with theirs too.
            prompt_logprobs=self.echo and self.logprobs is not None,
        )

    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else "".join(self.prompt)


class EmbeddingRequest(Request):
    model: str = Field(min_length=1)
    input: str | list[str] = Field(min_length=1)  # OpenAI refuses an empty list
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None
    options: dict[str, Any] | None = None
    keep_alive: str | float | int | None = None


def finish_reason(done: DoneEvent, called: bool = False) -> str:
    if done.done_reason == "length":
        return "length"
    return "tool_calls" if called else "stop"
