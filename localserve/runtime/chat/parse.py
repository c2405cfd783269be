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
plain ``commentary`` are text, ``commentary to=functions.NAME`` is a call.
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from localserve.runtime.chat.formats import (
    DEEPSEEK_CALL_BEGIN,
    DEEPSEEK_CALL_END,
    DEEPSEEK_SEP,
    ThinkingTags,
    ToolFormat,
)
from localserve.runtime.protocol import Event, TextEvent, ThinkingEvent, ToolCallEvent

Call = tuple[str, dict[str, Any], str]  # name, arguments, the model's call id
# JSON is parsed with strict=False: a raw control character inside a string (a weak
# model writes them) does not make a call unreadable; it is escaped again on the wire.


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
    ) -> None:
        super().__init__(job_id, tool_names, show_thinking)
        self.tools = tools
        self.thinking = thinking
        self._state = "thinking" if thinking and in_thinking else "start"
        self._after_thinking = False
        self._after_call = False
        self._starts = tools.starts if tools else ()

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
            if self.thinking.open.startswith(head) and not final:
                return  # may still become the tag
        if self.tools and self.tools.kind == "llama3" and self.tool_names:
            if head.startswith(("{", "[", "<|python_tag|>")):
                self._state = "call_to_end"
                return
            if "<|python_tag|>".startswith(head) and not final:
                return
        if self._after_thinking:
            self._buffer = head
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
        at, _ = _first(self._buffer, self._starts) if self._starts else (-1, "")
        if at < 0:
            keep = 0 if final else _partial_suffix(self._buffer, self._starts)
            self._text(events, self._buffer[: len(self._buffer) - keep])
            self._buffer = self._buffer[len(self._buffer) - keep :]
            return
        self._text(events, self._buffer[:at])
        self._buffer = self._buffer[at:]
        assert self.tools is not None
        self._state = "call" if self.tools.end else "call_to_end"

    def _on_call(self, events: list[Event], final: bool) -> None:
        """A call with an end marker: parse it once the marker arrives."""
        assert self.tools is not None
        end = self._buffer.find(self.tools.end)
        if end < 0 and not final:
            return
        whole = self._buffer if end < 0 else self._buffer[: end + len(self.tools.end)]
        self._buffer = "" if end < 0 else self._buffer[len(whole) :]
        self._emit_calls(events, whole)
        self._state = "content"

    def _on_call_to_end(self, events: list[Event], final: bool) -> None:
        """Calls that run to the end of the answer (Mistral, Llama 3): parse at the end."""
        if not final:
            return
        whole, self._buffer = self._buffer, ""
        self._emit_calls(events, whole)
        self._state = "content"

    # ------------------------------------------------------------------ output

    def _emit_calls(self, events: list[Event], whole: str) -> None:
        assert self.tools is not None
        calls = parse_calls(self.tools, whole)
        if calls is None or (
            self.tool_names and any(n not in self.tool_names for n, _, _ in calls)
        ):
            self._text(events, whole)  # not a call after all: the text as written
            return
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


class HarmonyParser(StreamParser):
    """gpt-oss answers: ``<|channel|>NAME[ to=functions.F]...<|message|>BODY<|end|>``
    messages, each after ``<|start|>assistant`` but the first (the prompt wrote it)."""

    _HEADER = re.compile(r"<\|channel\|>\s*(\w+)(.*?)<\|message\|>", re.DOTALL)
    _ENDS = ("<|end|>", "<|call|>", "<|return|>", "<|start|>")

    def __init__(
        self, job_id: str, *, tool_names: Sequence[str] = (), show_thinking: bool = True
    ) -> None:
        super().__init__(job_id, tool_names, show_thinking)
        self._channel: str | None = None  # None: reading a header
        self._recipient = ""
        self._body = ""

    def _drain(self, *, final: bool) -> list[Event]:
        events: list[Event] = []
        while True:
            if self._channel is None:
                match = self._HEADER.search(self._buffer)
                if match is None:
                    if final and self._buffer.strip() and "<|channel|>" not in self._buffer:
                        events.append(TextEvent(self.job_id, self._buffer))  # no channels
                        self._buffer = ""
                    return events
                # Anything before a header (<|start|>assistant) is framing.
                self._channel = match.group(1)
                # The recipient may sit in the role part too: <|start|>assistant to=...
                self._recipient = _recipient(self._buffer[: match.end()])
                self._buffer = self._buffer[match.end() :]
            at, marker = _first(self._buffer, self._ENDS)
            if at < 0 and not final:
                keep = _partial_suffix(self._buffer, self._ENDS)
                self._stream(events, self._buffer[: len(self._buffer) - keep])
                self._buffer = self._buffer[len(self._buffer) - keep :]
                return events
            end = len(self._buffer) if at < 0 else at
            self._stream(events, self._buffer[:end])
            self._buffer = self._buffer[end + (len(marker) if at >= 0 else 0) :]
            self._close_message(events)
            if at < 0:
                return events

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
            arguments = _json_object(self._body)
            name = self._recipient
            if arguments is None or (self.tool_names and name not in self.tool_names):
                events.append(TextEvent(self.job_id, self._body))
            else:
                events.append(ToolCallEvent(self.job_id, self.calls, name, arguments))
                self.calls += 1
        self._channel, self._recipient, self._body = None, "", ""


