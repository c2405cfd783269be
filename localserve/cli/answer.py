"""A conversation with a model, and how its answers reach the screen as they stream.

Used by both faces of ``localserve run``: the one-shot answer and the interactive chat.

- A spinner on stderr (terminals only) until the first token: loading a model and
  reading a long prompt can take a while, and silence looks like a hang.
- Tokens are written as they arrive; on a terminal, lines break between words at the
  terminal's width instead of wherever the terminal cuts them.
- Ctrl+C closes the stream, which closes the HTTP connection: the daemon then cancels
  the generation and frees its slot. What arrived so far is kept as the answer.
- ``--verbose`` statistics go to stderr, so they never mix with a piped answer.
"""

from __future__ import annotations

import base64
import contextlib
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from localserve.client.types import ChatResponse, Message

if TYPE_CHECKING:
    from rich.console import Console
    from rich.status import Status

    from localserve.client import Client


# A path to a picture or a sound: quoted, or unquoted with backslash-escaped spaces
# (what a terminal pastes when a file is dropped on it).
_MEDIA_PATH = re.compile(
    r"""(?P<q>['"])(?P<quoted>[^'"]+?\.(?:png|jpe?g|gif|bmp|wav|mp3|flac))(?P=q)"""
    r"""|(?P<bare>(?:~|\.{1,2})?/?(?:[^\s'"\\]|\\ )+?\.(?:png|jpe?g|gif|bmp|wav|mp3|flac))(?=$|[\s,;:!?)])""",
    re.IGNORECASE,
)


def attach_files(prompt: str) -> tuple[str, list[Path]]:
    """The prompt without the paths of existing media files in it, and those files.
    Paths of files that do not exist stay in the text as they were."""
    found: list[Path] = []

    def take(match: re.Match[str]) -> str:
        raw = match.group("quoted") or match.group("bare").replace("\\ ", " ")
        path = Path(raw).expanduser()
        if not path.is_file():
            return match.group(0)
        found.append(path)
        return ""

    text = _MEDIA_PATH.sub(take, prompt)
    return (" ".join(text.split()) if found else prompt), found


@dataclass
class Answer:
    text: str
    final: ChatResponse | None  # the last chunk with the timings; None when interrupted
    first_token_s: float | None  # seconds from sending the request to the first text
    interrupted: bool = False


@dataclass
class Conversation:
    """What the chat remembers between turns, and what each request is sent with."""

    model: str
    system: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    format: str | None = None
    keep_alive: str | None = None
    verbose: bool = False
    wordwrap: bool = True
    think: bool | str | None = None  # None: the model's default
    hide_thinking: bool = False
    messages: list[Message] = field(default_factory=list)

    def request(self, prompt: str, images: tuple[str, ...] = ()) -> list[Message]:
        system = [Message("system", self.system)] if self.system else []
        return [*system, *self.messages, Message("user", prompt, images=images)]

    def ask(self, client: Client, prompt: str, out: TextIO, err: Console) -> Answer:
        """Stream the answer to ``prompt`` onto ``out`` and remember the turn. Paths
        of existing image (or sound) files in the prompt attach them, as in Ollama."""
        prompt, attached = attach_files(prompt)
        for path in attached:
            err.print(f"Added image '{path}'", markup=False, highlight=False)
        images = tuple(base64.b64encode(path.read_bytes()).decode() for path in attached)
        answer = stream_answer(
            client,
            self.model,
            self.request(prompt, images),
            options=self.options,
            format=self.format,
            keep_alive=self.keep_alive,
            out=out,
            err=err,
            wrap=self.wordwrap,
            think=self.think,
            show_thinking=not self.hide_thinking,
        )
        # Keep the turn even when interrupted: the partial answer stands in for the
        # reply, so roles keep alternating (some chat templates refuse two user turns).
        self.messages += [
            Message("user", prompt, images=images),
            Message("assistant", answer.text),
        ]
        if self.verbose and answer.final is not None:
            print_stats(answer, err)
        return answer


class Spinner:
    """rich's spinner on stderr, only on a terminal; ``stop`` may be called many times."""

    def __init__(self, console: Console) -> None:
        self._status: Status | None = None
        if console.is_terminal:
            self._status = console.status("", spinner="dots")

    def start(self) -> Spinner:
        if self._status is not None:
            self._status.start()
        return self

    def stop(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None

    def __enter__(self) -> Spinner:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# Control characters a model may emit (an escape sequence can retitle or reprogram a
# terminal): shown as U+FFFD on a terminal, never interpreted. Piped output is untouched.
_CONTROL = {c: "\ufffd" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))}
for _kept in "\n\t":
    del _CONTROL[ord(_kept)]
_CONTROL[ord("\r")] = ""


