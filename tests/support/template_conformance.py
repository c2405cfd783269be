"""Real chat templates (tests/support/templates/) against localserve's sandbox, detection
and answer parsers: the cases, the renders, the round trip and how a refusal is read.

Shared by tests/unit/test_template_roundtrip.py (in process, no model) and
benchmarks/templates.py (which adds llama-server and a daemon beside it).

The four renders each template gets, with the messages the daemon hands a template
(schemas/tools.py ``history_message``: call arguments as objects, reasoning under both
``reasoning_content`` and ``thinking``):

- ``plain``: one user turn, generation prompt;
- ``tools``: the same with one tool (``get_weather``) defined;
- ``call``: the user turn, an assistant turn calling the tool, the tool's result,
  generation prompt;
- ``reasoning``: the user turn and an assistant turn holding reasoning and an answer,
  as the last turn (no generation prompt): templates that keep reasoning keep it there.

The round trip: the text the model would have written for an assistant turn is the
part of the render that the turn adds (``turn_text``: after the generation prompt, up
to the end of turn it shares with the same conversation answered by plain text; where
the prompt is not a prefix of the history, the diff ``formats._answer_text`` takes).
That text goes through the parser the runner would build for the detected format
(engine/prepare.py), streamed one character at a time and whole, and the same call
(name, arguments) or reasoning and answer must come back. A reasoning turn is rendered
as a request asking to think renders it (``THINK_HIGH``); when the prompt already
opened the thinking block, the model's text starts inside it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localserve.errors import TemplateError
from localserve.runtime.chat.formats import ChatFormat, detect
from localserve.runtime.chat.parse import AnswerParser, HarmonyParser, MuseParser, StreamParser
from localserve.runtime.protocol import Event, TextEvent, ThinkingEvent, ToolCallEvent
from localserve.runtime.templates import ChatTemplate

TEMPLATES = Path(__file__).parent / "templates"
# Special-token texts handed to every template (a real model has its own; these are
# distinctive, and the ones Gemma 3, the benchmark's model, uses).
BOS, EOS = "<bos>", "<eos>"

TOOL_NAME = "get_weather"
TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": TOOL_NAME,
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "enum": ["Paris", "London"]},
                "days": {"type": "integer", "description": "How many days ahead."},
            },
            "required": ["city"],
        },
    },
}
ARGUMENTS: dict[str, Any] = {"city": "Paris", "days": 3}
USER = {"role": "user", "content": "What is the weather in Paris?"}
CALL_TURN: dict[str, Any] = {
    "role": "assistant",
    "content": "",
    "tool_calls": [
        {
            "id": "call00001",
            "type": "function",
            "function": {"name": TOOL_NAME, "arguments": dict(ARGUMENTS)},
        }
    ],
}
RESULT = {
    "role": "tool",
    "tool_call_id": "call00001",
    "name": TOOL_NAME,
    "content": '{"temperature": 21, "sky": "clear"}',
}
REASONING = "The user asks about Paris; I should look it up."
ANSWER = "It is 21 degrees and clear in Paris."
REASONING_TURN: dict[str, Any] = {
    "role": "assistant",
    "content": ANSWER,
    "reasoning_content": REASONING,
    "thinking": REASONING,
}
_PLAIN_ANSWER = {"role": "assistant", "content": "answeranswer"}
# The template variables of a request that asks to think (Ollama ``think: "high"``,
# engine/prepare.py ``_template_kwargs``): templates read one name or another.
THINK_HIGH: dict[str, Any] = {"enable_thinking": True, "thinking": True, "reasoning_effort": "high"}

CASES = ("plain", "tools", "call", "reasoning")


def template_names() -> list[str]:
    return sorted(path.name for path in TEMPLATES.glob("*.jinja"))


def source(name: str) -> str:
    return (TEMPLATES / name).read_text(encoding="utf-8")


def load(name: str) -> ChatTemplate:
    """The template compiled in the sandbox (TemplateError if it does not compile)."""
    return ChatTemplate(source(name), bos_token=BOS, eos_token=EOS)


def case_messages(case: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The messages of a case and the render's keywords."""
    if case == "plain":
        return [USER], {"add_generation_prompt": True}
    if case == "tools":
        return [USER], {"add_generation_prompt": True, "tools": [TOOL]}
    if case == "call":
        return [USER, CALL_TURN, RESULT], {"add_generation_prompt": True, "tools": [TOOL]}
    if case == "reasoning":
        return [USER, REASONING_TURN], {"add_generation_prompt": False}
    raise ValueError(case)


