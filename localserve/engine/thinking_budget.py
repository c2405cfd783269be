"""A thinking budget: how many tokens a model may reason before its thinking block is
closed for it, with the family's own closing text (``</think>``, ``[/THINK]``...), so
that the model answers after it. llama.cpp's ``--reasoning-budget`` works the same
way; it also waits for a character to be whole before it forces the close.

The sampler (engine/sampler.py) asks for a forced token before it samples and shows
the budget every token it takes. A forced close is text the model wrote as far as
everything after the sampler can tell: the parser sees the closing tag, the thinking
ends, the answer follows, as after a natural close. Each job has its own budget.

One block per answer: once closed (by the model or by the budget) the budget is
spent. Counting starts at the opening tag, or at the first token where the prompt
opened the block (DeepSeek R1, QwQ).
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from enum import Enum


@dataclass(frozen=True)
class ThinkingLimit:
    """A job's budget, as prepare.py sets it: ``tokens`` of reasoning at most, the
    block's tags (from the template), the closing tag's tokens, and whether the prompt
    already opened the block."""

    tokens: int
    open: str
    close: str
    close_tokens: tuple[int, ...]
    opened: bool = False


class State(Enum):
    WAITING = "waiting"  # for the opening tag
    COUNTING = "counting"  # reasoning tokens, watching for the closing tag
    FORCING = "forcing"  # the closing tag's tokens, one by one
    DONE = "done"  # closed: nothing more to do


class ThinkingBudget:
    """One job's thinking budget as it is spent."""

    def __init__(self, limit: ThinkingLimit) -> None:
        self.limit = limit
        self.left = limit.tokens
        self.used = 0  # reasoning tokens so far (the forced close not counted)
        self.forced_close = False
        self._queue: list[int] = []
        self._text = ""  # the tail of the text, to find a tag split across tokens
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        self.state = State.WAITING
        if limit.opened:
            self._start()

    @property
    def done(self) -> bool:
        return self.state is State.DONE

    def forced(self) -> int | None:
        """The token to take next instead of sampling, while the close is forced."""
        return self._queue[0] if self.state is State.FORCING else None

    def accept(self, token: int, piece: bytes) -> None:
        """The token the job took (sampled or forced) and the bytes it stands for."""
        if self.state is State.FORCING:
            self._queue.pop(0)
            if not self._queue:
                self.state = State.DONE
            return
        if self.state is State.DONE:
            return
        self._text += self._utf8.decode(piece)
        if self.state is State.WAITING:
            at = self._text.find(self.limit.open)
            if at < 0:
                self._text = self._text[-len(self.limit.open) :]
                return
            self._text = self._text[at + len(self.limit.open) :]
            if self.limit.close in self._text:
                self.state = State.DONE  # opened and closed in one piece
            else:
                self._start()  # the token that opened the block is not reasoning
            return
        if self.limit.close in self._text:
            self.state = State.DONE  # the model closed it itself
            return
        self._text = self._text[-len(self.limit.close) :]
        self.used += 1
        self.left -= 1
        self._spent()

    def _start(self) -> None:
        self.state = State.COUNTING
        self._spent()

    def _spent(self) -> None:
        """Force the close once the budget is spent and no character is half written
        (the close would cut it: a token or two past the budget, then)."""
        pending, _ = self._utf8.getstate()
        if self.left <= 0 and not pending:
            self.state = State.FORCING
            self.forced_close = True
            self._queue = list(self.limit.close_tokens)
            if not self._queue:
                self.state = State.DONE
