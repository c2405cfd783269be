"""Splitting a streamed answer into text, thinking and tool calls.

One :class:`AnswerParser` per request, fed the answer's text as it is generated
(after stop strings). It releases text as soon as it cannot be the start of a
marker: a tail that could still become ``<tool_call>`` or ``</think>`` is held
back, as vLLM's and Ollama's parsers do, so a client never sees half a tag. A
tool call is emitted once it is complete (its end marker seen, or the answer
ended), with its arguments parsed as a JSON object; Ollama streams calls the same
way. A call that does not parse comes back as text, markers included: never a
half call, never an exception (``tests/unit/test_tool_parsers.py`` fuzzes this).

Thinking: with tags, text between the open and close tag is reasoning. When the
prompt already ends with the open tag (Qwen 3, DeepSeek R1 templates), the answer
starts inside the block. A call marker inside a reasoning block also ends it
(Qwen 3 sometimes opens a call before closing its thought). Harmony (gpt-oss)
answers are a series of channel messages: ``analysis`` is reasoning, ``final`` and
plain ``commentary`` are text, ``commentary to=functions.NAME`` is a call. Muse
answers are messages too, addressed ``to=self`` (reasoning), ``to=user`` (text) or
``to=NAME`` (a call).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Sequence

from localserve.runtime.chat.calls import (
    Call,
    TaggedScanner,
    Types,
    atem_calls,
    json_object,
    parse_calls,
    parse_leading_calls,
)
from localserve.runtime.chat.syntax import (
    MUSE_END,
    MUSE_MESSAGE,
    MUSE_MORE,
    MUSE_START,
    TAG,
    ThinkingTags,
    ToolFormat,
)
from localserve.runtime.protocol import Event, TextEvent, ThinkingEvent, ToolCallEvent


class StreamParser(ABC):
    """Text in as it is generated, events out: ``feed`` with each piece, ``flush`` at
    the end. Subclasses keep what they cannot decide yet in ``_buffer``."""

    def __init__(self, job_id: str, tool_names: Sequence[str], show_thinking: bool) -> None:
        self.job_id = job_id
        self.tool_names = frozenset(tool_names)
        self.show_thinking = show_thinking
        self.calls = 0  # tool calls emitted so far (each call's index)
        self._buffer = ""

    def feed(self, text: str) -> list[Event]:
        self._buffer += text
        return self._drain(final=False)

    def flush(self) -> list[Event]:
        return self._drain(final=True)

    @abstractmethod
    def _drain(self, *, final: bool) -> list[Event]:
        """Events for what the buffer now decides (everything, when ``final``)."""


class AnswerParser(StreamParser):
    """Text in, events out; see the module docstring."""

    def __init__(
        self,
        job_id: str,
        *,
        tools: ToolFormat | None = None,
        tool_names: Sequence[str] = (),
        thinking: ThinkingTags | None = None,
        in_thinking: bool = False,
        show_thinking: bool = True,
        types: Types | None = None,
        framing: tuple[str, str] = ("", ""),
    ) -> None:
        super().__init__(job_id, tool_names, show_thinking)
        self.tools = tools
        self.thinking = thinking
        self.types = types or {}
        self._state = "thinking" if thinking and in_thinking else "start"
        if tools and tools.opened and self._state == "start":
            self._state = "recipient"
        self._after_thinking = False
        self._after_call = False
        self._starts = tools.starts if tools else ()
        self._scanner = TaggedScanner(tools.syntax) if tools and tools.syntax else None
        self._in_section = False
        self._held = ""  # a tagged section's markers read but not yet sent
        # What the template writes around the answer's text (Kimi K3's
        # <|open|>response<|sep|> ... <|close|>response<|sep|><|close|>message<|sep|>):
        # dropped at the answer's start and end. Its tags may be missing (special
        # tokens llama.cpp did not render), its words not (Solar's "assistant").
        self._opening = _loose(framing[0])
        self._opening_size = len(framing[0].strip())
        self._ending = framing[1].strip()

    # ------------------------------------------------------------------- states

    def _drain(self, *, final: bool) -> list[Event]:
        events: list[Event] = []
        while True:
            before = (self._state, len(self._buffer))
            handler = getattr(self, f"_on_{self._state}")
            handler(events, final)
            if (self._state, len(self._buffer)) == before:
                return events

    def _on_start(self, events: list[Event], final: bool) -> None:
        """The answer's beginning: an opening think tag, or a bare JSON call (Llama 3)."""
        head = self._buffer.lstrip()
        if not head and not final:
            return
        if self.thinking:
            if head.startswith(self.thinking.open):
                self._buffer = head[len(self.thinking.open) :]
                self._state = "thinking"
                return
            if head.startswith(self.thinking.close) and not self._after_thinking:
                # An empty thought, closed alone (MiniMax-M3 writes </mm:think> before
                # an answer without reasoning).
                self._buffer = head[len(self.thinking.close) :]
                self._after_thinking = True
                return
            if self.thinking.open.startswith(head) and not final:
                return  # may still become the tag
            if self.thinking.close.startswith(head) and not final:
                return
        if self.tools and self.tools.kind == "llama3" and self.tool_names:
            if head.startswith(("{", "[", "<|python_tag|>")):
                self._state = "call_to_end"
                return
            if "<|python_tag|>".startswith(head) and not final:
                return
        if self._opening is not None:
            if len(head) < self._opening_size and not final:
                return  # not enough text yet to tell
            found = self._opening.match(head)
            if found and found.end():
                head = self._buffer = head[found.end() :].lstrip()
        if self._after_thinking:
            self._buffer = head
        self._state = "content"

    def _framing_left(self, text: str) -> bool:
        """Whether ``text`` may be (the start of) what is left of the end of the
        turn's framing: a piece of it from one of its tags on."""
        head = text.strip()
        if not head or not self._ending:
            return False
        starts = [m.start() for m in TAG.finditer(self._ending)]
        return any(self._ending.startswith(head, at) for at in starts)

    def _on_ending(self, events: list[Event], final: bool) -> None:
        """What may be the template's end of turn: dropped if the answer ends there,
        text if more follows."""
        rest = self._buffer
        if any(rest.startswith(start) for start in self._starts):
            self._state = "content"  # a call's marker that starts like the ending
            return
        if any(start.startswith(rest) for start in self._starts) and not final:
            return
        if self._ending.startswith(rest.rstrip()) or (
            rest.startswith(self._ending) and not rest[len(self._ending) :].strip()
        ):
            if final:
                self._buffer = ""
            return
        size = len(self._ending) if rest.startswith(self._ending) else 1
        self._text(events, rest[:size])  # not the end after all
        self._buffer = rest[size:]
        self._state = "content"

    def _on_recipient(self, events: list[Event], final: bool) -> None:
        """The prompt wrote the call opening (Functionary's ``>>>``): the first line
        names a tool, or the text recipient (``all``) for an answer in text."""
        assert self.tools is not None
        if self.tools.opened.startswith(self._buffer) and not final:
            return  # may be the opening written again
        if self._buffer.startswith(self.tools.opened):  # the model wrote it again
            self._buffer = self._buffer[len(self.tools.opened) :]
        line, newline, rest = self._buffer.partition("\n")
        if not newline and not final and len(line) < 64:
            return  # names are short: wait for the line's end
        if line.strip() == self.tools.text_name and newline:
            self._buffer = rest
        else:
            self._buffer = self.tools.opened + self._buffer
        self._state = "content"

    def _on_thinking(self, events: list[Event], final: bool) -> None:
        assert self.thinking is not None
        ends = (self.thinking.close, *self._starts)
        at, marker = _first(self._buffer, ends)
        if at < 0:
            keep = 0 if final else _partial_suffix(self._buffer, ends)
            self._think(events, self._buffer[: len(self._buffer) - keep])
            self._buffer = self._buffer[len(self._buffer) - keep :]
            return
        self._think(events, self._buffer[:at])
        if marker == self.thinking.close:
            self._buffer = self._buffer[at + len(marker) :]
            self._state = "start"  # the answer's leading blank lines are dropped
            self._after_thinking = True
        else:
            self._buffer = self._buffer[at:]  # a call began inside the thought
            self._state = "content"

    def _on_content(self, events: list[Event], final: bool) -> None:
        if self._after_call:  # blank lines between calls are not an answer
            self._buffer = self._buffer.lstrip()
            if not self._buffer:
                return
            self._after_call = False
        if self.calls and self._framing_left(self._buffer):
            if final:  # the end of the turn's framing after calls (Kimi K3)
                self._buffer = ""
            return
        after_calls = self.tools.after_calls if self.tools else ""
        if self.calls and after_calls and after_calls.startswith(self._buffer.strip()):
            if final:  # where the model stops for the results (Gemma 4)
                self._buffer = ""
            return
        markers = (*self._starts, self._ending) if self._ending else self._starts
        at, marker = _first(self._buffer, markers) if markers else (-1, "")
        if at < 0:
            if final:
                text, self._buffer = self._buffer, ""
                cut = _partial_suffix(text.rstrip(), (self._ending,)) if self._ending else 0
                if cut and TAG.search(text.rstrip()[-cut:]):  # an end of turn, cut off
                    text = text.rstrip()[:-cut]
                self._text(events, text)
                return
            keep = _partial_suffix(self._buffer, markers)
            self._text(events, self._buffer[: len(self._buffer) - keep])
            self._buffer = self._buffer[len(self._buffer) - keep :]
            return
        self._text(events, self._buffer[:at])
        self._buffer = self._buffer[at:]
        if marker == self._ending and marker not in self._starts:
            self._state = "ending"
            return
        assert self.tools is not None
        if self._scanner is not None:
            self._state = "tagged"
        else:
            self._state = "call" if self.tools.end else "call_to_end"

    def _on_call(self, events: list[Event], final: bool) -> None:
        """A call with an end marker: parse it once the marker arrives."""
        assert self.tools is not None
        start = next((len(s) for s in self._starts if self._buffer.startswith(s)), 0)
        end = self._buffer.find(self.tools.end, start)
        if end < 0 and not final:
            return
        whole = self._buffer if end < 0 else self._buffer[: end + len(self.tools.end)]
        self._buffer = "" if end < 0 else self._buffer[len(whole) :]
        self._state = "content"
        if end < 0:  # the answer ended inside the call: keep what is complete
            self._buffer = whole
            self._on_call_to_end(events, final)
            return
        self._emit_calls(events, whole)

    def _on_call_to_end(self, events: list[Event], final: bool) -> None:
        """Calls that run to the end of the answer (Mistral, Llama 3): parse at the end.
        An answer cut short (or with junk after its calls) keeps the calls that are
        complete; the rest is text."""
        if not final:
            return
        whole, self._buffer = self._buffer, ""
        self._state = "content"
        assert self.tools is not None
        if self._emit_calls(events, whole, as_text=False):
            return
        calls, size = parse_leading_calls(self.tools, whole)
        if calls and self._allowed(calls):
            self._send(events, calls)
            whole = whole[size:]
        self._text(events, whole)

    def _on_tagged(self, events: list[Event], final: bool) -> None:
        """Markers learnt from the template (GLM, Kimi, MiniMax...): each call is sent
        as soon as it is complete."""
        assert self._scanner is not None and self.tools is not None
        while True:
            if self.tools.text_name:  # >>>all\n: text again after the calls
                text_again = self.tools.opened + self.tools.text_name + "\n"
                head = self._buffer.lstrip()
                if head.startswith(text_again):
                    self._buffer = head[len(text_again) :]
                    self._state, self._held, self._after_call = "content", "", False
                    return
                if text_again.startswith(head) and head and not final:
                    return
            step, size, call = self._scanner.scan(
                self._buffer, final=final, opened=self._in_section, types=self.types
            )
            if step == "wait":
                return
            if step == "call" and call is not None and self._allowed([call]):
                self._send(events, [call])
                self._held = ""
            elif step in ("open", "skip"):
                self._held += self._buffer[:size]
                self._in_section = self._in_section or step == "open"
            elif step in ("close", "end"):
                self._held = ""
                self._in_section = False
                self._state = "content"
                self._after_call = self.calls > 0
            else:  # not a call after all: the text as written
                self._text(events, self._held + self._buffer)
                self._held, self._buffer, size = "", "", 0
                self._in_section = False
                self._state = "content"
            self._buffer = self._buffer[size:]
            if self._state != "tagged":
                return

    # ------------------------------------------------------------------ output

    def _emit_calls(self, events: list[Event], whole: str, *, as_text: bool = True) -> bool:
        assert self.tools is not None
        calls = parse_calls(self.tools, whole, self.types)
        if calls is None or not self._allowed(calls):
            if as_text:
                self._text(events, whole)  # not a call after all: the text as written
            return False
        self._send(events, calls)
        return True

    def _allowed(self, calls: list[Call]) -> bool:
        return not self.tool_names or all(name in self.tool_names for name, _, _ in calls)

    def _send(self, events: list[Event], calls: list[Call]) -> None:
        for name, arguments, call_id in calls:
            events.append(ToolCallEvent(self.job_id, self.calls, name, arguments, call_id))
            self.calls += 1
        self._after_call = True

    def _text(self, events: list[Event], text: str) -> None:
        if text:
            events.append(TextEvent(self.job_id, text))

    def _think(self, events: list[Event], text: str) -> None:
        if text and self.show_thinking:
            events.append(ThinkingEvent(self.job_id, text))


