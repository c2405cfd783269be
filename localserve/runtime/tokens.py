"""The pipe's messages about tokens and templates (runtime/protocol.py carries them):
the jobs of the ``tokenize`` and ``detokenize`` ops and the one answer of each, and the
answer to a ``render`` (whose job is a GenerateJob). The runner answers them between
engine steps, without a slot (engine/tokens.py, engine/prepare.py); the routes are
server/routes/tokens.py."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from localserve.errors import InvalidOptionError


@dataclass(frozen=True)
class TokenizeJob:
    """Text to token ids, as llama-server's /tokenize: ``content`` a string, or a list of
    strings and token ids (the ids kept as they are); ``add_special`` adds the BOS the
    vocabulary asks for (to the first string only), ``parse_special`` reads control
    tokens written in the text as themselves; ``with_pieces`` also returns each
    token's text."""

    content: str | list[str | int]
    add_special: bool = False
    parse_special: bool = True
    with_pieces: bool = False

    def to_wire(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> TokenizeJob:
        content = data.get("content", "")
        if not isinstance(content, str) and not (
            isinstance(content, list)
            and all(isinstance(c, str | int) and not isinstance(c, bool) for c in content)
        ):
            raise InvalidOptionError("content must be a string or a list of strings and ids")
        return cls(
            content,
            add_special=bool(data.get("add_special", False)),
            parse_special=bool(data.get("parse_special", True)),
            with_pieces=bool(data.get("with_pieces", False)),
        )


@dataclass(frozen=True)
class DetokenizeJob:
    """Token ids to text, every token's piece (control tokens written out) joined."""

    tokens: list[int]

    def to_wire(self) -> dict[str, Any]:
        return {"tokens": self.tokens}

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> DetokenizeJob:
        tokens = data.get("tokens")
        if not isinstance(tokens, list) or not all(
            isinstance(t, int) and not isinstance(t, bool) for t in tokens
        ):
            raise InvalidOptionError("tokens must be a list of token ids")
        return cls(tokens)


@dataclass(frozen=True)
class Tokens:
    """The answer to a ``tokenize``: the ids, and with ``with_pieces`` each one's text,
    as llama-server gives it: a string, or the list of its bytes where they are not
    valid UTF-8 on their own (a part of a character)."""

    id: str
    tokens: list[int]
    pieces: list[str | list[int]] | None = None
    type: Literal["tokens"] = "tokens"

    def to_wire(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Tokens:
        return cls(str(data["id"]), list(data["tokens"]), data.get("pieces"))


@dataclass(frozen=True)
class Detokenized:
    """The answer to a ``detokenize``: the text (bytes that are not UTF-8 as U+FFFD)."""

    id: str
    content: str
    type: Literal["detokenized"] = "detokenized"

    def to_wire(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Detokenized:
        return cls(str(data["id"]), str(data["content"]))


@dataclass(frozen=True)
class RenderedPrompt:
    """The answer to a ``render``: the job's prompt as the text its generation would
    tokenize (the chat template's output, tools and thinking switches included)."""

    id: str
    prompt: str
    type: Literal["rendered"] = "rendered"

    def to_wire(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> RenderedPrompt:
        return cls(str(data["id"]), str(data["prompt"]))
