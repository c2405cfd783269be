"""What the thinking-budget tests share (tests/engine/test_thinking_budget.py and
tests/e2e/test_thinking_budget.py): a real Qwen 3 style template, a few-shot history
that makes Gemma 3 270M think at length under greedy decoding, and the count of an
answer's reasoning tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Bielik 11B v3.0's template: ChatML with <think> blocks, like Qwen 3's, but it keeps the
# reasoning of earlier turns in the history (Qwen 3's drops it), so a few-shot history
# can show the model how to think. ``enable_thinking`` makes its prompt open the block.
TEMPLATE = Path(__file__).parent / "templates" / "Bielik-11B-v3.0-Instruct.jinja"
OPEN, CLOSE = "<think>", "</think>"
STOP = ["<|im_end|>"]  # the end of a turn, which Gemma's vocabulary does not know

WORDS = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen"


def counted(n: int) -> str:
    return "I count: " + ", ".join(WORDS.split()[:n]) + "."


# Each answer thinks by counting out loud, then says it did: asked to count to twenty,
# the model counts again, for some 35 tokens, and then answers "I counted to twenty."
QUESTION = "Count to twenty."
SHOTS = [("Count to ten.", counted(10), "I counted to ten."), ("Count to fifteen.", counted(15), "I counted to fifteen.")]  # fmt: skip
FEW_SHOT: list[dict[str, Any]] = [
    *(
        turn
        for question, thought, answer in SHOTS
        for turn in (
            {"role": "user", "content": question},
            {"role": "assistant", "reasoning_content": thought, "content": answer},
        )
    ),
    {"role": "user", "content": QUESTION},
]
ANSWER = "counted to twenty"


def reasoning_tokens(pieces: list[str], *, opened: bool) -> int:
    """How many of an answer's tokens (their texts, in order) lie wholly inside its
    thinking block: after the opening tag (from the first, where the prompt opened the
    block) and before the closing tag."""
    raw = "".join(pieces)
    start = 0 if opened else raw.index(OPEN) + len(OPEN)
    end = raw.index(CLOSE, start)
    inside, at = 0, 0
    for piece in pieces:
        if start <= at and at + len(piece) <= end:
            inside += 1
        at += len(piece)
    return inside