class MessageParser(StreamParser):
    """Answers written as messages, each a header and then a body up to an end marker
    (gpt-oss's harmony, Muse). The reading loop is here; a subclass says what a header
    opens (``_open``), where a body's text goes (``_stream``) and what a message is once
    it ends (``_close_message``)."""

    _HEADER: re.Pattern[str]
    _ENDS: tuple[str, ...]
    _MARKER: str  # an answer with no header and without this is plain text
    _KEPT: str | None = None  # an end marker that opens the next message: left for it

    def __init__(self, job_id: str, tool_names: Sequence[str], show_thinking: bool) -> None:
        super().__init__(job_id, tool_names, show_thinking)
        self._in_message = False  # False: reading a header

    def _drain(self, *, final: bool) -> list[Event]:
        events: list[Event] = []
        while True:
            if not self._in_message:
                match = self._HEADER.search(self._buffer)
                if match is None:
                    if final and self._buffer.strip() and self._MARKER not in self._buffer:
                        events.append(TextEvent(self.job_id, self._buffer))  # no header
                        self._buffer = ""
                    return events
                # Anything before a header (<|start|>assistant) is framing.
                self._open(match)
                self._in_message = True
                self._buffer = self._buffer[match.end() :]
            at, marker = _first(self._buffer, self._ENDS)
            if at < 0 and not final:
                keep = _partial_suffix(self._buffer, self._ENDS)
                self._stream(events, self._buffer[: len(self._buffer) - keep])
                self._buffer = self._buffer[len(self._buffer) - keep :]
                return events
            end = len(self._buffer) if at < 0 else at
            self._stream(events, self._buffer[:end])
            skip = len(marker) if at >= 0 and marker != self._KEPT else 0
            self._buffer = self._buffer[end + skip :]
            self._close_message(events)
            self._in_message = False
            if at < 0:
                return events

    @abstractmethod
    def _open(self, header: re.Match[str]) -> None:
        """A message begins: what its header says it is."""

    @abstractmethod
    def _stream(self, events: list[Event], text: str) -> None:
        """Text of the open message's body, as it comes."""

    @abstractmethod
    def _close_message(self, events: list[Event]) -> None:
        """The open message ended."""


