"""From token bytes to the text a client sees: UTF-8 reassembly and stop strings.

Tokens are byte pieces: one character may be split across several tokens (an
emoji is often four byte-fallback tokens), so bytes go through an incremental
UTF-8 decoder that holds an unfinished character back until it is complete.

Stop strings are matched on that text. Text that could still be the start of a
stop string is held back until it either completes the stop (then generation ends
and the stop string never reaches the client) or can no longer match (then it is
released). A client therefore never sees half a stop string.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence


class Utf8Stream:
    """Bytes in, complete characters out; invalid bytes become U+FFFD."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, piece: bytes) -> str:
        return self._decoder.decode(piece)

    def flush(self) -> str:
        """Whatever is left at the end (an unfinished character becomes U+FFFD)."""
        return self._decoder.decode(b"", final=True)


class StopMatcher:
    """Releases text as it becomes safe, and says when a stop string appeared."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self._held = ""
        self.stopped = False
        self.matched = ""  # the stop string that appeared (the earliest, on a tie the first)

    def feed(self, text: str) -> str:
        """Add generated text; returns what can be shown now. Sets ``stopped`` on a match."""
        if not self.stops:
            return text
        if self.stopped:
            return ""
        held = self._held + text
        found = [(i, stop) for stop in self.stops if (i := held.find(stop)) >= 0]
        if found:
            first, self.matched = min(found, key=lambda item: item[0])
            self.stopped = True
            self._held = ""
            return held[:first]
        keep = self._unfinished_suffix(held)
        self._held = held[len(held) - keep :] if keep else ""
        return held[: len(held) - keep]

    def flush(self) -> str:
        """At the end of generation, the held-back text was not a stop after all."""
        held, self._held = self._held, ""
        return "" if self.stopped else held

    def _unfinished_suffix(self, text: str) -> int:
        """Length of the longest end of ``text`` that is a proper prefix of a stop string."""
        longest = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:size]):
                    longest = size
                    break
        return longest
