"""Reading the calls in a piece of answer text, per call format (the streaming
parser in :mod:`.parse` finds where the pieces start and end).

Each reader returns the calls, or None when the text is not well-formed calls of
its format; it never raises. ``types`` (tool name -> parameter -> JSON type, from
the request's tools) keeps a string parameter a string where a format writes
values as raw text (Qwen3-Coder, GLM...): ``3`` stays ``"3"`` for a string and
becomes 3 otherwise. JSON is parsed with strict=False: a raw control character
inside a string (a weak model writes them) does not make a call unreadable.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from typing import Any

from localserve.runtime.chat.syntax import (
    ATEM_CALLS_CLOSE,
    ATEM_CALLS_OPEN,
    DEEPSEEK_CALL_BEGIN,
    DEEPSEEK_CALL_END,
    DEEPSEEK_SEP,
    ID_SLOT,
    INDEX_SLOT,
    KEY_SLOT,
    TAG,
    TaggedSyntax,
    ToolFormat,
    lead_literal,
)

Call = tuple[str, dict[str, Any], str]  # name, arguments, the model's call id
Types = Mapping[str, Mapping[str, str]]  # tool name -> parameter -> JSON type

_ERRORS = (ValueError, TypeError, KeyError, AttributeError, RecursionError, SyntaxError)


def parse_calls(tools: ToolFormat, text: str, types: Types | None = None) -> list[Call] | None:
    """The calls in ``text`` (one call or section, markers included), or None when it
    is not a well-formed call of this format."""
    types = types or {}
    try:
        if tools.kind == "hermes":
            body = _strip_markers(text, tools.starts, tools.end)
            return _json_calls(body, tools)
        if tools.kind == "generic":
            return _generic_calls(tools, text)
        if tools.kind == "qwen3_coder":
            return _xml_calls(text, types)
        if tools.kind == "mistral":
            return _mistral_calls(text, tools)
        if tools.kind == "mistral_args":
            return _mistral_args_calls(text)
        if tools.kind == "llama3":
            body = text.strip().removeprefix("<|python_tag|>")
            return _json_calls(body, tools)
        if tools.kind == "deepseek":
            return _deepseek_calls(text)
        if tools.kind == "pythonic":
            return _pythonic_calls(_strip_markers(text, tools.starts, tools.end))
        if tools.kind == "gemma4":
            return _gemma4_calls(text)
        if tools.kind == "muse":
            return atem_calls(text, types)
        if tools.kind == "tagged" and tools.syntax is not None:
            return _tagged_section(tools.syntax, text, types)
    except _ERRORS:
        return None
    return None


def parse_leading_calls(tools: ToolFormat, text: str) -> tuple[list[Call], int]:
    """The complete calls at the start of ``text`` (an answer cut short, or with junk
    after its calls) and how much of the text they take: Mistral's
    ``[TOOL_CALLS]...`` pieces, JSON calls one after the other."""
    try:
        if tools.kind == "mistral_args":
            return _leading_mistral_args(text)
        if tools.kind in ("generic", "hermes", "llama3", "mistral"):
            return _leading_json_calls(tools, text)
        if tools.kind == "deepseek":
            return _longest_complete(text, DEEPSEEK_CALL_END, "", _deepseek_calls)
        if tools.kind == "pythonic":
            return _leading_pythonic(tools, text)
    except _ERRORS:
        pass
    return [], 0


def _longest_complete(
    text: str, end: str, closing: str, parse: Callable[[str], list[Call] | None]
) -> tuple[list[Call], int]:
    """The calls of the longest start of ``text`` that ends with ``end`` and parses
    (with ``closing`` added: what the cut took from a section), and its length."""
    at = text.rfind(end)
    while at >= 0:
        size = at + len(end)
        try:
            calls = parse(text[:size] + closing)
        except _ERRORS:
            calls = None
        if calls:
            return calls, size
        at = text.rfind(end, 0, at)
    return [], 0


def _leading_pythonic(tools: ToolFormat, text: str) -> tuple[list[Call], int]:
    """LFM2's ``[f(...), g(...`` cut inside a later call: the calls closed before it."""
    start = next((s for s in tools.starts if text.lstrip().startswith(s)), "")
    head = len(text) - len(text.lstrip()) + len(start)
    body = text[head:]
    closing = "]" if body.lstrip().startswith("[") else ""
    calls, size = _longest_complete(body, ")", closing, _pythonic_calls)
    return calls, head + size if calls else 0