class HarmonyParser(MessageParser):
    """gpt-oss answers: ``<|channel|>NAME[ to=functions.F]...<|message|>BODY<|end|>``
    messages, each after ``<|start|>assistant`` but the first (the prompt wrote it)."""

    _HEADER = re.compile(r"<\|channel\|>\s*(\w+)(.*?)<\|message\|>", re.DOTALL)
    _ENDS = ("<|end|>", "<|call|>", "<|return|>", "<|start|>")
    _MARKER = "<|channel|>"

    def __init__(
        self, job_id: str, *, tool_names: Sequence[str] = (), show_thinking: bool = True
    ) -> None:
        super().__init__(job_id, tool_names, show_thinking)
        self._channel = ""
        self._recipient = ""
        self._body = ""

    def _open(self, header: re.Match[str]) -> None:
        self._channel = header.group(1)
        # The recipient may sit in the role part too: <|start|>assistant to=...
        self._recipient = _recipient(header.string[: header.end()])

    def _stream(self, events: list[Event], text: str) -> None:
        if not text:
            return
        if self._recipient:
            self._body += text  # a call's arguments: parsed when the message ends
        elif self._channel == "analysis":
            if self.show_thinking:
                events.append(ThinkingEvent(self.job_id, text))
        else:
            events.append(TextEvent(self.job_id, text))

    def _close_message(self, events: list[Event]) -> None:
        if self._recipient:
            arguments = json_object(self._body)
            name = self._recipient
            if arguments is None or (self.tool_names and name not in self.tool_names):
                events.append(TextEvent(self.job_id, self._body))
            else:
                events.append(ToolCallEvent(self.job_id, self.calls, name, arguments))
                self.calls += 1
        self._channel, self._recipient, self._body = "", "", ""


