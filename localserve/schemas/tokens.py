"""Tokens and templates on the wire: llama-server's ``/tokenize``, ``/detokenize`` and
``/apply-template``, and Ollama-style ``/api/tokenize`` and ``/api/detokenize``.

llama-server serves one model, so its bodies name none; here ``model`` may be left out
while exactly one model is loaded (server/routes/tokens.py). ``/apply-template`` takes
a chat completion's body (tools, ``reasoning_effort``, ``chat_template_kwargs``...),
and its job is built by that request's own ``to_job``: the prompt shown is the one
the chat would read.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, StrictInt, StrictStr

from localserve.runtime.tokens import DetokenizeJob, TokenizeJob, Tokens
from localserve.schemas.base import Request, Response
from localserve.schemas.openai import ChatCompletionRequest


class ModelFields(Request):
    """What every body here may add: the model (llama-server's name none), and when it
    is not loaded yet, how to load it and for how long."""

    model: str | None = Field(default=None, min_length=1)
    options: dict[str, Any] | None = None
    keep_alive: str | float | int | None = None


class TokenizeRequest(ModelFields):
    """llama-server's: ``content`` a string, or strings and token ids mixed."""

    content: str | list[StrictStr | StrictInt] = ""
    add_special: bool = False
    parse_special: bool = True
    with_pieces: bool = False

    def to_job(self) -> TokenizeJob:
        return TokenizeJob(
            self.content,
            add_special=self.add_special,
            parse_special=self.parse_special,
            with_pieces=self.with_pieces,
        )


class TokenPiece(Response):
    id: int
    # The token's text, or its bytes where they are not UTF-8 alone (part of a character).
    piece: str | list[int]


class TokenizeResponse(Response):
    tokens: list[int] | list[TokenPiece]

    @classmethod
    def of(cls, result: Tokens) -> TokenizeResponse:
        if result.pieces is None:
            return cls(tokens=result.tokens)
        pieces = zip(result.tokens, result.pieces, strict=True)
        return cls(tokens=[TokenPiece(id=t, piece=p) for t, p in pieces])


class DetokenizeRequest(ModelFields):
    tokens: list[StrictInt] = Field(default_factory=list)

    def to_job(self) -> DetokenizeJob:
        return DetokenizeJob(list(self.tokens))


class DetokenizeResponse(Response):
    content: str


class ApplyTemplateRequest(ChatCompletionRequest):
    """A chat completion's body; the model may be left out as on the routes above."""

    model: str | None = Field(default=None, min_length=1)  # type: ignore[assignment]


class ApplyTemplateResponse(Response):
    prompt: str


class OllamaTokenizeRequest(Request):
    """Ollama-style: the model named, the text as ``content`` (tokenized as
    llama-server's /tokenize does by default: no BOS added, control tokens read)."""

    model: str = Field(min_length=1)
    content: str = ""
    options: dict[str, Any] | None = None
    keep_alive: str | float | int | None = None

    def to_job(self) -> TokenizeJob:
        return TokenizeJob(self.content)


class OllamaTokenizeResponse(Response):
    model: str
    tokens: list[int]


class OllamaDetokenizeRequest(Request):
    model: str = Field(min_length=1)
    tokens: list[StrictInt]
    options: dict[str, Any] | None = None
    keep_alive: str | float | int | None = None

    def to_job(self) -> DetokenizeJob:
        return DetokenizeJob(list(self.tokens))


class OllamaDetokenizeResponse(Response):
    model: str
    content: str
