"""Tool-call and thinking detection and parsing (runtime/chat/), without a model.

Each family's template (tests/support/chat_templates.py) is detected by rendering
it; each family's answer text is parsed whole and streamed in pieces of every size,
and must give the same events; malformed calls come back as text; random text
around and inside the markers never raises (hypothesis).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from localserve.runtime.chat.formats import PLAIN, ChatFormat, ThinkingTags, ToolFormat, detect
from localserve.runtime.chat.parse import AnswerParser, HarmonyParser
from localserve.runtime.protocol import Event, TextEvent, ThinkingEvent, ToolCallEvent
from localserve.runtime.templates import ChatTemplate
from tests.support import chat_templates as templates

WEATHER = {"city": "Paris", "days": 3}


def fmt(name: str) -> ChatFormat:
    return detect(ChatTemplate(getattr(templates, name)))


@pytest.mark.parametrize(
    ("name", "kind", "capabilities"),
    [
        ("HERMES", "hermes", ("completion", "tools")),
        ("QWEN3", "hermes", ("completion", "tools", "thinking")),
        ("LLAMA3", "llama3", ("completion", "tools")),
        ("MISTRAL", "mistral", ("completion", "tools")),
        ("MISTRAL_ARGS", "mistral_args", ("completion", "tools")),
        ("QWEN3_CODER", "qwen3_coder", ("completion", "tools")),
        ("HARMONY", "harmony", ("completion", "tools", "thinking")),
        ("DEEPSEEK", "deepseek", ("completion", "tools")),
        ("GENERIC", "generic", ("completion", "tools")),
        ("R1", None, ("completion", "thinking")),
        ("CHATML_PLAIN", None, ("completion",)),
    ],
)
def test_detection_by_rendering(name: str, kind: str | None, capabilities: tuple[str, ...]) -> None:
    found = fmt(name)
    assert (found.tools.kind if found.tools else None) == kind
    assert found.capabilities == capabilities


def test_detection_details() -> None:
    assert fmt("QWEN3").thinking == ThinkingTags("<think>", "</think>")
    assert fmt("QWEN3").thinking_switch  # enable_thinking=false changes the prompt
    assert fmt("R1").thinking == ThinkingTags("<think>", "</think>")
    assert fmt("LLAMA3").tools == ToolFormat("llama3", arguments_key="parameters")
    generic = fmt("GENERIC").tools
    assert generic is not None and generic.starts == ("<|tool_call|>",)
    assert detect(ChatTemplate(None)) == PLAIN  # the fallback template
    assert detect(ChatTemplate("{{ raise_exception('no') }}")) == PLAIN


# ------------------------------------------------------------------ parsing


def parse(parser: Any, text: str, piece: int = 0) -> list[Event]:
    """Feed ``text`` whole (piece 0) or in pieces of ``piece`` characters."""
    events: list[Event] = []
    if piece:
        for at in range(0, len(text), piece):
            events.extend(parser.feed(text[at : at + piece]))
    else:
        events.extend(parser.feed(text))
    events.extend(parser.flush())
    return events


def merged(events: list[Event]) -> list[tuple[str, Any]]:
    """Events with adjacent text (and thinking) pieces joined: what a client assembles."""
    out: list[tuple[str, Any]] = []
    for event in events:
        if isinstance(event, TextEvent | ThinkingEvent):
            if out and out[-1][0] == event.type:
                out[-1] = (event.type, out[-1][1] + event.text)
            else:
                out.append((event.type, event.text))
        elif isinstance(event, ToolCallEvent):
            out.append(("call", (event.index, event.name, event.arguments)))
    return out


def parser_for(
    name: str, *, names: tuple[str, ...] = ("get_weather", "get_time"), **kw: Any
) -> Any:
    found = fmt(name)
    if found.harmony:
        return HarmonyParser("j", tool_names=names, **kw)
    return AnswerParser("j", tools=found.tools, tool_names=names, thinking=found.thinking, **kw)


CALLS = {
    "HERMES": 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}\n</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>',
    "QWEN3": '<think>\nThe user wants weather.\n</think>\n\nLet me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}\n</tool_call><tool_call>{"name": "get_time", "arguments": "{}"}</tool_call>',
    "LLAMA3": '{"name": "get_weather", "parameters": {"city": "Paris", "days": 3}}; {"name": "get_time", "parameters": {}}',
    "MISTRAL": 'Let me check.[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}, "id": "a1B2c3D4e"}, {"name": "get_time", "arguments": {}}]',
    "MISTRAL_ARGS": 'Let me check.[TOOL_CALLS]get_weather[ARGS]{"city": "Paris", "days": 3}[TOOL_CALLS]get_time[CALL_ID]x1[ARGS]{}',
    "QWEN3_CODER": "Let me check.\n<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>\n<tool_call>\n<function=get_time>\n</function>\n</tool_call>",
    "DEEPSEEK": 'Let me check.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{"city": "Paris", "days": 3}<｜tool▁call▁end｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_time\n```json\n{}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>',
    "GENERIC": 'Let me check.<|tool_call|>[{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}, {"name": "get_time", "arguments": {}}]',
    "HARMONY": '<|channel|>analysis<|message|>The user wants weather.<|end|><|start|>assistant<|channel|>commentary<|message|>Let me check.<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city": "Paris", "days": 3}<|end|><|start|>assistant<|channel|>commentary to=functions.get_time <|constrain|>json<|message|>{}',
}
EXPECTED_CALLS = [("call", (0, "get_weather", WEATHER)), ("call", (1, "get_time", {}))]


@pytest.mark.parametrize("name", list(CALLS))
@pytest.mark.parametrize("piece", [0, 1, 3, 7])
def test_each_family_parses_parallel_calls_streamed_or_whole(name: str, piece: int) -> None:
    events = merged(parse(parser_for(name), CALLS[name], piece))
    thinking = [("thinking", "The user wants weather.")] if name == "HARMONY" else []
    if name == "QWEN3":
        thinking = [("thinking", "\nThe user wants weather.\n")]
    text = [] if name == "LLAMA3" else [("text", "Let me check.")]
    got = [(kind, value.strip() if isinstance(value, str) else value) for kind, value in events]
    want = [(k, v.strip() if isinstance(v, str) else v) for k, v in thinking + text]
    assert got == want + EXPECTED_CALLS


@pytest.mark.parametrize("name", list(CALLS))
@pytest.mark.parametrize("piece", [0, 1, 7])
def test_a_call_cut_short_keeps_the_calls_before_it(name: str, piece: int) -> None:
    """``num_predict`` ends the answer inside the second call: the first, complete,
    still comes back as a call (formats parsed at the section's end included:
    DeepSeek's section, LFM2's list)."""
    text = CALLS[name]
    cut = text[: text.rfind("get_time") + 4]
    calls = [e for e in merged(parse(parser_for(name), cut, piece)) if e[0] == "call"]
    assert calls == EXPECTED_CALLS[:1]


def test_a_python_style_list_cut_short_keeps_its_complete_calls() -> None:
    lfm2 = ToolFormat("pythonic", starts=("<|tool_call_start|>",), end="<|tool_call_end|>")
    text = 'Sure.<|tool_call_start|>[get_weather(city="Paris", days=3), get_time(zone="Eu'
    for piece in (0, 1, 7):
        parser = AnswerParser("j", tools=lfm2, tool_names=("get_weather", "get_time"))
        events = merged(parse(parser, text, piece))
        assert events == [
            ("text", "Sure."),
            ("call", (0, "get_weather", WEATHER)),
            ("text", ', get_time(zone="Eu'),
        ]


def test_an_answer_opening_from_one_of_its_later_tags_is_dropped() -> None:
    """Solar Open writes ``<|begin|>assistant<|content|>`` before an answer, and its
    prompt ends ``<|begin|>assistant``: the answer may open with the rest alone."""
    solar = ThinkingTags("<|think|>", "<|end|>")
    framing = ("<|begin|>assistant<|content|>", "<|end|>")
    for text in (
        "<|think|>Look it up.<|end|><|content|>Sunny.",
        "<|think|>Look it up.<|end|><|begin|>assistant<|content|>Sunny.",
    ):
        for piece in (0, 1, 5):
            parser = AnswerParser("j", thinking=solar, framing=framing)
            assert merged(parse(parser, text, piece)) == [
                ("thinking", "Look it up."),
                ("text", "Sunny."),
            ]
    plain = AnswerParser("j", thinking=solar, framing=framing)
    assert merged(parse(plain, "<|content|>Sunny.")) == [("text", "Sunny.")]


def test_a_call_streams_as_soon_as_it_is_closed() -> None:
    parser = parser_for("HERMES")
    first = '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>'
    events = parser.feed("Sure. " + first + "\n<tool_call>{")
    assert merged(events) == [("text", "Sure. "), ("call", (0, "get_time", {}))]
    # The text of a started marker is held back, never shown half.
    assert merged(AnswerParser("j", tools=fmt("HERMES").tools).feed("ok <tool_c")) == [
        ("text", "ok ")
    ]


def test_thinking_forced_open_and_hidden() -> None:
    r1 = fmt("R1").thinking
    events = parse(AnswerParser("j", thinking=r1, in_thinking=True), "Hmm, 2+2.\n</think>\n\n4", 2)
    assert merged(events) == [("thinking", "Hmm, 2+2.\n"), ("text", "4")]
    hidden = parse(
        AnswerParser("j", thinking=r1, in_thinking=True, show_thinking=False), "a</think>b"
    )
    assert merged(hidden) == [("text", "b")]
    # Not thinking: a model that never opens the tag answers in text.
    assert merged(parse(AnswerParser("j", thinking=r1), "<thin>x")) == [("text", "<thin>x")]
    # A call opened inside the thought ends it (Qwen 3 does this).
    qwen = parser_for("QWEN3")
    events = parse(qwen, '<think>plan<tool_call>{"name": "get_time", "arguments": {}}</tool_call>')
    assert merged(events) == [("thinking", "plan"), ("call", (0, "get_time", {}))]


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("HERMES", '<tool_call>{"name": "get_weather", "arguments": {"city": </tool_call>'),
        ("HERMES", "<tool_call>not json</tool_call> after"),
        ("HERMES", '<tool_call>{"name": "unknown_tool", "arguments": {}}</tool_call>'),
        ("MISTRAL", '[TOOL_CALLS][{"name": "get_weather", "arguments": 5}]'),
        ("MISTRAL_ARGS", "[TOOL_CALLS]get_weather{no args}"),
        ("QWEN3_CODER", "<tool_call><function=get_weather>junk</tool_call>"),
        (
            "DEEPSEEK",
            "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather{}<｜tool▁calls▁end｜>",
        ),
        ("LLAMA3", '{"name": "get_weather", "parameters": {"city": "Paris"'),
        ("LLAMA3", '{"answer": 42}'),
        ("GENERIC", "<|tool_call|>[{]"),
    ],
)
def test_malformed_calls_come_back_as_text(name: str, text: str) -> None:
    for piece in (0, 1, 5):
        events = parse(parser_for(name), text, piece)
        assert not [e for e in events if isinstance(e, ToolCallEvent)]
        assert "".join(e.text for e in events if isinstance(e, TextEvent)) == text


def test_harmony_recipient_in_the_role_part() -> None:
    text = (
        "<|channel|>analysis<|message|>x<|end|><|start|>assistant to=functions.get_time"
        '<|channel|>commentary <|constrain|>json<|message|>{"zone": "UTC"}<|call|>'
    )
    assert merged(parse(parser_for("HARMONY"), text, 3))[-1] == (
        "call",
        (0, "get_time", {"zone": "UTC"}),
    )


def test_harmony_analysis_is_thinking_and_final_is_text() -> None:
    text = (
        "<|channel|>analysis<|message|>think<|end|><|start|>assistant<|channel|>final<|message|>Hi!"
    )
    assert merged(parse(parser_for("HARMONY"), text, 4)) == [("thinking", "think"), ("text", "Hi!")]
    assert merged(parse(HarmonyParser("j"), "no channels at all")) == [
        ("text", "no channels at all")
    ]


def test_qwen3_coder_values_follow_json_where_they_parse() -> None:
    text = (
        "<tool_call><function=f><parameter=n>\n4\n</parameter><parameter=flag>\ntrue\n</parameter>"
        '<parameter=s>\nhello world\n</parameter><parameter=o>\n{"a": [1]}\n</parameter>'
        "</function></tool_call>"
    )
    events = parse(AnswerParser("j", tools=fmt("QWEN3_CODER").tools), text)
    assert merged(events) == [
        ("call", (0, "f", {"n": 4, "flag": True, "s": "hello world", "o": {"a": [1]}}))
    ]


# ------------------------------------------------------------------- fuzzing

MARKERS = [
    "<tool_call>", "</tool_call>", "<think>", "</think>", "[TOOL_CALLS]", "[ARGS]", "[CALL_ID]",
    "<function=", "</function>", "<parameter=", "</parameter>", "<|channel|>", "<|message|>",
    "<|end|>", "<|start|>", " to=functions.", "<｜tool▁calls▁begin｜>", "<｜tool▁call▁begin｜>",
    "<｜tool▁sep｜>", "<｜tool▁call▁end｜>", "<｜tool▁calls▁end｜>", "<|tool_call|>", "<|python_tag|>",
    '{"name": "get_time", "arguments": {}}', "{", "}", "[", "]", '"', "\n", " ",
]  # fmt: skip
NOISE = st.lists(st.one_of(st.sampled_from(MARKERS), st.text(max_size=6)), max_size=24).map("".join)


@pytest.mark.parametrize("name", [*CALLS, "R1"])
@settings(max_examples=60, deadline=None)
@given(text=NOISE, piece=st.integers(min_value=0, max_value=9), opened=st.booleans())
def test_random_text_never_raises(name: str, text: str, piece: int, opened: bool) -> None:
    found = fmt(name)
    parser: Any
    if found.harmony:
        parser = HarmonyParser("j", tool_names=("get_time",))
    else:
        parser = AnswerParser(
            "j",
            tools=found.tools,
            tool_names=("get_time",),
            thinking=found.thinking,
            in_thinking=opened,
        )
    events = parse(parser, text, piece)
    for event in events:
        assert isinstance(event, TextEvent | ThinkingEvent | ToolCallEvent)
        if isinstance(event, ToolCallEvent):
            assert event.name == "get_time" and isinstance(event.arguments, dict)
            json.dumps(event.arguments)
    # Without thinking or calls, nothing is lost: the text comes back whole.
    if not any(isinstance(e, ToolCallEvent | ThinkingEvent) for e in events) and not found.harmony:
        shown = "".join(e.text for e in events if isinstance(e, TextEvent))
        if found.thinking is None:
            assert shown == text


def test_think_switch_reaches_the_template() -> None:
    from localserve.engine.prepare import _template_kwargs
    from localserve.runtime.protocol import GenerateJob

    assert _template_kwargs(GenerateJob(think=None)) == {}
    off = _template_kwargs(GenerateJob(think=False))
    assert off == {"enable_thinking": False, "thinking": False}
    assert _template_kwargs(GenerateJob(think="high"))["reasoning_effort"] == "high"
    # The request's own template variables win.
    mine = _template_kwargs(GenerateJob(think=False, template_kwargs={"enable_thinking": True}))
    assert mine["enable_thinking"] is True
    qwen3 = ChatTemplate(templates.QWEN3)
    rendered = qwen3.render([{"role": "user", "content": "hi"}], **off)
    assert rendered.endswith("<think>\n\n</think>\n\n")
    assert not qwen3.render([{"role": "user", "content": "hi"}]).endswith("</think>\n\n")


def test_thinking_room_before_an_enforced_call() -> None:
    from localserve.engine.prepare import thinking_room
    from localserve.runtime.options import SamplingOptions

    # The answer's room less a quarter for the call (64 to 1024 tokens).
    assert thinking_room(2048, 48, SamplingOptions()) == 1500
    assert thinking_room(32768, 768, SamplingOptions()) == 32000 - 1024
    assert thinking_room(2048, 48, SamplingOptions(num_predict=200)) == 136
    assert thinking_room(2048, 2040, SamplingOptions()) == 1