# ------------------------------------------------------------------ JSON calls


def _strip_markers(text: str, starts: Sequence[str], end: str) -> str:
    body = text.strip()
    for start in starts:
        if body.startswith(start):
            body = body[len(start) :]
            break
    if end and body.endswith(end):
        body = body[: -len(end)]
    return body.strip()


def _generic_calls(tools: ToolFormat, text: str) -> list[Call] | None:
    """PREFIX JSON [END], possibly repeated (one call per prefix)."""
    body = text.strip()
    if tools.end.startswith("```") and body.endswith("```"):
        body = body[:-3]  # Command R's fenced list: the fence ends it
    if tools.end and body.endswith(tools.end):
        body = body[: -len(tools.end)]
    calls: list[Call] = []
    start = tools.starts[0]
    pieces = body.split(start) if start and body.startswith(start) else [body]
    for piece in pieces:
        if piece.strip():
            found = _json_calls(piece.strip(), tools)
            if found is None:
                return None
            calls += found
    return calls or None


def _json_calls(body: str, tools: ToolFormat) -> list[Call] | None:
    """One JSON call object, a list of them, or several separated by ``;``/newlines."""
    calls, at = _decode_calls(body.strip(), tools)
    if calls is None or body.strip()[at:].strip():
        return None
    return calls or None


def _decode_calls(body: str, tools: ToolFormat) -> tuple[list[Call] | None, int]:
    decoder = json.JSONDecoder(strict=False)
    calls: list[Call] = []
    at = 0
    while at < len(body):
        value, end = decoder.raw_decode(body, at)
        items = value if isinstance(value, list) else [value]
        for item in items:
            found = _call_object(item, tools)
            if found is None:
                return None, at
            calls.append(found)
        at = end
        while at < len(body) and body[at] in " \t\r\n;,":
            at += 1
    return calls, at


def _leading_json_calls(tools: ToolFormat, text: str) -> tuple[list[Call], int]:
    """JSON calls after the format's marker(s), up to the first that does not read:
    objects one by one, into an array left open."""
    decoder = json.JSONDecoder(strict=False)
    calls: list[Call] = []
    at, consumed = 0, 0
    markers = [m for m in (*tools.starts, "<|python_tag|>", "[", ",", ";") if m]
    while True:
        while at < len(text) and text[at] in " \t\r\n":
            at += 1
        marker = next((m for m in markers if text.startswith(m, at)), "")
        if marker:
            at += len(marker)
            continue
        try:
            value, end = decoder.raw_decode(text, at)
        except ValueError:
            break
        items = value if isinstance(value, list) else [value]
        found = [_call_object(item, tools) for item in items]
        if not found or any(f is None for f in found):
            break
        calls += [f for f in found if f is not None]
        at = consumed = end
        for closing in ("]", tools.end):
            rest = text[at:].lstrip()
            if closing and rest.startswith(closing):
                at = consumed = len(text) - len(rest) + len(closing)
    return calls, consumed


def _call_object(item: Any, tools: ToolFormat) -> Call | None:
    if not isinstance(item, dict):
        return None
    if isinstance(item.get("function"), dict):  # {"type": "function", "function": {...}}
        item = {**item["function"], "id": item.get("id", "")}
    if not tools.name_key and len(item) == 1:  # Apertus: {"NAME": {...}}
        ((name, arguments),) = item.items()
        call_id: Any = ""
    else:
        name = next((item[k] for k in (tools.name_key or "name", "name") if k in item), None)
        keys = (tools.arguments_key, "arguments", "parameters")
        arguments = next((item[k] for k in keys if k in item), {})
        call_id = item.get(tools.id_key or "id", "")
    if not isinstance(name, str) or not name:
        return None
    if isinstance(arguments, str):
        arguments = json_object(arguments)
    if not isinstance(arguments, dict):
        return None
    return name, arguments, call_id if isinstance(call_id, str) else str(call_id)


