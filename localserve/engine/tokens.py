"""The vocabulary as a service: text to token ids and back, for /tokenize and
/detokenize (server/routes/tokens.py).

The runner answers these between engine steps, from the model it already holds: no
slot, no context, nothing decoded. (The daemon may not load llama.cpp itself, even a
vocabulary-only model: a crash in it must never take the daemon down; and the model a
client counts tokens for is usually the one it is about to chat with, so it loads
once, for both.) Tokens are what the engine itself feeds: the same ``Model.tokenize``
the prompt builder calls (engine/prompt.py).
"""

from __future__ import annotations

from localserve.engine.llama import Model
from localserve.errors import InvalidOptionError
from localserve.runtime.tokens import DetokenizeJob, TokenizeJob


def tokenize(model: Model, job: TokenizeJob) -> tuple[list[int], list[str | list[int]] | None]:
    """The ids of the job's content, and with ``with_pieces`` each one's text.

    A list mixes text and ids as llama-server's does: ids stay as they are, and only
    text that comes first gets the BOS that ``add_special`` asks for.
    """
    parts = [job.content] if isinstance(job.content, str) else job.content
    tokens: list[int] = []
    for index, part in enumerate(parts):
        if isinstance(part, int):
            tokens.append(check_token(model, part))
        else:
            first = index == 0
            tokens += model.tokenize(
                part, add_special=job.add_special and first, parse_special=job.parse_special
            )
    if not job.with_pieces:
        return tokens, None
    return tokens, [piece_of(model.piece(t, special=True)) for t in tokens]


def detokenize(model: Model, job: DetokenizeJob) -> str:
    """The text of the ids: their pieces joined, control tokens written out (as
    llama-server's /detokenize), bytes that are not UTF-8 as U+FFFD."""
    pieces = [model.piece(check_token(model, t), special=True) for t in job.tokens]
    return b"".join(pieces).decode("utf-8", "replace")


def piece_of(data: bytes) -> str | list[int]:
    """A token's text on the wire: a string, or its bytes where they are not UTF-8 on
    their own (one byte of a character split over several tokens), as llama-server."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return list(data)


def check_token(model: Model, token: int) -> int:
    # llama.cpp reads its token tables unchecked (or throws across the C API, which
    # aborts the runner): an id outside the vocabulary must never reach it.
    if not 0 <= token < model.n_vocab:
        raise InvalidOptionError(
            f"token id {token} is not in the model's vocabulary (0 to {model.n_vocab - 1})"
        )
    return token
