"""Tool calls and thinking on the chat templates real models ship (llama.cpp's
``models/templates``, copied into tests/support/templates/), without a model.

Each template is detected by rendering it; then the template itself writes a turn
with calls (as it would put the model's own calls back into a history), and the
answer parser must read those calls back from that text, streamed in pieces of
every size. What the template writes is what its model was trained to write, so a
parser that reads it reads the model.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from localserve.runtime.chat.formats import ChatFormat, ThinkingTags, detect
from localserve.runtime.chat.learn import TAG, USER, common_prefix, common_suffix, render
from localserve.runtime.chat.parse import AnswerParser, MuseParser
from localserve.runtime.chat.syntax import ID_SLOT, INDEX_SLOT
from localserve.runtime.protocol import Event, TextEvent, ThinkingEvent, ToolCallEvent
from localserve.runtime.templates import ChatTemplate

FOLDER = Path(__file__).resolve().parents[1] / "support" / "templates"

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "description": "The city."},
                    "days": {"type": "integer", "description": "How many days."},
                },
                "required": ["city"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "The time in a zone.",
            "parameters": {
                "type": "object",
                "properties": {"zone": {"type": "string", "description": "The zone."}},
            },
        },
    },
]
TYPES = {"get_weather": {"city": "string", "days": "integer"}, "get_time": {"zone": "string"}}
NAMES = ("get_weather", "get_time")
CALLS = [
    ("get_weather", {"city": "Paris", "days": 3}, "a1B2c3D4e"),
    ("get_time", {"zone": "UTC"}, "f5G6h7I8j"),
]


@functools.cache
def template(name: str) -> ChatTemplate:
    return ChatTemplate((FOLDER / f"{name}.jinja").read_text(), bos_token="<s>", eos_token="</s>")


@functools.cache
def fmt(name: str) -> ChatFormat:
    return detect(template(name))


# name: the call format found, whether it thinks (and with which tags).
DETECTED: dict[str, tuple[str | None, ThinkingTags | None]] = {
    "GLM-4.6": ("tagged", ThinkingTags("<think>", "</think>")),
    "GLM-4.7-Flash": ("tagged", ThinkingTags("<think>", "</think>")),
    "deepseek-ai-DeepSeek-V3.2": ("tagged", ThinkingTags("<think>", "</think>")),
    "deepseek-ai-DeepSeek-V4": ("tagged", ThinkingTags("<think>", "</think>")),
    "Kimi-K2-Instruct": ("tagged", None),
    "Kimi-K2-Thinking": ("tagged", ThinkingTags("<think>", "</think>")),
    "Kimi-K3": ("tagged", ThinkingTags("<|open|>think<|sep|>", "<|close|>think<|sep|>")),
    "moonshotai-Kimi-K2": ("tagged", None),
    "MiniMax-M2": ("tagged", ThinkingTags("<think>", "</think>")),
    "MiniMax-M3": ("tagged", ThinkingTags("<mm:think>", "</mm:think>")),
    "tencent-Hy3": ("tagged", ThinkingTags("<think:opensource>", "</think:opensource>")),
    "openbmb-MiniCPM5-1B": ("tagged", ThinkingTags("<think>", "</think>")),
    "upstage-Solar-Open-100B": ("tagged", ThinkingTags("<|think|>", "<|end|>")),
    "meetkai-functionary-medium-v3.1": ("tagged", None),
    "meetkai-functionary-medium-v3.2": ("tagged", None),
    "inclusionai-ling-3.0-flash": ("tagged", ThinkingTags("<think>", "</think>")),
    "ByteDance-Seed-OSS": ("tagged", ThinkingTags("<seed:think>", "</seed:think>")),
    "Apertus-8B-Instruct": ("generic", ThinkingTags("<|inner_prefix|>", "<|inner_suffix|>")),
    "Apriel-1.6-15b-Thinker-fixed": (
        "generic",
        ThinkingTags("Here are my reasoning steps:", "[BEGIN FINAL RESPONSE]"),
    ),
    "CohereForAI-c4ai-command-r7b-12-2024-tool_use": (
        "generic",
        ThinkingTags("<|START_THINKING|>", "<|END_THINKING|>"),
    ),
    "Cohere2MoE": ("generic", ThinkingTags("<|START_THINKING|>", "<|END_THINKING|>")),
    "CohereForAI-c4ai-command-r-plus-tool_use": ("generic", None),
    "NVIDIA-Nemotron-Nano-v2": ("generic", ThinkingTags("<think>", "</think>")),
    "GigaChat3-10B-A1.8B": ("generic", None),
    "GigaChat3.1-10B-A1.8B": ("generic", None),
    "LFM2.5-8B-A1B": ("pythonic", ThinkingTags("<think>", "</think>")),
    "LFM2-8B-A1B": ("pythonic", None),
    "google-gemma-4-31B-it": ("gemma4", ThinkingTags("<|channel>thought", "<channel|>")),
    "ibm-granite-granite-3.3-2B-Instruct": ("generic", ThinkingTags("<think>", "</think>")),
    "Mistral-Small-3.2-24B-Instruct-2506": ("mistral_args", None),
    "mistralai-Ministral-3-14B-Reasoning-2512": (
        "mistral_args",
        ThinkingTags("[THINK]", "[/THINK]"),
    ),
    "unsloth-mistral-Devstral-Small-2507": ("mistral_args", None),
    "llama-cpp-deepseek-r1": ("deepseek", ThinkingTags("<think>", "</think>")),
    "Qwen3.5-4B": ("qwen3_coder", ThinkingTags("<think>", "</think>")),
    "StepFun3.5-Flash": ("qwen3_coder", ThinkingTags("<think>", "</think>")),
    "HuggingFaceTB-SmolLM3-3B": (None, ThinkingTags("<think>", "</think>")),  # no tools
}
# Templates that show the model its tools but never write a call back: the syntax
# comes from their instructions, so there is no written call to read back.
INSTRUCTED = {"LFM2-8B-A1B", "ibm-granite-granite-3.3-2B-Instruct"}


@pytest.mark.parametrize("name", list(DETECTED))
def test_detection(name: str) -> None:
    kind, thinking = DETECTED[name]
    found = fmt(name)
    assert (found.tools.kind if found.tools else None) == kind
    assert ("tools" in found.capabilities) == (kind is not None)
    assert found.thinking == thinking
    assert ("thinking" in found.capabilities) == (thinking is not None)


def test_every_template_named_here_is_in_the_folder() -> None:
    """The templates these tests name (the syntaxes learnt from a render; the round-trip
    test, test_template_roundtrip.py, covers every template in the folder)."""
    assert set(DETECTED) <= {p.stem for p in FOLDER.glob("*.jinja")}


# ------------------------------------------------------------- calls read back


def written_calls(name: str, count: int) -> tuple[str, str]:
    """The text ``name``'s template writes for an assistant turn of ``count`` calls
    (what follows its generation prompt, up to its end of turn), and the prompt."""
    turn: dict[str, Any] = {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"id": i, "type": "function", "function": {"name": n, "arguments": a}}
            for n, a, i in CALLS[:count]
        ],
    }
    chat = template(name)
    with_calls = render(chat, [USER, turn], add_generation_prompt=False, tools=TOOLS)
    if not with_calls:  # a template that wants the arguments as a JSON string
        for call in turn["tool_calls"]:
            call["function"]["arguments"] = json.dumps(call["function"]["arguments"])
        with_calls = render(chat, [USER, turn], add_generation_prompt=False, tools=TOOLS)
    prompt = render(chat, [USER], add_generation_prompt=True, tools=TOOLS)
    plain_turn = {"role": "assistant", "content": "answeranswer"}
    plain = render(chat, [USER, plain_turn], add_generation_prompt=False, tools=TOOLS)
    start = common_prefix(with_calls, prompt, aligned=True)
    end = len(with_calls) - common_prefix(with_calls[::-1], plain[::-1])
    for tag in TAG.finditer(with_calls):
        if tag.start() < end < tag.end():
            end = tag.end()
    return with_calls[start:end], prompt


def read(name: str, text: str, prompt: str, piece: int) -> list[Event]:
    found = fmt(name)
    opened = found.thinking is not None and prompt.rstrip().endswith(found.thinking.open)
    parser = AnswerParser(
        "j",
        tools=found.tools,
        tool_names=NAMES,
        thinking=found.thinking,
        in_thinking=opened,
        types=TYPES,
        framing=(found.answer_open, found.answer_end),
    )
    events: list[Event] = []
    for at in range(0, len(text), piece or len(text) or 1):
        events += parser.feed(text[at : at + (piece or len(text))])
    return events + parser.flush()


WRITES_CALLS = sorted(n for n, (kind, _) in DETECTED.items() if kind and n not in INSTRUCTED)


@pytest.mark.parametrize("name", WRITES_CALLS)
@pytest.mark.parametrize("piece", [0, 1, 4])
def test_the_calls_a_template_writes_parse_back(name: str, piece: int) -> None:
    tools = fmt(name).tools
    assert tools is not None
    count = 2 if tools.parallel else 1
    text, prompt = written_calls(name, count)
    events = read(name, text, prompt, piece)
    calls = [(e.name, e.arguments) for e in events if isinstance(e, ToolCallEvent)]
    assert calls == [(n, a) for n, a, _ in CALLS[:count]], (text, events)
    # Nothing of the calls shows as text (the template's own framing may: the end of
    # its assistant header, an empty think block, its end-of-turn tag).
    shown = "".join(e.text for e in events if isinstance(e, TextEvent))
    assert not any(word in shown for word in ("get_", "Paris", "UTC")), (text, events)


def test_which_templates_write_parallel_calls() -> None:
    single = {n for n in WRITES_CALLS if not (t := fmt(n).tools) or not t.parallel}
    # GigaChat's templates write only a turn's first call.
    assert single == {"GigaChat3-10B-A1.8B", "GigaChat3.1-10B-A1.8B"}


# ------------------------------------------------------------- what was learnt


def test_tagged_markers_learnt_from_the_render() -> None:
    glm = fmt("GLM-4.7-Flash").tools
    assert glm is not None and glm.syntax is not None
    assert (glm.syntax.call_open, glm.syntax.name_close, glm.syntax.call_close) == (
        "<tool_call>",
        "",
        "</tool_call>",
    )
    assert (glm.syntax.key_open, glm.syntax.key_close, glm.syntax.value_close) == (
        "<arg_key>",
        "</arg_key><arg_value>",
        "</arg_value>",
    )
    # DeepSeek V3.2 tells strings from other values in the block.
    dsml = fmt("deepseek-ai-DeepSeek-V3.2").tools
    assert dsml is not None and dsml.syntax is not None
    assert dsml.starts == ("<｜DSML｜function_calls>",)
    assert dsml.syntax.key_close == '" string="true">'
    assert dsml.syntax.key_close_for("integer") == '" string="false">'
    # Kimi K2 numbers its calls; Solar Open writes an id before the name.
    kimi = fmt("moonshotai-Kimi-K2").tools
    assert kimi is not None and kimi.syntax is not None
    assert kimi.syntax.call_open == "<|tool_call_begin|>functions."
    assert kimi.syntax.name_close == f":{INDEX_SLOT}<|tool_call_argument_begin|>"
    solar = fmt("upstage-Solar-Open-100B").tools
    assert solar is not None and solar.syntax is not None
    assert solar.syntax.call_open == f"<|tool_call:begin|>{ID_SLOT}<|tool_call:name|>"
    # Every marker a tag of its own is kept as text when the vocabulary calls it special.
    assert "<|tool_call_argument_begin|>" in kimi.markers


def test_json_keys_learnt_from_the_render() -> None:
    cohere = fmt("CohereForAI-c4ai-command-r7b-12-2024-tool_use").tools
    assert cohere is not None
    assert (cohere.starts, cohere.end) == (("<|START_ACTION|>",), "<|END_ACTION|>")
    assert (cohere.name_key, cohere.arguments_key, cohere.id_key, cohere.array) == (
        "tool_name",
        "parameters",
        "tool_call_id",
        True,
    )
    apertus = fmt("Apertus-8B-Instruct").tools
    assert apertus is not None and apertus.name_key == "" and apertus.array
    gigachat = fmt("GigaChat3-10B-A1.8B").tools
    assert gigachat is not None
    assert gigachat.starts == ("<|message_sep|>\n\nfunction call<|role_sep|>",)
    command_r = fmt("CohereForAI-c4ai-command-r-plus-tool_use").tools
    assert command_r is not None and command_r.starts == ("Action:\n```json",)


# ------------------------------------------------------------- answers cut short


def parse(name: str, text: str, piece: int = 3) -> list[tuple[str, Any]]:
    events = read(name, text, "", piece)
    out: list[tuple[str, Any]] = []
    for event in events:
        if isinstance(event, ToolCallEvent):
            out.append(("call", (event.name, event.arguments)))
        elif isinstance(event, TextEvent):
            if out and out[-1][0] == "text":
                out[-1] = ("text", out[-1][1] + event.text)
            else:
                out.append(("text", event.text))
    return out


@pytest.mark.parametrize(
    ("name", "text"),
    [
        # An enforced call repeated until the token limit: the complete ones count.
        (
            "Mistral-Small-3.2-24B-Instruct-2506",
            '[TOOL_CALLS]get_time[ARGS]{"zone": "UTC"}[TOOL_CALLS]get_time[ARGS]{"zo',
        ),
        ("GigaChat3.1-10B-A1.8B", '<|function_call|>{"name": "get_time", "arguments": {"zone": "UTC"}}<|function_call|>{"na'),
        ("Apertus-8B-Instruct", '<|tools_prefix|>[{"get_time": {"zone": "UTC"}}, {"get_ti'),
        ("GLM-4.7-Flash", "<tool_call>get_time<arg_key>zone</arg_key><arg_value>UTC</arg_value></tool_call><tool_call>get_t"),
        ("moonshotai-Kimi-K2", '<|tool_calls_section_begin|><|tool_call_begin|>functions.get_time:0<|tool_call_argument_begin|>{"zone": "UTC"}<|tool_call_end|><|tool_call_begin|>func'),
    ],
)  # fmt: skip
def test_an_answer_cut_short_keeps_its_complete_calls(name: str, text: str) -> None:
    got = parse(name, text)
    assert got[0] == ("call", ("get_time", {"zone": "UTC"}))
    assert all(kind == "text" for kind, _ in got[1:])


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("GLM-4.7-Flash", "<tool_call>get_weather<arg_key>city</tool_call>"),
        ("deepseek-ai-DeepSeek-V3.2", "<｜DSML｜function_calls>\nnot a call\n</｜DSML｜function_calls>"),
        ("moonshotai-Kimi-K2", "<|tool_calls_section_begin|><|tool_call_begin|>functions.nope:0<|tool_call_argument_begin|>{}<|tool_call_end|><|tool_calls_section_end|>"),
        ("LFM2.5-8B-A1B", "<|tool_call_start|>[get_time(__import__('os'))]<|tool_call_end|>"),
        ("google-gemma-4-31B-it", '<|tool_call>call:get_time{zone:<|"|>UTC}<tool_call|>'),
        ("CohereForAI-c4ai-command-r7b-12-2024-tool_use", '<|START_ACTION|>[{"tool_name": 5}]<|END_ACTION|>'),
    ],
)  # fmt: skip
def test_malformed_calls_come_back_as_text(name: str, text: str) -> None:
    for piece in (0, 1, 5):
        got = parse(name, text, piece)
        assert got == [("text", text)], got


def test_minimax_m3_values_closed_by_their_key_nest_objects_and_arrays() -> None:
    """MiniMax-M3 closes each value with a tag named after its key (``<city>Paris
    </city>``, each tag behind its ``]<]minimax[>[`` token) and writes objects and
    arrays as nested blocks (``<item>`` for an array's): read back as JSON values."""
    ns = "]<]minimax[>["
    text = (
        f'</mm:think>{ns}<tool_call>\n{ns}<invoke name="get_weather">'
        f"{ns}<city>Paris{ns}</city>{ns}<days>3{ns}</days>"
        f"{ns}<hours>{ns}<item>1{ns}</item>{ns}<item>2{ns}</item>{ns}</hours>"
        f"{ns}<where>{ns}<lat>48.8{ns}</lat>{ns}<name>Paris{ns}</name>{ns}</where>"
        f"{ns}</invoke>\n{ns}</tool_call>"
    )
    want = {"city": "Paris", "days": 3, "hours": [1, 2], "where": {"lat": 48.8, "name": "Paris"}}
    for piece in (0, 1, 7):
        assert parse("MiniMax-M3", text, piece) == [("call", ("get_weather", want))]


def test_raw_values_follow_the_declared_types() -> None:
    # GLM writes values as raw text: a string parameter stays a string.
    text = (
        "<tool_call>get_weather<arg_key>city</arg_key><arg_value>1984</arg_value>"
        "<arg_key>days</arg_key><arg_value>2</arg_value></tool_call>"
    )
    assert parse("GLM-4.7-Flash", text) == [("call", ("get_weather", {"city": "1984", "days": 2}))]
    # DeepSeek V3.2 says which values are strings.
    dsml = (
        '<｜DSML｜function_calls>\n<｜DSML｜invoke name="get_time">\n'
        '<｜DSML｜parameter name="zone" string="true">42</｜DSML｜parameter>\n'
        '<｜DSML｜parameter name="extra" string="false">{"a": [1]}</｜DSML｜parameter>\n'
        "</｜DSML｜invoke>\n</｜DSML｜function_calls>"
    )
    assert parse("deepseek-ai-DeepSeek-V3.2", dsml) == [
        ("call", ("get_time", {"zone": "42", "extra": {"a": [1]}}))
    ]


def test_text_before_the_calls_stays_text() -> None:
    text = (
        'Let me check.\n\n<minimax:tool_call>\n<invoke name="get_time">\n'
        '<parameter name="zone">UTC</parameter>\n</invoke>\n</minimax:tool_call>'
    )
    assert parse("MiniMax-M2", text, 2) == [
        ("text", "Let me check.\n\n"),
        ("call", ("get_time", {"zone": "UTC"})),
    ]


def test_instructed_formats_read_the_calls_they_describe() -> None:
    granite = '<|tool_call|>[{"name": "get_time", "arguments": {"zone": "UTC"}}]'
    assert parse("ibm-granite-granite-3.3-2B-Instruct", granite) == [
        ("call", ("get_time", {"zone": "UTC"}))
    ]
    lfm2 = "<|tool_call_start|>[get_time(zone='UTC'), get_weather(city=\"Oslo\", days=2)]<|tool_call_end|>"
    assert parse("LFM2-8B-A1B", lfm2) == [
        ("call", ("get_time", {"zone": "UTC"})),
        ("call", ("get_weather", {"city": "Oslo", "days": 2})),
    ]


# ------------------------------------------------------------- thinking read back

THINKS = sorted(n for n, (_, thinking) in DETECTED.items() if thinking is not None)
# Templates whose tags are found from their prompt or instructions alone: they show no
# reasoning in a history, so there is no written reasoning to read back.
FROM_PROMPT = {
    "HuggingFaceTB-SmolLM3-3B",
    "NVIDIA-Nemotron-Nano-v2",
    "ibm-granite-granite-3.3-2B-Instruct",
    "llama-cpp-deepseek-r1",
}


def written_reasoning(name: str) -> tuple[str, str] | None:
    """What the template writes for a turn with reasoning (in the first of the
    places detection looks that it shows), after its assistant header, with thinking
    on; and its generation prompt."""
    from localserve.runtime.chat.thinking import REASONING, _turns

    chat = template(name)
    on = {"enable_thinking": True, "thinking": True, "reasoning_effort": "high"}
    for turn, without, tools in _turns():
        rendered = render(chat, [USER, turn], add_generation_prompt=False, tools=tools, **on)
        if REASONING not in rendered or "'type'" in rendered:
            continue
        plain = render(chat, [USER, without], add_generation_prompt=False, tools=tools, **on)
        base = render(chat, [USER], add_generation_prompt=False, tools=tools, **on)
        prompt = render(chat, [USER], add_generation_prompt=True, tools=tools, **on)
        header = prompt[common_prefix(prompt, base) :]
        start = common_prefix(rendered, base, aligned=True)
        start += common_prefix(rendered[start:], header)
        end = len(rendered) - common_suffix(rendered, plain)
        return rendered[start : max(end, rendered.find(REASONING) + len(REASONING))], prompt
    return None


@pytest.mark.parametrize("name", sorted(FROM_PROMPT))
def test_some_templates_show_no_reasoning_in_a_history(name: str) -> None:
    assert name in THINKS
    assert written_reasoning(name) is None


@pytest.mark.parametrize("name", [n for n in THINKS if n not in FROM_PROMPT])
def test_the_reasoning_a_template_writes_parses_back(name: str) -> None:
    written = written_reasoning(name)
    assert written is not None, "it shows no reasoning in a history: list it in FROM_PROMPT"
    text, prompt = written
    for piece in (0, 1, 3):
        events = read(name, text, prompt, piece)
        thought = "".join(e.text for e in events if e.type == "thinking")
        shown = "".join(e.text for e in events if isinstance(e, TextEvent))
        assert thought.strip() == "thinkthink", (text, events)
        assert "thinkthink" not in shown, (text, events)


def test_functionary_answers_after_the_prompt_opened_a_recipient() -> None:
    """Functionary v3.2's prompt ends with ``>>>``: the answer names a tool on its
    first line, or ``all`` for text; later calls open with ``>>>`` again."""
    tools = fmt("meetkai-functionary-medium-v3.2").tools
    assert tools is not None and (tools.opened, tools.text_name) == (">>>", "all")
    name = "meetkai-functionary-medium-v3.2"
    assert parse(name, "all\nHello there.") == [("text", "Hello there.")]
    mixed = 'all\nLet me check.>>>get_time\n{"zone": "UTC"}>>>all\nDone.'
    assert parse(name, mixed, 2) == [
        ("text", "Let me check."),
        ("call", ("get_time", {"zone": "UTC"})),
        ("text", "Done."),
    ]
    # A model that writes the prompt's `>>>` again (Gemma copying the history, through
    # Ollama's API, where no grammar holds it): the same call.
    for piece in (0, 1, 2):
        again = parse(name, '>>>get_time\n{"zone": "UTC"}', piece)
        assert again == [("call", ("get_time", {"zone": "UTC"}))]
    # The call ends with its JSON object: what follows (here, Gemma going on with the
    # history's end of turn and the answer) is text again.
    followed = '>>>get_time\n{"zone": "UTC"}<|eot_id|>>>>all\nIt is noon.'
    for piece in (0, 1, 3):
        assert parse(name, followed, piece) == [
            ("call", ("get_time", {"zone": "UTC"})),
            ("text", "<|eot_id|>It is noon."),
        ]


def test_the_framing_around_an_answer_is_dropped() -> None:
    """Kimi K3 wraps its text in <|open|>response<|sep|>...<|close|>response<|sep|> and
    ends the turn with <|close|>message<|sep|>; those tags are kept for its calls and
    thinking, so the parser drops them around the answer."""
    k3 = fmt("Kimi-K3")
    assert k3.answer_open == "<|open|>response<|sep|>"
    text = (
        "Hmm.<|close|>think<|sep|><|open|>response<|sep|>Hello <b>there</b>."
        "<|close|>response<|sep|><|close|>message<|sep|>"
    )
    for piece in (1, 3, 0):
        events = read("Kimi-K3", text, "<|open|>think<|sep|>", piece)
        assert "".join(e.text for e in events if isinstance(e, ThinkingEvent)) == "Hmm."
        assert "".join(e.text for e in events if isinstance(e, TextEvent)) == "Hello <b>there</b>."
    called = (
        "Hmm.<|close|>think<|sep|><|open|>response<|sep|>Checking.<|close|>response<|sep|>"
        '<|open|>tools<|sep|><|open|>call tool="get_time" index="1"<|sep|>'
        '<|open|>argument key="zone" type="string"<|sep|>UTC<|close|>argument<|sep|>'
        "<|close|>call<|sep|><|close|>tools<|sep|><|close|>message<|sep|>"
    )
    events = read("Kimi-K3", called, "<|open|>think<|sep|>", 2)
    assert [e.name for e in events if isinstance(e, ToolCallEvent)] == ["get_time"]
    assert "".join(e.text for e in events if isinstance(e, TextEvent)) == "Checking."
    # Solar Open's answer follows its thought under a new header, whose special tokens
    # llama.cpp may not render: the word is dropped either way.
    for answer in ("<|begin|>assistant<|content|>Hello.", "assistantHello."):
        events = read("upstage-Solar-Open-100B", "<|think|>hmm<|end|>" + answer, "", 1)
        assert "".join(e.text for e in events if isinstance(e, TextEvent)) == "Hello."


MARKER_SOUP = [
    "<|open|>", "<|close|>", "<|sep|>", "response", "think", "tools", "call tool=\"get_time\"",
    " index=\"1\"", "argument key=\"zone\"", " type=\"string\"", "<tool_call>", "</tool_call>",
    "<arg_key>", "</arg_key>", "<arg_value>", "</arg_value>", ">>>", "all\n", "get_time\n",
    "<｜DSML｜function_calls>", "<｜DSML｜invoke name=\"", "<｜DSML｜parameter name=\"",
    "</｜DSML｜parameter>", "</｜DSML｜invoke>", "</｜DSML｜function_calls>", " string=\"true\">",
    "<|think|>", "<|end|>", "<|begin|>", "assistant", "<|content|>", "{", "}", "\"", "\n", " ",
]  # fmt: skip


@pytest.mark.parametrize(
    "name",
    [
        "Kimi-K3",
        "GLM-4.7-Flash",
        "meetkai-functionary-medium-v3.2",
        "deepseek-ai-DeepSeek-V3.2",
        "upstage-Solar-Open-100B",
    ],
)
@settings(max_examples=80, deadline=None)
@given(
    text=st.lists(st.one_of(st.sampled_from(MARKER_SOUP), st.text(max_size=5)), max_size=30).map(
        "".join
    ),
    piece=st.integers(min_value=0, max_value=7),
)
def test_random_marker_soup_never_raises(name: str, text: str, piece: int) -> None:
    for event in read(name, text, "", piece):
        assert isinstance(event, TextEvent | ThinkingEvent | ToolCallEvent)
        if isinstance(event, ToolCallEvent):
            assert event.name in NAMES and isinstance(event.arguments, dict)
            json.dumps(event.arguments)


def test_the_end_of_sequence_after_calls_is_not_part_of_the_format() -> None:
    # Hy3 writes its end-of-sequence token after calls only; the model stops there.
    source = (FOLDER / "tencent-Hy3.jinja").read_text()
    tools = detect(ChatTemplate(source, eos_token="<｜hy_eos:opensource｜>")).tools
    assert tools is not None and tools.syntax is not None
    assert tools.syntax.section_close.strip() == "</tool_calls:opensource>"


# ------------------------------------------------------------------- Muse's messages

MUSE = "muse-glimmer"


def muse_read(text: str, piece: int = 0) -> list[tuple[str, Any]]:
    parser = MuseParser("j", tool_names=NAMES, types=TYPES)
    events: list[Event] = []
    for at in range(0, len(text), piece or len(text) or 1):
        events += parser.feed(text[at : at + (piece or len(text))])
    merged: list[tuple[str, Any]] = []
    for event in events + parser.flush():
        if isinstance(event, ToolCallEvent):
            merged.append(("call", (event.index, event.name, event.arguments)))
        elif merged and merged[-1][0] == event.type:
            merged[-1] = (event.type, merged[-1][1] + event.text)
        else:
            merged.append((event.type, event.text))
    return merged


def test_muse_is_detected_by_its_messages_not_its_tags() -> None:
    found = fmt(MUSE)
    assert found.muse and not found.harmony
    assert found.tools is not None and found.tools.kind == "muse"
    # Reasoning is a message to `self`, not text between tags.
    assert found.thinking is None and found.thinks
    assert set(found.capabilities) == {"completion", "tools", "thinking"}
    assert (found.answer_open, found.answer_end) == ("", "")
    # Its message tags are kept in the answer (one special token each in a real model).
    assert {"<|start|>", "<|message|>", "<|eom|>", "<|eot|>"} <= set(found.markers)
    # Templates with other channels or tags are not Muse.
    for other in ("GLM-4.7-Flash", "google-gemma-4-31B-it", "Kimi-K3"):
        assert not fmt(other).muse


def test_muse_reasoning_calls_and_answer_come_back_from_what_the_template_writes() -> None:
    """Two calls after a reasoning message, as the template renders them (the prompt
    wrote the first ``<|start|>assistant``), then the answer in a later turn."""
    turn: dict[str, Any] = {
        "role": "assistant",
        "content": "",
        "reasoning_content": "Two lookups.",
        "tool_calls": [
            {"id": i, "type": "function", "function": {"name": n, "arguments": a}}
            for n, a, i in CALLS
        ],
    }
    chat = template(MUSE)
    prompt = render(chat, [USER], add_generation_prompt=True, tools=TOOLS)
    written = render(chat, [USER, turn], add_generation_prompt=False, tools=TOOLS)
    assert written.startswith(prompt)
    text = written[len(prompt) :]
    assert text.count("<|start|>assistant to=") == 2  # one message per call
    for piece in (0, 1, 4):
        assert muse_read(text, piece) == [
            ("thinking", "Two lookups."),
            ("call", (0, "get_weather", {"city": "Paris", "days": 3})),
            ("call", (1, "get_time", {"zone": "UTC"})),
        ], text
    answer = " to=user<|message|>It is 3 o'clock.<|eot|>"
    assert muse_read(answer, 3) == [("text", "It is 3 o'clock.")]
    # A string parameter stays a string, spaces included; other values are JSON.
    spaced = (
        ' to=get_weather<|message|><atem:function_calls>\n<atem:invoke name="get_weather">\n'
        '<atem:parameter name="city"> 42 </atem:parameter>\n'
        '<atem:parameter name="days">7</atem:parameter>\n</atem:invoke>\n</atem:function_calls>'
    )
    assert muse_read(spaced) == [("call", (0, "get_weather", {"city": " 42 ", "days": 7}))]


@pytest.mark.parametrize(
    "text",
    [
        # the two names disagree
        ' to=get_time<|message|><atem:function_calls>\n<atem:invoke name="get_weather">\n'
        "</atem:invoke>\n</atem:function_calls><|eot|>",
        # a tool the request does not have
        ' to=rm_rf<|message|><atem:function_calls>\n<atem:invoke name="rm_rf">\n'
        "</atem:invoke>\n</atem:function_calls><|eot|>",
        # cut off inside the call
        ' to=get_time<|message|><atem:function_calls>\n<atem:invoke name="get_time">\n'
        '<atem:parameter name="zone">UT',
        # not XML at all
        ' to=get_time<|message|>{"zone": "UTC"}<|eom|>',
    ],
)
def test_a_muse_call_that_does_not_read_comes_back_as_text(text: str) -> None:
    body = text.split("<|message|>", 1)[1].removesuffix("<|eot|>").removesuffix("<|eom|>")
    for piece in (0, 1, 5):
        assert muse_read(text, piece) == [("text", body)]


# ------------------------------------------------------------ what follows the calls


def test_gemma4_stops_for_the_results_with_a_tag_that_is_not_text() -> None:
    """Gemma 4's template ends a turn of calls with ``<|tool_response>`` (the results
    come next), not its end of turn: learnt, and dropped after calls, not before."""
    tools = fmt("google-gemma-4-31B-it").tools
    assert tools is not None and tools.after_calls == "<|tool_response>"
    assert "<|tool_response>" in tools.markers
    assert fmt("Qwen3.5-4B").tools is not None and not fmt("Qwen3.5-4B").tools.after_calls
    call = '<|tool_call>call:get_time{zone:<|"|>UTC<|"|>}<tool_call|>'
    name = "google-gemma-4-31B-it"
    for piece in (0, 1, 3):
        events = read(name, call + "<|tool_response>", "", piece)
        assert [(e.type, getattr(e, "name", "")) for e in events] == [("tool_call", "get_time")]
        # Not after a call: the tag is what the model wrote.
        alone = read(name, "Hi<|tool_response>", "", piece)
        assert "".join(e.text for e in alone if isinstance(e, TextEvent)) == "Hi<|tool_response>"


def test_kimi_k3_calls_whose_section_end_is_cut_short_leave_no_text() -> None:
    """Kimi K3's calls end with ``<|sep|><|close|>tools<|sep|>``; an answer that stops
    before the last ``<|sep|>`` (which its end of turn shares) has ended the section."""
    call = (
        '<|open|>tools<|sep|><|open|>call tool="get_time" index="1"<|sep|>'
        '<|open|>argument key="zone" type="string"<|sep|>UTC<|close|>argument<|sep|>'
        "<|close|>call<|sep|><|close|>tools"
    )
    name = "Kimi-K3"
    prefix = "<|close|>response<|sep|>"  # the template's section opening starts there
    for piece in (0, 1, 4):
        events = read(name, prefix + call, "", piece)
        calls = [(e.name, e.arguments) for e in events if isinstance(e, ToolCallEvent)]
        assert calls == [("get_time", {"zone": "UTC"})], events
        assert not "".join(e.text for e in events if isinstance(e, TextEvent)).strip(), events
        # A cut that is not the section's end is still text.
        odd = read(name, prefix + call.removesuffix("tools") + "tooth", "", piece)
        assert "tooth" in "".join(e.text for e in odd if isinstance(e, TextEvent)), odd


MUSE_SOUP = [
    " to=",
    "self",
    "user",
    "get_time",
    "<|message|>",
    "<|eom|>",
    "<|eot|>",
    "<|start|>assistant",
    "<atem:function_calls>",
    '\n<atem:invoke name="get_time">\n',
    '<atem:parameter name="zone">',
    "</atem:parameter>\n",
    "</atem:invoke>\n",
    "</atem:function_calls>",
]


@settings(max_examples=80, deadline=None)
@given(
    text=st.lists(st.one_of(st.sampled_from(MUSE_SOUP), st.text(max_size=5)), max_size=30).map(
        "".join
    ),
    piece=st.integers(min_value=0, max_value=7),
)
def test_muse_soup_never_raises_and_streams_as_it_reads_whole(text: str, piece: int) -> None:
    whole = muse_read(text)
    assert muse_read(text, piece) == whole
    for kind, value in whole:
        if kind == "call":
            assert value[1] in NAMES and isinstance(value[2], dict)