def json_object(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text.strip() or "{}", strict=False)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _mistral_calls(text: str, tools: ToolFormat) -> list[Call] | None:
    calls: list[Call] = []
    for part in text.split("[TOOL_CALLS]"):
        if part.strip():
            found = _json_calls(part, tools)
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
        parsed = json_object(arguments)
        if parsed is None or not name.strip():
            return None
        calls.append((name.strip(), parsed, call_id.strip()))
    return calls or None


def _leading_mistral_args(text: str) -> tuple[list[Call], int]:
    """``[TOOL_CALLS]NAME[ARGS]{...}`` pieces up to the first that does not read;
    each piece's arguments end where their JSON object does."""
    calls: list[Call] = []
    decoder = json.JSONDecoder(strict=False)
    at = consumed = 0
    while True:
        start = text.find("[TOOL_CALLS]", at)
        if start < 0 or text[at:start].strip():
            break
        head, separator, _ = text[start + len("[TOOL_CALLS]") :].partition("[ARGS]")
        name, _, call_id = head.partition("[CALL_ID]")
        if not separator or not name.strip() or "[TOOL_CALLS]" in head:
            break
        args_at = start + len("[TOOL_CALLS]") + len(head) + len("[ARGS]")
        while args_at < len(text) and text[args_at].isspace():
            args_at += 1
        try:
            value, end = decoder.raw_decode(text, args_at)
        except ValueError:
            break
        if not isinstance(value, dict):
            break
        calls.append((name.strip(), value, call_id.strip()))
        at = consumed = end
    return calls, consumed


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
        parsed = json_object(arguments)
        if parsed is None or not name.strip():
            return None
        calls.append((name.strip(), parsed, ""))
    return calls or None


# ------------------------------------------------------------------ raw values


def raw_value(raw: str, declared: str | None) -> Any:
    """A value written as raw text: a string parameter as it is; anything else JSON
    where it parses (numbers, booleans, objects), else the string."""
    if declared == "string":
        return raw
    try:
        return json.loads(raw, strict=False)
    except ValueError:
        return raw


_XML_FUNCTION = re.compile(r"<function=([^>\s]+)>(.*?)</function>", re.DOTALL)
_XML_PARAMETER = re.compile(r"<parameter=([^>\s]+)>(.*?)</parameter>", re.DOTALL)


def _xml_calls(text: str, types: Types) -> list[Call] | None:
    body = _strip_markers(text, ("<tool_call>",), "</tool_call>")
    calls: list[Call] = []
    rest = body
    for match in _XML_FUNCTION.finditer(body):
        name = match.group(1)
        declared = types.get(name, {})
        arguments = {
            key: raw_value(value.removeprefix("\n").removesuffix("\n"), declared.get(key))
            for key, value in _XML_PARAMETER.findall(match.group(2))
        }
        calls.append((name, arguments, ""))
        rest = rest.replace(match.group(0), "", 1)
    return calls if calls and not rest.strip() else None


_ATEM_INVOKE = re.compile(r'\s*<atem:invoke name="([^"]+)">\n?(.*?)</atem:invoke>\s*', re.DOTALL)
_ATEM_PARAMETER = re.compile(
    r'\s*<atem:parameter name="([^"]+)">(.*?)</atem:parameter>\s*', re.DOTALL
)


def atem_calls(text: str, types: Types) -> list[Call] | None:
    """Muse's ``<atem:function_calls><atem:invoke name="NAME"><atem:parameter
    name="K">V</atem:parameter>...</atem:invoke></atem:function_calls>``: values as
    written (the template says spaces are not stripped), JSON where the schema says
    the value is not a string."""
    body = text.strip()
    if not (body.startswith(ATEM_CALLS_OPEN) and body.endswith(ATEM_CALLS_CLOSE)):
        return None
    body = body[len(ATEM_CALLS_OPEN) : -len(ATEM_CALLS_CLOSE)]
    calls: list[Call] = []
    at = 0
    while body[at:].strip():
        invoke = _ATEM_INVOKE.match(body, at)
        if invoke is None:
            return None
        name, inside = invoke.groups()
        declared = types.get(name, {})
        arguments: dict[str, Any] = {}
        inner = 0
        while inside[inner:].strip():
            parameter = _ATEM_PARAMETER.match(inside, inner)
            if parameter is None:
                return None
            key, raw = parameter.groups()
            arguments[key] = raw_value(raw, declared.get(key))
            inner = parameter.end()
        calls.append((name, arguments, ""))
        at = invoke.end()
    return calls or None