@dataclass
class Render:
    """One case's render in the sandbox: the text, or the refusal and its reading."""

    case: str
    text: str = ""
    error: str = ""
    shows: dict[str, bool] = field(default_factory=dict)  # what of the case is in the text

    @property
    def ok(self) -> bool:
        return not self.error

    @property
    def refusal(self) -> Refusal | None:
        return read_refusal(self.error) if self.error else None


def render_case(template: ChatTemplate, case: str) -> Render:
    messages, kwargs = case_messages(case)
    try:
        text = template.render(messages, **kwargs)
    except TemplateError as exc:
        return Render(case, error=str(exc))
    shows: dict[str, bool] = {}
    if case == "tools":
        shows["tool"] = TOOL_NAME in text
    elif case == "call":
        # The tool's name is in its definition too: the call adds one more.
        try:
            defined = template.render([USER], add_generation_prompt=True, tools=[TOOL])
        except TemplateError:
            defined = ""
        shows["call"] = text.count(TOOL_NAME) > defined.count(TOOL_NAME)
        shows["result"] = "temperature" in text
    elif case == "reasoning":
        shows["reasoning"] = REASONING in text
    return Render(case, text, shows=shows)


# -------------------------------------------------------------------- refusals


@dataclass(frozen=True)
class Refusal:
    """Why a render failed: ``template`` (its own ``raise_exception``), ``sandbox`` (a
    Jinja or Python feature our sandbox lacks or refuses: a bug of ours), ``input`` (the
    template wants the conversation in another shape than localserve hands it), or
    ``other``; ``what`` says it in a few words."""

    kind: str
    what: str


_MUTATORS = ("append", "extend", "insert", "pop", "remove", "clear", "update", "setdefault")


def read_refusal(error: str) -> Refusal:
    """The kind of a sandbox error message (see :class:`Refusal`)."""
    if error.startswith("chat template rejected the conversation:"):
        return Refusal("template", "raise_exception: " + error.split(":", 1)[1].strip())
    unsafe = re.search(r"access to attribute '(\w+)' of '(\w+)' object is unsafe", error)
    if unsafe:
        method, owner = unsafe.groups()
        if method in _MUTATORS:
            return Refusal("sandbox", f"{owner}.{method}() (the sandbox's objects are immutable)")
        return Refusal("sandbox", f"{owner}.{method} refused as unsafe")
    if "generator is not JSON serializable" in error:
        return Refusal("sandbox", "tojson of a lazy sequence (map/select/... result)")
    for pattern, what in (
        (r"[Nn]o filter named '([^']+)'", "filter {} missing"),
        (r"[Nn]o test named '([^']+)'", "test {} missing"),
        (r"Encountered unknown tag '([^']+)'", "tag {} unknown"),
    ):
        found = re.search(pattern, error)
        if found:
            return Refusal("sandbox", what.format(found.group(1)))
    if "syntax error" in error:
        return Refusal("sandbox", "syntax: " + error.split(":", 1)[-1].strip())
    if "took longer than" in error or "exceeded a limit" in error:
        return Refusal("sandbox", "limit: " + error.removeprefix("chat template "))
    field_missing = re.search(r"'dict object' has no attribute '(\w+)'", error)
    if field_missing:
        return Refusal("input", f"reads field {field_missing.group(1)!r}: it wants another shape")
    method_missing = re.search(r"'(\w+) object' has no attribute '(\w+)'", error)
    if method_missing:
        owner, name = method_missing.groups()
        return Refusal("sandbox", f"{owner}.{name} missing")
    undefined = re.search(r"'(\w+)' is undefined", error)
    if undefined:
        return Refusal("input", f"reads variable {undefined.group(1)!r}, which is not passed")
    if "'NoneType' object is not iterable" in error:
        return Refusal("input", "iterates tools (or another list) that is None")
    if 'can only concatenate str (not "dict")' in error:
        return Refusal("input", "wants call arguments as a JSON string, not an object")
    return Refusal("other", error.removeprefix("chat template "))


# -------------------------------------------------------------------- round trip


def turn_text(
    template: ChatTemplate,
    turn: dict[str, Any],
    tools: list[dict[str, Any]] | None = None,
    **kwargs: Any,
) -> str:
    """The text the model would have written for ``turn``: the render of [user, turn]
    from where the generation prompt ([user] and the assistant's header) ends, up to
    the end of turn it shares with [user, a plain answer]. A template that renders the
    history differently from the prompt (the prompt is not a prefix) falls back to the
    diff formats._answer_text takes: less the common prefix with the plain answer too.
    Both cuts are moved off any tag they would split (``<|START_T`` is shared by
    ``<|START_THINKING|>`` and ``<|START_TEXT|>``), as llama.cpp aligns its diffs to
    markers."""
    with_turn = template.render([USER, turn], add_generation_prompt=False, tools=tools, **kwargs)
    plain = template.render(
        [USER, _PLAIN_ANSWER], add_generation_prompt=False, tools=tools, **kwargs
    )
    prompt = template.render([USER], add_generation_prompt=True, tools=tools, **kwargs)
    if with_turn.startswith(prompt):
        start = len(prompt)
    else:
        start = _tag_start(with_turn, _common_prefix(with_turn, plain))
    end = _tag_end(with_turn, len(with_turn) - _common_prefix(with_turn[::-1], plain[::-1]))
    return with_turn[start : max(start, end)]