class MuseParser(MessageParser):
    """Muse answers: `` to=RECIPIENT<|message|>BODY`` messages, each ended by ``<|eom|>``
    (another follows, after ``<|start|>assistant``) or ``<|eot|>``; the prompt wrote
    the first one's ``<|start|>assistant``. ``self`` is reasoning, ``user`` (or no
    recipient) the answer, any other a call: its body is ``<atem:function_calls>`` XML
    naming the recipient again."""

    _HEADER = re.compile(r"(?:\s*to=([^\s<]+))?\s*" + re.escape(MUSE_MESSAGE))
    _ENDS = (MUSE_MORE, MUSE_END, MUSE_START)
    _MARKER = MUSE_MESSAGE
    _KEPT = MUSE_START  # <|start|> opens the next message: it stays for the header

    def __init__(
        self,
        job_id: str,
        *,
        tool_names: Sequence[str] = (),
        show_thinking: bool = True,
        types: Types | None = None,
    ) -> None:
        super().__init__(job_id, tool_names, show_thinking)
        self.types = types or {}
        self._recipient = ""
        self._body = ""

    def _open(self, header: re.Match[str]) -> None:
        self._recipient = header.group(1) or "user"

    def _stream(self, events: list[Event], text: str) -> None:
        if not text:
            return
        if self._recipient == "self":
            if self.show_thinking:
                events.append(ThinkingEvent(self.job_id, text))
        elif self._recipient == "user":
            events.append(TextEvent(self.job_id, text))
        else:
            self._body += text  # a call: parsed when the message ends

    def _close_message(self, events: list[Event]) -> None:
        if self._recipient not in ("self", "user"):
            calls = atem_calls(self._body, self.types)
            name = self._recipient
            if (
                calls is None
                or any(called != name for called, _, _ in calls)
                or (self.tool_names and name not in self.tool_names)
            ):
                events.append(TextEvent(self.job_id, self._body))
            else:
                for called, arguments, _ in calls:
                    events.append(ToolCallEvent(self.job_id, self.calls, called, arguments))
                    self.calls += 1
        self._recipient, self._body = "", ""