# ------------------------------------------------------------------ LFM2, Gemma 4


def _pythonic_calls(body: str) -> list[Call] | None:
    """``[f(a="x", b=2), g()]``, read with Python's own parser (nothing is run)."""
    tree = ast.parse(body.strip(), mode="eval").body
    items = tree.elts if isinstance(tree, ast.List) else [tree]
    calls: list[Call] = []
    for item in items:
        if not isinstance(item, ast.Call) or item.args:
            return None
        name = ast.unparse(item.func)
        arguments: dict[str, Any] = {}
        for keyword in item.keywords:
            if keyword.arg is None:
                return None
            arguments[keyword.arg] = _literal(keyword.value)
        calls.append((name, arguments, ""))
    return calls or None


def _literal(node: ast.expr) -> Any:
    """A Python literal, or JSON's ``true``/``false``/``null`` inside one."""
    try:
        return ast.literal_eval(node)
    except ValueError:
        return json.loads(ast.unparse(node).replace("'", '"'))


_GEMMA_QUOTE = '<|"|>'
_GEMMA_CALL = re.compile(
    r"\s*<\|tool_call>\s*call:([^\s{]+)\s*(\{.*?\})\s*(?:<tool_call\|>|$)", re.DOTALL
)


def _gemma4_calls(text: str) -> list[Call] | None:
    """``<|tool_call>call:NAME{key:<|"|>text<|"|>,n:3}<tool_call|>``, repeated."""
    calls: list[Call] = []
    at = 0
    while at < len(text.rstrip()):
        match = _GEMMA_CALL.match(text, at)
        if match is None:
            return None
        arguments = json.loads(_gemma4_json(match.group(2)), strict=False)
        if not isinstance(arguments, dict):
            return None
        calls.append((match.group(1), arguments, ""))
        at = match.end()
    return calls or None


def _gemma4_json(text: str) -> str:
    """Gemma 4's argument object as JSON: its ``<|"|>`` strings quoted, its bare keys
    quoted, Python's ``None``/``True``/``False`` as JSON's."""
    out: list[str] = []
    at = 0
    while at < len(text):
        if text.startswith(_GEMMA_QUOTE, at):
            end = text.find(_GEMMA_QUOTE, at + len(_GEMMA_QUOTE))
            if end < 0:
                raise ValueError("an unclosed string")
            out.append(json.dumps(text[at + len(_GEMMA_QUOTE) : end]))
            at = end + len(_GEMMA_QUOTE)
            continue
        word = re.match(r"[A-Za-z_][\w.\-]*", text[at:])
        if word:
            token = word.group(0)
            after = text[at + len(token) :].lstrip()
            if after.startswith(":"):
                out.append(json.dumps(token))
            else:
                out.append({"None": "null", "True": "true", "False": "false"}.get(token, token))
            at += len(token)
            continue
        out.append(text[at])
        at += 1
    return "".join(out)


# ------------------------------------------------------------------ tagged calls


def _pattern(literal: str, *, before: str = r"\s*", after: str = r"\s*") -> str:
    """A regex for a learnt literal: its blanks loose, its slots what they stand for."""
    core = literal.strip()
    if not core:
        return before
    out: list[str] = []
    for piece in re.split(rf"(\s+|{ID_SLOT}|{INDEX_SLOT}|{KEY_SLOT})", core):
        if piece == ID_SLOT:
            out.append(r"[^\s<>\[\]|]*")
        elif piece == INDEX_SLOT:
            out.append(r"\d+")
        elif piece == KEY_SLOT:
            out.append(r"(?P=key)")
        elif piece.isspace():
            out.append(r"\s*")
        elif piece:
            out.append(re.escape(piece))
    return before + "".join(out) + after