def _recipient(header: str) -> str:
    match = re.search(r"to=functions\.([\w.-]+)", header)
    return match.group(1) if match else ""


# -------------------------------------------------------------------- call bodies


def parse_calls(tools: ToolFormat, text: str) -> list[Call] | None:
    """The calls in ``text`` (one call or section, markers included), or None when it
    is not a well-formed call of this format."""
    try:
        if tools.kind in ("hermes", "generic"):
            body = _strip_markers(text, tools.starts, tools.end)
            return _json_calls(body, tools.arguments_key, many=True)
        if tools.kind == "qwen3_coder":
            return _xml_calls(text)
        if tools.kind == "mistral":
            return _mistral_calls(text)
        if tools.kind == "mistral_args":
            return _mistral_args_calls(text)
        if tools.kind == "llama3":
            body = text.strip().removeprefix("<|python_tag|>")
            return _json_calls(body, tools.arguments_key, many=True)
        if tools.kind == "deepseek":
            return _deepseek_calls(text)
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
        return None
    return None


def _strip_markers(text: str, starts: Sequence[str], end: str) -> str:
    body = text.strip()
    for start in starts:
        if body.startswith(start):
            body = body[len(start) :]
            break
    if end and body.endswith(end):
        body = body[: -len(end)]
    return body.strip()


def _json_calls(body: str, arguments_key: str, *, many: bool) -> list[Call] | None:
    """One JSON call object, a list of them, or several separated by ``;``/newlines."""
    decoder = json.JSONDecoder(strict=False)
    calls: list[Call] = []
    at = 0
    body = body.strip()
    while at < len(body):
        value, end = decoder.raw_decode(body, at)
        items = value if isinstance(value, list) else [value]
        for item in items:
            call = _call_object(item, arguments_key)
            if call is None:
                return None
            calls.append(call)
        at = end
        while at < len(body) and body[at] in " \t\r\n;,":
            at += 1
        if not many:
            break
    return calls or None


def _call_object(item: Any, arguments_key: str) -> Call | None:
    if not isinstance(item, dict):
        return None
    if isinstance(item.get("function"), dict):  # {"type": "function", "function": {...}}
        item = {**item["function"], "id": item.get("id", "")}
    name = item.get("name")
    if not isinstance(name, str) or not name:
        return None
    keys = (arguments_key, "arguments", "parameters")
    arguments: Any = next((item[k] for k in keys if k in item), {})
    if isinstance(arguments, str):
        arguments = _json_object(arguments)
    if not isinstance(arguments, dict):
        return None
    call_id = item.get("id", "")
    return name, arguments, call_id if isinstance(call_id, str) else ""


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text.strip() or "{}", strict=False)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


_XML_FUNCTION = re.compile(r"<function=([^>\s]+)>(.*?)</function>", re.DOTALL)
_XML_PARAMETER = re.compile(r"<parameter=([^>\s]+)>(.*?)</parameter>", re.DOTALL)


def _xml_calls(text: str) -> list[Call] | None:
    body = _strip_markers(text, ("<tool_call>",), "</tool_call>")
    calls: list[Call] = []
    rest = body
    for match in _XML_FUNCTION.finditer(body):
        arguments = {
            key: _xml_value(value) for key, value in _XML_PARAMETER.findall(match.group(2))
        }
        calls.append((match.group(1), arguments, ""))
        rest = rest.replace(match.group(0), "", 1)
    return calls if calls and not rest.strip() else None


def _xml_value(raw: str) -> Any:
    """A parameter's raw text: one newline on each side dropped; JSON where it parses
    (numbers, booleans, objects), else the string."""
    value = raw.removeprefix("\n").removesuffix("\n")
    try:
        return json.loads(value, strict=False)
    except ValueError:
        return value


def _mistral_calls(text: str) -> list[Call] | None:
    calls: list[Call] = []
    for part in text.split("[TOOL_CALLS]"):
        if part.strip():
            found = _json_calls(part, "arguments", many=True)
            if found is None:
                return None
            calls.extend(found)
    return calls or None


def _mistral_args_calls(text: str) -> list[Call] | None:
    calls: list[Call] = []
    for part in text.split("[TOOL_CALLS]"):
        if not part.strip():
            continue
        name, separator, arguments = part.partition("[ARGS]")
        if not separator:
            return None
        name, _, call_id = name.partition("[CALL_ID]")
        parsed = _json_object(arguments)
        if parsed is None or not name.strip():
            return None
        calls.append((name.strip(), parsed, call_id.strip()))
    return calls or None


_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.DOTALL)


def _deepseek_calls(text: str) -> list[Call] | None:
    calls: list[Call] = []
    for piece in text.split(DEEPSEEK_CALL_BEGIN)[1:]:
        head, separator, arguments = piece.split(DEEPSEEK_CALL_END)[0].partition(DEEPSEEK_SEP)
        if not separator:
            return None
        if head.strip() == "function":  # R1/V3: function<sep>NAME\n```json\n{...}\n```
            name, _, arguments = arguments.partition("\n")
            fenced = _FENCE.match(arguments)
            arguments = fenced.group(1) if fenced else arguments
        else:  # V3.1: NAME<sep>{...}
            name = head
        parsed = _json_object(arguments)
        if parsed is None or not name.strip():
            return None
        calls.append((name.strip(), parsed, ""))
    return calls or None


# -------------------------------------------------------------------- scanning


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