class WordWrapper:
    """Writes streamed text, breaking lines between words at ``width`` columns.

    Text arrives a token at a time, so a word may already be half printed when it
    turns out not to fit: then the cursor goes back over it, erases it and prints it
    again on the next line. ``width=None`` writes the text unchanged (not a terminal).
    """

    def __init__(self, out: TextIO, width: int | None) -> None:
        self.out = out
        # One column short of the edge: a terminal that has just filled its last
        # column is in a "pending wrap" state where cursor moves count differently.
        self.width = max(10, width - 1) if width else None
        self.column = 0
        self.word = ""  # the current word's characters, as printed on this line
        self.last = ""

    def write(self, text: str) -> None:
        if not text:
            return
        self.last = text[-1]
        if self.width is None:
            self.out.write(text)
            self.out.flush()
            return
        from rich.cells import cell_len

        pieces: list[str] = []
        for ch in text.translate(_CONTROL):
            if ch == "\n":
                pieces.append("\n")
                self.column, self.word = 0, ""
            elif ch in " \t":
                step = 1 if ch == " " else 8 - self.column % 8
                if self.column + step > self.width:
                    pieces.append("\n")  # the space ends the line instead
                    self.column = 0
                else:
                    pieces.append(ch)
                    self.column += step
                self.word = ""
            else:
                size = cell_len(ch)
                if self.column + size > self.width:
                    word_size = cell_len(self.word)
                    if self.word and word_size + size <= self.width:
                        # Move the half-printed word to the next line.
                        pieces.append(f"\x1b[{word_size}D\x1b[K\n{self.word}")
                        self.column = word_size
                    else:
                        pieces.append("\n")  # a word longer than a line: cut it
                        self.column, self.word = 0, ""
                pieces.append(ch)
                self.column += size
                self.word += ch
        self.out.write("".join(pieces))
        self.out.flush()

    def end_line(self) -> None:
        """End the answer with exactly one newline (none added after one)."""
        if self.last != "\n":
            self.out.write("\n")
            self.out.flush()
        self.column, self.word, self.last = 0, "", "\n"


def terminal_width(out: TextIO) -> int | None:
    try:
        return shutil.get_terminal_size().columns if out.isatty() else None
    except (AttributeError, ValueError, OSError):
        return None


def stream_answer(
    client: Client,
    model: str,
    messages: list[Message],
    *,
    options: dict[str, Any],
    format: str | None,
    keep_alive: str | None,
    out: TextIO,
    err: Console,
    wrap: bool = True,
    think: bool | str | None = None,
    show_thinking: bool = True,
) -> Answer:
    """Send one chat request and print the answer as it streams; Ctrl+C stops it.

    A thinking model's reasoning comes first, between ``Thinking...`` and ``...done
    thinking.`` as Ollama shows it, dimmed on a terminal; ``show_thinking`` off
    leaves it out (it is never part of the answer kept in the history).
    """
    writer = WordWrapper(out, terminal_width(out) if wrap else None)
    dim = out.isatty() if hasattr(out, "isatty") else False
    thinking = False
    parts: list[str] = []
    final: ChatResponse | None = None
    first_token: float | None = None
    interrupted = False
    started = time.perf_counter()
    spinner = Spinner(err).start()
    try:
        chunks = client.chat(
            model,
            messages,
            options=options,
            format=format,
            keep_alive=keep_alive,
            think=think,
            stream=True,
        )
        # Closing the stream closes the connection: that is what cancels the daemon's work.
        with contextlib.closing(chunks):
            for chunk in chunks:
                reasoning, piece = chunk.message.thinking, chunk.message.content
                if ((reasoning and show_thinking) or piece) and first_token is None:
                    first_token = time.perf_counter() - started
                    spinner.stop()
                if reasoning and show_thinking:
                    if not thinking:
                        thinking = True
                        _styled(out, "Thinking...\n", dim)
                    _styled(out, reasoning, dim, writer)
                if piece:
                    if thinking:
                        thinking = False
                        writer.end_line()
                        _styled(out, "...done thinking.\n\n", dim)
                    writer.write(piece)
                    parts.append(piece)
                if chunk.done:
                    final = chunk
    except KeyboardInterrupt:
        interrupted = True
    finally:
        spinner.stop()
    writer.end_line()
    return Answer("".join(parts), final, first_token, interrupted)


_DIM, _PLAIN = "\x1b[2m", "\x1b[0m"


def _styled(out: TextIO, text: str, dim: bool, writer: WordWrapper | None = None) -> None:
    """Thinking text: dimmed on a terminal (the model's own text goes through the
    writer, which neutralises its control characters), plain when piped."""
    if dim:
        out.write(_DIM)
    if writer is not None:
        writer.write(text)
    else:
        out.write(text)
    if dim:
        out.write(_PLAIN)
    out.flush()


def format_duration(ns: int | float) -> str:
    """Nanoseconds as a short human duration: ``850.00µs``, ``12.30ms``, ``1.52s``, ``2m3.4s``."""
    seconds = ns / 1e9
    if seconds >= 60:
        minutes, rest = divmod(seconds, 60)
        return f"{int(minutes)}m{rest:.1f}s"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.2f}{unit}"
    return f"{int(ns)}ns"


def _rate(count: int | None, ns: int | None) -> str:
    if not count or not ns:
        return "n/a"
    return f"{count / (ns / 1e9):.2f} tokens/s"


def print_stats(answer: Answer, console: Console) -> None:
    """The timings of an answer, as ``ollama run --verbose`` prints them."""
    final = answer.final
    if final is None:
        return
    rows = [
        ("total duration", format_duration(final.total_duration or 0)),
        ("load duration", format_duration(final.load_duration or 0)),
        (
            "time to first token",
            format_duration(answer.first_token_s * 1e9) if answer.first_token_s else "n/a",
        ),
        ("prompt eval count", f"{final.prompt_eval_count or 0} token(s)"),
        ("prompt eval duration", format_duration(final.prompt_eval_duration or 0)),
        ("prompt eval rate", _rate(final.prompt_eval_count, final.prompt_eval_duration)),
        ("eval count", f"{final.eval_count or 0} token(s)"),
        ("eval duration", format_duration(final.eval_duration or 0)),
        ("eval rate", _rate(final.eval_count, final.eval_duration)),
    ]
    for label, value in rows:
        console.print(f"{label + ':':<22}{value}", markup=False, highlight=False)