@lru_cache(maxsize=64)
def _call_regex(syntax: TaggedSyntax) -> re.Pattern[str]:
    close = _pattern(syntax.call_close)
    # Nothing between the name and the arguments (GLM's <tool_call>NAME<arg_key>):
    # the name runs as far as it can.
    lazy = "?" if syntax.name_close.strip() else ""
    name = rf"(?P<name>[^\s<>{{}}\[\]\"|]+{lazy})"
    if syntax.call_close.strip():
        arguments = rf"(?P<args>.*?)(?:{close}|\s*\Z)"
    else:
        arguments = r"(?P<args>.*?)\s*\Z"
    return re.compile(
        _pattern(syntax.call_open) + name + _pattern(syntax.name_close) + arguments + r"\Z",
        re.DOTALL,
    )


@lru_cache(maxsize=64)
def _argument_regex(syntax: TaggedSyntax) -> re.Pattern[str]:
    closes = sorted({syntax.key_close, *(c for _, c in syntax.typed_key_close)}, key=len)
    after = r"\n?" if syntax.key_close.endswith("\n") else ""
    before = r"\n?" if syntax.value_close.startswith("\n") else ""
    close_group = "|".join(_pattern(c, after=after) for c in reversed(closes))
    return re.compile(
        _pattern(syntax.key_open)
        + r"(?P<key>[^\s<>\"]+?)"
        + f"(?P<close>{close_group})"
        + r"(?P<value>.*?)"
        + _pattern(syntax.value_close, before=before),
        re.DOTALL,
    )


@lru_cache(maxsize=64)
def _call_head_regex(syntax: TaggedSyntax) -> re.Pattern[str]:
    """A tagged call up to its arguments: the opening, the name, the name's close."""
    lazy = "?" if syntax.name_close.strip() else ""
    name = rf"[^\s<>{{}}\[\]\"|]+{lazy}"
    return re.compile(_pattern(syntax.call_open) + name + _pattern(syntax.name_close), re.DOTALL)


def _json_call_end(syntax: TaggedSyntax, text: str) -> int | None:
    """Where the call at the start of ``text`` ends, when its arguments are a complete
    JSON object (None: not known)."""
    head = _call_head_regex(syntax).match(text)
    if head is None or not text.startswith("{", head.end()):
        return None
    try:
        _, end = json.JSONDecoder(strict=False).raw_decode(text, head.end())
    except ValueError:
        return None
    return end


def tagged_call(syntax: TaggedSyntax, text: str, types: Types | None = None) -> Call | None:
    """One call (``call_open`` to ``call_close``) of a tagged syntax."""
    match = _call_regex(syntax).match(text)
    if match is None:
        return None
    name, raw = match.group("name"), match.group("args")
    if not syntax.tagged_arguments:
        arguments = json_object(raw)
        return None if arguments is None else (name, arguments, "")
    declared = (types or {}).get(name, {})
    found: dict[str, Any] = {}
    at = 0
    regex = _argument_regex(syntax)
    while raw[at:].strip():
        argument = regex.match(raw, at)
        if argument is None:
            return None
        key, value = argument.group("key"), argument.group("value")
        is_string = argument.group("close").strip() == syntax.key_close.strip()
        typed = bool(syntax.typed_key_close)
        nested = _nested_value(syntax, value) if KEY_SLOT in syntax.value_close else None
        if nested is not None:
            found[key] = nested
        else:
            found[key] = raw_value(value, "string" if typed and is_string else declared.get(key))
        at = argument.end()
    return name, found, ""


def _nested_value(syntax: TaggedSyntax, raw: str) -> Any:
    """An object or array written as blocks inside a value (MiniMax-M3: ``<item>``
    blocks for an array, a block per key for an object), or None when ``raw`` is a
    value of its own."""
    regex = _argument_regex(syntax)
    pairs: list[tuple[str, Any]] = []
    at = 0
    while raw[at:].strip():
        block = regex.match(raw, at)
        if block is None:
            return None
        inner = block.group("value")
        nested = _nested_value(syntax, inner)
        pairs.append((block.group("key"), raw_value(inner, None) if nested is None else nested))
        at = block.end()
    if not pairs:
        return None
    if all(key == "item" for key, _ in pairs):
        return [value for _, value in pairs]
    return dict(pairs)


