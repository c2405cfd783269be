"""Speculative drafts from the sequence's own text (prompt lookup, n-gram).

When the last few tokens of a sequence appeared before in its prompt or output, the
tokens that followed them then are a good guess for what comes next: a model that
copies, quotes, edits code or repeats a structure repeats them. The engine feeds the
guess (the draft) with the sequence's next token in the same ``llama_decode`` as
every other sequence's token, samples each position in order from the model's own
distribution, and keeps the drafted tokens up to the first one the sampler did not
pick. Each kept token saves a whole step. Sampling is unchanged: every token comes
from the same sampler with the same state as without drafts (a draft only decides
which logits are already computed), so greedy output is identical and sampled output
has the same distribution.

A sequence whose drafts keep failing pauses drafting for longer and longer
(``Drafter.failed``), so text that has nothing to copy costs little more than
plain decoding.
"""

from __future__ import annotations

from collections.abc import Sequence

# Suffix lengths tried, longest first: a longer match predicts better. No shorter
# match than 6 tokens: every drafted row costs a row of the output layer (a large
# vocabulary makes that most of a token's compute on a CPU), and free text repeats
# short runs ("of the") whose drafts would mostly be rejected; a copy re-syncs after
# six tokens. (llama-server's ngram-simple waits for 12.) ``busy`` sequences, beside
# others in the batch, wait for 8.
NGRAM_SIZES = (12, 8, 6)
BUSY_MIN_NGRAM = 8
MAX_DRAFT = 32
# The first draft's length; then it doubles after a draft kept whole and shrinks to
# what was kept (plus one) after one cut short, so a sequence that copies long runs
# drafts long and one that matches a word or two does not pay for eight.
FIRST_DRAFT = 8
# After this many failed drafts in a row, skip 2, 4, 8... steps (at most MAX_PAUSE).
MAX_PAUSE = 32


class Drafter:
    """Per sequence: an index of where each n-gram of its history was last seen."""

    def __init__(self, prompt: Sequence[int]) -> None:
        self.history = list(prompt)  # the prompt, then every token the sampler picked
        self._seen: dict[tuple[int, ...], int] = {}  # n-gram -> index just after it
        self._indexed = 0  # history positions whose n-grams ending there are indexed
        self._misses = 0
        self._pause = 0  # steps to skip before the next draft
        self._length = FIRST_DRAFT
        self.drafted = 0  # tokens proposed
        self.accepted = 0  # of them, the ones the sampler picked

    def push(self, token: int) -> None:
        self.history.append(token)

    def draft(self, limit: int, *, busy: bool = False) -> list[int]:
        """Up to ``limit`` tokens that followed the latest earlier occurrence of the
        history's longest matching suffix; [] when nothing matches or while paused."""
        if limit <= 0:
            return []
        if self._pause > 0:
            self._pause -= 1
            return []
        history = self.history
        end = len(history)
        # Index every n-gram that ends before the last token (the suffix itself must
        # find an earlier occurrence, not itself).
        for stop in range(self._indexed, end - 1):
            for n in NGRAM_SIZES:
                if stop + 1 >= n:
                    self._seen[tuple(history[stop + 1 - n : stop + 1])] = stop + 1
        self._indexed = max(self._indexed, end - 1)
        for n in NGRAM_SIZES:
            if end < n or (busy and n < BUSY_MIN_NGRAM):
                continue
            start = self._seen.get(tuple(history[end - n :]))
            if start is None:
                continue
            found = []
            for token in history[start : start + min(limit, self._length)]:
                if token < 0:  # an image's placeholder: not a token to feed
                    break
                found.append(token)
            return found
        return []

    def record(self, drafted: int, accepted: int) -> None:
        """The outcome of one draft: pause longer after each draft with nothing kept."""
        self.drafted += drafted
        self.accepted += accepted
        if accepted == drafted:
            self._length = min(MAX_DRAFT, self._length * 2)
        else:
            self._length = max(1, accepted + 1)
        if accepted:
            self._misses = 0
        else:
            self._misses += 1
            self._pause = min(MAX_PAUSE, 1 << self._misses) if self._misses > 1 else 0
