"""The prompts every benchmark server gets: the same text, so the same work."""

from __future__ import annotations

from pathlib import Path

TOPICS = ["the ocean", "a lighthouse", "mountains", "a city at night", "the first computer", "autumn leaves", "a train journey", "the moon",
          "a bakery", "old libraries", "desert winds", "a chess match", "rain in spring", "a jazz club", "glaciers", "a market day"]  # fmt: skip


def prompt(i: int) -> str:
    """A short prompt (~20 tokens) that asks for more text than any run generates."""
    return f"Write a long, detailed essay about {TOPICS[i % len(TOPICS)]} (variant {i}).\n\n"


def history(turns: int) -> str:
    """A made-up chat history of ``turns`` exchanges (~75 tokens each)."""
    lines = []
    for i in range(turns):
        lines.append(f"User: Tell me something interesting about {TOPICS[i % len(TOPICS)]}.")
        lines.append(
            f"Assistant: Here is a fact about {TOPICS[i % len(TOPICS)]}: "
            + "it is remarkable in many ways, " * 6
        )
    return "\n".join(lines) + "\n"


class Tokenizer:
    """The model's own tokenizer (vocabulary only, no weights), to size prompts."""

    def __init__(self, model: Path) -> None:
        from llama_cpp import Llama
        from llama_cpp._utils import suppress_stdout_stderr

        with suppress_stdout_stderr(disable=False):  # a context warning that does not apply
            self.llama = Llama(model_path=str(model), vocab_only=True, verbose=False)

    def count(self, text: str) -> int:
        """Prompt tokens as the servers see them: with the beginning-of-sequence token."""
        return len(self.llama.tokenize(text.encode(), add_bos=True, special=False))

    def close(self) -> None:
        self.llama.close()


def long_prompt(tokenizer: Tokenizer, tag: str, target: int) -> tuple[str, int]:
    """A prompt of about ``target`` tokens whose first line is unique to ``tag``, so no
    server finds any of it in a prefix cache. Returns the text and its token count."""
    sentences: list[str] = [f"Document {tag}: notes to summarise at the end.\n"]
    i = 0
    while True:
        sentences.append(
            f"Note {i} of {tag}: {TOPICS[i % len(TOPICS)]} is described in record {i * 7 + 3}, "
            f"which mentions {TOPICS[(i * 5 + 1) % len(TOPICS)]} as well.\n"
        )
        i += 1
        text = "".join(sentences) + "Summary:"
        n = tokenizer.count(text)
        if n >= target:
            return text, n