def _tagged_section(syntax: TaggedSyntax, text: str, types: Types) -> list[Call] | None:
    """A whole section of tagged calls, read with the streaming scanner."""
    scanner = TaggedScanner(syntax)
    calls: list[Call] = []
    opened = not syntax.section_open.strip()
    while text.strip():
        step, size, found = scanner.scan(text, final=True, opened=opened, types=types)
        if step == "call" and found is not None:
            calls.append(found)
        elif step == "open":
            opened = True
        elif step in ("bad", "wait", "end"):
            return None
        elif step == "close":
            opened = False
        text = text[size:]
    return calls or None


class TaggedScanner:
    """Steps through the calls of a tagged syntax as the text arrives: what the text
    starts with (the section's opening, a complete call, the section's end...), how
    long it is, and the call read."""

    def __init__(self, syntax: TaggedSyntax) -> None:
        self.syntax = syntax
        self.section_open = syntax.section_open.strip()
        self.section_close = syntax.section_close.strip()
        self.call_lead = lead_literal(syntax.call_open)
        self.call_close = syntax.call_close.strip()
        self.separator = syntax.separator.strip()

    def scan(
        self, text: str, *, final: bool, opened: bool, types: Types | None = None
    ) -> tuple[str, int, Call | None]:
        """("wait"|"open"|"call"|"skip"|"close"|"end"|"bad", characters, call)."""
        blank = len(text) - len(text.lstrip())
        rest = text[blank:]
        if not rest:
            return ("end", blank, None) if final else ("wait", 0, None)
        if self.section_open and not opened:
            if rest.startswith(self.section_open):
                return "open", blank + len(self.section_open), None
            return self._undecided(rest, final, self.section_open)
        if self.section_close and rest.startswith(self.section_close):
            return "close", blank + len(self.section_close), None
        if self.separator and rest.startswith(self.separator):
            return "skip", blank + len(self.separator), None
        if not rest.startswith(self.call_lead):
            for marker in (self.call_lead, self.section_close, self.separator):
                if marker and marker.startswith(rest) and not final:
                    return "wait", 0, None
            if final and self._close_cut_short(rest):
                return "close", len(text), None
            return ("bad" if self.section_open else "end"), 0, None
        end = self._call_end(rest, final)
        if end < 0:
            return "wait", 0, None
        found = tagged_call(self.syntax, rest[:end], types)
        return ("call", blank + end, found) if found else ("bad", 0, None)

    def _close_cut_short(self, rest: str) -> bool:
        """Whether the answer ends with the start of the section's end, from a whole tag
        on (Kimi K3's ``<|sep|><|close|>tools``, its last ``<|sep|>`` not written: the
        model stopped there, or the turn's end shares it)."""
        head = rest.rstrip()
        return bool(self.section_close.startswith(head) and TAG.match(head))

    def _undecided(self, rest: str, final: bool, marker: str) -> tuple[str, int, Call | None]:
        if marker.startswith(rest) and not final:
            return "wait", 0, None
        return "bad", 0, None

    def _call_end(self, rest: str, final: bool) -> int:
        """Where the call at the start of ``rest`` ends (-1: not known yet)."""
        if self.call_close:
            at = rest.find(self.call_close, len(self.call_lead))
            if at >= 0:
                return at + len(self.call_close)
            return len(rest) if final else -1
        # No closing marker: JSON arguments end with their object (Functionary v3.2's
        # ``>>>NAME\n{...}``, then text or the end of turn); other calls run to the next
        # call, the section's end or the answer's end.
        if not self.syntax.tagged_arguments:
            end = _json_call_end(self.syntax, rest)
            if end is not None:
                return end
        ends = [
            rest.find(marker, len(self.call_lead))
            for marker in (self.call_lead, self.section_close)
            if marker
        ]
        found = [at for at in ends if at >= 0]
        if found:
            return min(found)
        return len(rest) if final else -1