def _recipient(header: str) -> str:
    match = re.search(r"to=functions\.([\w.-]+)", header)
    return match.group(1) if match else ""


# -------------------------------------------------------------------- scanning


def _loose(opening: str) -> re.Pattern[str] | None:
    """A regex for an answer's opening whose tags may be missing, or that may start at
    one of its later tags: the part the prompt did not write (Solar Open's prompt ends
    ``<|begin|>assistant``, and the answer opens ``<|content|>``)."""
    if not opening.strip():
        return None
    pieces = [p for p in re.split(r"(<[^<>\s]{1,40}>|\s+)", opening.strip()) if p]
    parts = []
    for piece in pieces:
        if piece.isspace():
            parts.append(r"\s*")
        elif piece.startswith("<") and piece.endswith(">"):
            parts.append(f"(?:{re.escape(piece)})?")
        else:
            parts.append(re.escape(piece))
    tails = [
        re.escape("".join(pieces[at:]))
        for at in range(1, len(pieces))
        if pieces[at].startswith("<") and pieces[at].endswith(">")
    ]
    return re.compile("|".join(["".join(parts), *tails]))


def _first(text: str, markers: Sequence[str]) -> tuple[int, str]:
    """The earliest marker in ``text`` and where it is ((-1, "") if none)."""
    best, found = -1, ""
    for marker in markers:
        at = text.find(marker)
        if at >= 0 and (best < 0 or at < best):
            best, found = at, marker
    return best, found


def _partial_suffix(text: str, markers: Sequence[str]) -> int:
    """Length of the longest end of ``text`` that is a proper prefix of a marker."""
    longest = 0
    for marker in markers:
        for size in range(min(len(marker) - 1, len(text)), longest, -1):
            if text.endswith(marker[:size]):
                longest = size
                break
    return longest