# A tag (``<|tool_call:begin|>``, ``[TOOL_CALLS]``) is at most this long; a lone ``<``
# further away is text.
_TAG_CHARS = 40


def _tag_start(text: str, at: int) -> int:
    """``at``, moved back to the start of a tag it would cut in two."""
    for opening, closing in (("<", ">"), ("[", "]")):
        last_open = text.rfind(opening, max(0, at - _TAG_CHARS), at)
        if last_open >= 0 and last_open > text.rfind(closing, 0, at):
            at = min(at, last_open)
    return at


def _tag_end(text: str, at: int) -> int:
    """``at``, moved forward past the end of a tag it would cut in two."""
    for opening, closing in (("<", ">"), ("[", "]")):
        next_close = text.find(closing, at, at + _TAG_CHARS)
        next_open = text.find(opening, at)
        last_open = text.rfind(opening, max(0, at - _TAG_CHARS), at)
        inside = last_open >= 0 and last_open > text.rfind(closing, 0, at)
        if inside and next_close >= 0 and (next_open < 0 or next_close < next_open):
            at = max(at, next_close + 1)
    return at


def prompt_opens_thinking(
    template: ChatTemplate,
    chat: ChatFormat,
    tools: list[dict[str, Any]] | None = None,
    **kwargs: Any,
) -> bool:
    """Whether the generation prompt ends inside a thinking block, as engine/prepare.py
    decides it (the model's text then starts with the reasoning itself)."""
    if chat.thinking is None:
        return False
    prompt = template.render([USER], add_generation_prompt=True, tools=tools, **kwargs)
    return prompt.rstrip().endswith(chat.thinking.open)


def parser_for(chat: ChatFormat, *, in_thinking: bool) -> StreamParser:
    """The parser engine/prepare.py builds for a request with the tool."""
    if chat.harmony:
        return HarmonyParser("roundtrip", tool_names=[TOOL_NAME], show_thinking=True)
    if chat.muse:
        return MuseParser("roundtrip", tool_names=[TOOL_NAME], show_thinking=True)
    return AnswerParser(
        "roundtrip",
        tools=chat.tools,
        tool_names=[TOOL_NAME],
        thinking=chat.thinking,
        in_thinking=in_thinking,
        show_thinking=True,
        framing=(chat.answer_open, chat.answer_end),
    )


@dataclass
class Parsed:
    """What a parser made of an answer: calls, reasoning, text."""

    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    thinking: str = ""
    text: str = ""


def parse(chat: ChatFormat, text: str, *, in_thinking: bool, piece: int = 0) -> Parsed:
    """``text`` through a fresh parser, whole (``piece`` 0) or ``piece`` characters at a time."""
    parser = parser_for(chat, in_thinking=in_thinking)
    events: list[Event] = []
    pieces = [text[at : at + piece] for at in range(0, len(text), piece)] if piece else [text]
    for chunk in pieces:
        events.extend(parser.feed(chunk))
    events.extend(parser.flush())
    found = Parsed()
    for event in events:
        if isinstance(event, ToolCallEvent):
            found.calls.append((event.name, event.arguments))
        elif isinstance(event, ThinkingEvent):
            found.thinking += event.text
        elif isinstance(event, TextEvent):
            found.text += event.text
    return found


@dataclass
class RoundTrip:
    """One round trip: the model's text, what came back, and what is wrong (empty: ok)."""

    text: str
    parsed: Parsed
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def call_round_trip(template: ChatTemplate, chat: ChatFormat) -> RoundTrip:
    """The call turn's text through the detected parser: the call must come back, and no
    marker may leak out as answer text."""
    opened = prompt_opens_thinking(template, chat, [TOOL])
    text = _after_prompt(turn_text(template, CALL_TURN, [TOOL]), chat, opened)
    problems: list[str] = []
    if chat.tools is None and not chat.harmony:
        problems.append("no tool format detected")
    results = [parse(chat, text, in_thinking=opened, piece=p) for p in (0, 1)]
    whole = results[0]
    want = [(TOOL_NAME, ARGUMENTS)]
    if whole.calls != want:
        problems.append(f"parsed calls {whole.calls!r}, wanted {want!r}")
    elif whole.text.strip():
        problems.append(f"text besides the call: {whole.text.strip()[:80]!r}")
    if results[1].calls != whole.calls or results[1].text != whole.text:
        problems.append("streamed one character at a time, the result differs")
    return RoundTrip(text, whole, problems)


