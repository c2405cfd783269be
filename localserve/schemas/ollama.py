"""Ollama's wire format: request bodies the daemon accepts and the objects it returns.

Requests ignore unknown top-level fields (newer Ollama clients send fields older
servers do not know, and Ollama itself ignores them) but check the types of the
fields they know. The official ``ollama`` Python client is the judge of the shapes
(tests/test_compat_ollama.py).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import Field, model_validator

from localserve.runtime.options import SamplingOptions
from localserve.runtime.protocol import DoneEvent, GenerateJob
from localserve.schemas.base import Request, keep_alive_seconds
from localserve.schemas.media import check_media
from localserve.schemas.tools import check_think, check_tools, history_message


def _model_from_name(data: Any) -> Any:
    # Older clients send "name" instead of "model".
    if isinstance(data, dict) and "model" not in data and "name" in data:
        return {**data, "model": data["name"]}
    return data


class KeepAlive(Request):
    keep_alive: str | float | int | None = None

    def keep_alive_seconds(self) -> float | None:
        return keep_alive_seconds(self.keep_alive)


class GenerateRequest(KeepAlive):
    model: str = Field(min_length=1)
    prompt: str = ""
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    raw: bool = False
    format: Literal["json", ""] | dict[str, Any] | None = None
    options: dict[str, Any] | None = None
    stream: bool = True
    images: list[str] | None = None
    think: bool | str | None = None
    # Token ids a previous /api/generate returned: the prompt continues them (deprecated
    # in Ollama in favour of /api/chat, still sent by older clients).
    context: list[int] | None = None
    logprobs: bool = False
    top_logprobs: int = Field(default=0, ge=0, le=20)

    def to_job(self, options: SamplingOptions) -> GenerateJob:
        return GenerateJob(
            prompt=self.prompt,
            suffix=self.suffix or None,  # fill-in-the-middle (an empty one: a completion)
            system=self.system,
            raw=self.raw,
            format=self.format or None,
            think=check_think(self.think),
            options=options,
            context=self.context,
            want_context=True,
            logprobs=self.logprobs or self.top_logprobs > 0,
            top_logprobs=self.top_logprobs,
            images=[m.data for m in check_media(self.images or (), "images")],
        )


class Message(Request):
    role: str
    content: str | list[Any] | None = ""
    images: list[str] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    name: str | None = None
    thinking: str | None = None
    tool_name: str | None = None  # on a tool result: the function it answers
    tool_call_id: str | None = None


class ChatRequest(KeepAlive):
    model: str = Field(min_length=1)
    messages: list[Message] = Field(default_factory=list)
    tools: list[dict[str, Any]] | None = None
    format: Literal["json", ""] | dict[str, Any] | None = None
    options: dict[str, Any] | None = None
    stream: bool = True
    think: bool | str | None = None
    logprobs: bool = False
    top_logprobs: int = Field(default=0, ge=0, le=20)

    def to_job(self, options: SamplingOptions) -> GenerateJob:
        check_tools(self.tools, "auto")
        return GenerateJob(
            messages=[
                _with_media(history_message(m.model_dump(exclude_none=True)), i)
                for i, m in enumerate(self.messages)
            ],
            tools=self.tools or None,
            format=self.format or None,
            think=check_think(self.think),
            options=options,
            logprobs=self.logprobs or self.top_logprobs > 0,
            top_logprobs=self.top_logprobs,
        )


def _with_media(message: dict[str, Any], index: int) -> dict[str, Any]:
    if message.get("images"):
        checked = check_media(message["images"], f"messages[{index}].images")
        message["images"] = [m.data for m in checked]
    return message


class EmbedRequest(KeepAlive):
    model: str = Field(min_length=1)
    input: str | list[str] = Field(default_factory=list)
    truncate: bool = True
    dimensions: int | None = Field(default=None, ge=1)
    options: dict[str, Any] | None = None


class EmbeddingsRequest(KeepAlive):
    """The legacy /api/embeddings body."""

    model: str = Field(min_length=1)
    prompt: str = ""
    options: dict[str, Any] | None = None


class NameRequest(Request):
    model: str = Field(min_length=1)

    _from_name = model_validator(mode="before")(_model_from_name)


class ShowRequest(NameRequest):
    verbose: bool = False


class PullRequest(NameRequest):
    insecure: bool = False
    stream: bool = True


class CreateRequest(Request):
    """Ollama's current /api/create: a new model from a stored one (``from``) or from
    uploaded blobs (``files``, ``adapters``: file name -> ``sha256:<hex>``), with
    settings as a Modelfile gives them."""

    model: str = Field(min_length=1)
    from_: str | None = Field(default=None, alias="from")
    files: dict[str, str] | None = None
    adapters: dict[str, str] | None = None
    template: str | None = None
    system: str | None = None
    parameters: dict[str, Any] | None = None
    messages: list[dict[str, Any]] | None = None
    license: str | list[str] | None = None
    quantize: str | None = None
    stream: bool = True

    _from_name = model_validator(mode="before")(_model_from_name)


class CopyRequest(Request):
    source: str = Field(min_length=1)
    destination: str = Field(min_length=1)


def timestamp(when: datetime | None = None) -> str:
    """RFC 3339 with nanoseconds and a Z, as Ollama writes ``created_at``."""
    moment = (when or datetime.now(UTC)).astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond:06d}000Z"


def final_fields(done: DoneEvent, total_ns: int) -> dict[str, Any]:
    """The timing fields of a final chunk, from the engine's done event."""
    return {
        "done": True,
        "done_reason": done.done_reason,
        "total_duration": total_ns,
        "load_duration": done.load_duration,
        "prompt_eval_count": done.prompt_eval_count,
        "prompt_eval_duration": done.prompt_eval_duration,
        "eval_count": done.eval_count,
        "eval_duration": done.eval_duration,
        # localserve: speculative decoding's drafted and accepted tokens (llama-server's
        # timings.draft_n / draft_n_accepted), when it drafted at all.
        **(
            {"draft_count": done.draft_count, "draft_accepted_count": done.draft_accepted}
            if done.draft_count
            else {}
        ),
    }