def reasoning_round_trip(template: ChatTemplate, chat: ChatFormat) -> RoundTrip:
    """The reasoning turn's text (rendered as for Ollama's ``think: "high"``) through the
    detected parser: the same reasoning and the same answer must come back.

    A template that drops reasoning from the history (DeepSeek R1 keeps only the text
    after ``</think>``) but opens the block in its prompt is read from the prompt: the
    model writes the reasoning, the detected close tag, then the answer. One that drops
    it and does not open the block: the model writes the detected open tag too."""
    opened = prompt_opens_thinking(template, chat, **THINK_HIGH)
    text = _after_prompt(turn_text(template, REASONING_TURN, **THINK_HIGH), chat, opened)
    problems: list[str] = []
    if not chat.thinks:
        problems.append("no thinking detected")
    elif REASONING not in text and chat.thinking is not None and opened:
        text = f"{REASONING}{chat.thinking.close}\n\n{ANSWER}"  # from the prompt
    elif REASONING not in text and chat.thinking is not None:
        # Dropped from the history and not opened by the prompt: the model writes the
        # detected tags itself, then the answer as the template writes it.
        text = f"{chat.thinking.open}{REASONING}{chat.thinking.close}{text}"
    results = [parse(chat, text, in_thinking=opened, piece=p) for p in (0, 1)]
    whole = results[0]
    if whole.thinking.strip() != REASONING:
        problems.append(f"reasoning came back as {whole.thinking.strip()[:80]!r}")
    if whole.text.strip() != ANSWER:
        problems.append(f"answer came back as {whole.text.strip()[:80]!r}")
    if results[1].thinking != whole.thinking or results[1].text != whole.text:
        problems.append("streamed one character at a time, the result differs")
    return RoundTrip(text, whole, problems)


def _after_prompt(text: str, chat: ChatFormat, opened: bool) -> str:
    """What the model writes of ``text`` when the prompt already opened the thinking
    block: everything after the open tag, if the turn's render repeats it."""
    if opened and chat.thinking is not None:
        stripped = text.lstrip()
        if stripped.startswith(chat.thinking.open):
            return stripped[len(chat.thinking.open) :]
    return text


# -------------------------------------------------------------------- all of it


@dataclass
class Report:
    """A template in the sandbox: compile error, the four renders, detection, round trips."""

    name: str
    compile_error: str = ""
    renders: dict[str, Render] = field(default_factory=dict)
    chat: ChatFormat | None = None
    calls: RoundTrip | None = None  # None: the template does not read tools
    reasoning: RoundTrip | None = None  # None: no reasoning shown nor detected
    errors: list[str] = field(default_factory=list)  # a step that raised unexpectedly

    @property
    def reads_tools(self) -> bool:
        render = self.renders.get("tools")
        return bool(render and render.shows.get("tool"))

    @property
    def shows_reasoning(self) -> bool:
        render = self.renders.get("reasoning")
        return bool(render and render.shows.get("reasoning"))


def report(name: str) -> Report:
    """Everything the sandbox side knows about one template. Never raises: a step that
    fails unexpectedly is recorded in ``errors``."""
    found = Report(name)
    try:
        template = load(name)
    except TemplateError as exc:
        found.compile_error = str(exc)
        return found
    for case in CASES:
        found.renders[case] = render_case(template, case)
    try:
        found.chat = detect(template)
    except Exception as exc:
        found.errors.append(f"detect: {type(exc).__name__}: {exc}")
        return found
    if found.reads_tools:
        found.calls = _guarded(found, "call round trip", call_round_trip, template, found.chat)
    if found.shows_reasoning or found.chat.thinks:
        found.reasoning = _guarded(
            found, "reasoning round trip", reasoning_round_trip, template, found.chat
        )
    return found


def _guarded(found: Report, step: str, func: Any, *args: Any) -> RoundTrip | None:
    try:
        result: RoundTrip = func(*args)
    except TemplateError as exc:
        return RoundTrip("", Parsed(), [f"render failed: {exc}"])
    except Exception as exc:
        found.errors.append(f"{step}: {type(exc).__name__}: {exc}")
        return RoundTrip("", Parsed(), [f"{type(exc).__name__}: {exc}"])
    return result


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
