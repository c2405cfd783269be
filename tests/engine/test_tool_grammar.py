"""``tool_choice: required`` on a random-weight model, for every call format: the
grammar built from the tool's schema (engine/tool_grammar.py) must make even
noise a call that the format's parser reads back with arguments matching the schema.
Real llama.cpp sampling on the tiny model, in-process (the engine, no runner)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localserve.engine.engine import Engine
from localserve.engine.job import Job
from localserve.engine.llama import Model
from localserve.engine.tool_grammar import enforced_kinds, tool_grammar
from localserve.runtime.chat.formats import ChatFormat, detect
from localserve.runtime.chat.parse import AnswerParser, HarmonyParser, MuseParser
from localserve.runtime.options import LoadOptions, SamplingOptions
from localserve.runtime.protocol import Event, ToolCallEvent
from localserve.runtime.templates import ChatTemplate
from tests.support import chat_templates

FAMILIES = [
    "HERMES",
    "LLAMA3",
    "MISTRAL",
    "MISTRAL_ARGS",
    "QWEN3_CODER",
    "HARMONY",
    "DEEPSEEK",
    "GENERIC",
]
# Every part bounded, so noise finishes the call within num_predict.
TOOL = {
    "type": "function",
    "function": {
        "name": "set_alarm",
        "parameters": {
            "type": "object",
            "properties": {
                "day": {"type": "string", "enum": ["mon", "tue", "wed"]},
                "hour": {"type": "integer"},
                "loud": {"type": "boolean"},
            },
            "required": ["day", "hour"],
        },
    },
}
OTHER = {"type": "function", "function": {"name": "noop", "parameters": {"type": "object"}}}


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    from tests.support.tiny_gguf import write_tiny_gguf

    model = Model([write_tiny_gguf(tmp_path_factory.mktemp("grammar") / "tiny.gguf")])
    built = Engine(model, LoadOptions(num_ctx=512, num_parallel=1), n_threads=2)
    yield built
    built.close()
    model.close()


class Recorded:
    """A parser that keeps the text it was fed: the answer as the model wrote it."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.text = ""

    def feed(self, text: str) -> list[Event]:
        self.text += text
        events: list[Event] = self.inner.feed(text)
        return events

    def flush(self) -> list[Event]:
        events: list[Event] = self.inner.flush()
        return events


def sample(
    engine: Engine,
    found: ChatFormat,
    gbnf: str,
    seed: int,
    names: list[str],
    num_predict: int = 300,
) -> tuple[str, list[Event]]:
    """The model's text and the parser's events for one answer under ``gbnf``."""
    recorded: list[Recorded] = []

    def parser(job_id: str) -> Any:
        if found.harmony:
            inner: Any = HarmonyParser(job_id, tool_names=names)
        elif found.muse:
            inner = MuseParser(job_id, tool_names=names)
        else:
            inner = AnswerParser(job_id, tools=found.tools, tool_names=names)
        recorded.append(Recorded(inner))
        return recorded[-1]

    prompt = engine.model.tokenize("Wake me up on Tuesday at seven.", add_special=True)
    options = SamplingOptions(temperature=1.0, seed=seed, num_predict=num_predict)
    engine.submit(Job(f"j{seed}", prompt, options, gbnf, parser_factory=parser))
    events: list[Event] = []
    while engine.has_work():
        events.extend(engine.step())
    (answer,) = recorded
    return answer.text, events


def answer(
    engine: Engine,
    found: ChatFormat,
    choice: str,
    seed: int,
    tools: tuple[Any, ...] = (),
    num_predict: int = 300,
) -> list[Event]:
    assert found.tools is not None
    tools = tools or (OTHER, TOOL)
    grammar = tool_grammar(found.tools, list(tools), choice=choice, parallel=False)
    assert grammar is not None and not grammar.triggers
    return sample(engine, found, grammar.gbnf, seed, ["noop", "set_alarm"], num_predict)[1]


@pytest.mark.parametrize("family", FAMILIES)
def test_required_call_is_valid_for_every_format(engine: Engine, family: str) -> None:
    found = detect(ChatTemplate(getattr(chat_templates, family)))
    assert found.tools is not None and found.tools.kind in enforced_kinds()
    for seed in (1, 2):
        events = answer(engine, found, "set_alarm" if seed == 2 else "required", seed)
        done = events[-1]
        assert done.type == "done" and done.done_reason == "stop", (family, events)
        calls = [e for e in events if isinstance(e, ToolCallEvent)]
        assert len(calls) == 1, (family, events)
        (call,) = calls
        if seed == 2:  # a named choice: that function
            assert call.name == "set_alarm"
        if call.name == "set_alarm":
            assert call.arguments["day"] in ("mon", "tue", "wed")
            assert isinstance(call.arguments["hour"], int)
            assert set(call.arguments) <= {"day", "hour", "loud"}
            if "loud" in call.arguments:
                assert isinstance(call.arguments["loud"], bool)
        else:
            assert call.name == "noop" and isinstance(call.arguments, dict)
        assert not [e for e in events if e.type == "text" and e.text.strip()], (family, events)


# Real templates (tests/support/templates/), one per syntax learnt from a render
# or read from instructions.
REAL = [
    "GLM-4.7-Flash",  # tagged, nothing between the name and the first argument
    "deepseek-ai-DeepSeek-V3.2",  # tagged, string="true|false" per value
    "moonshotai-Kimi-K2",  # tagged, JSON arguments, a call number in the markers
    "upstage-Solar-Open-100B",  # tagged, a call id before the name
    "MiniMax-M2",  # tagged, a section around the calls
    "MiniMax-M3",  # tagged, each value closed by a tag named after its key
    "Apertus-8B-Instruct",  # JSON, the name as the key
    "CohereForAI-c4ai-command-r7b-12-2024-tool_use",  # JSON array with ids
    "GigaChat3.1-10B-A1.8B",  # JSON after a tag, one call a turn
    "LFM2.5-8B-A1B",  # python-style calls
    "google-gemma-4-31B-it",  # Gemma 4's own object syntax
    "Mistral-Small-3.2-24B-Instruct-2506",  # [TOOL_CALLS]NAME[CALL_ID]...[ARGS]
    "meetkai-functionary-medium-v3.2",  # the prompt wrote the first ">>>"
    "muse-glimmer",  # each call its own message, to=NAME then <atem:...> XML
]


@pytest.mark.parametrize("name", REAL)
def test_required_call_is_valid_for_real_templates(engine: Engine, name: str) -> None:
    source = (Path(chat_templates.__file__).parent / "templates" / f"{name}.jinja").read_text()
    found = detect(ChatTemplate(source))
    assert found.tools is not None
    for seed in (1, 2):
        # Only the bounded tool: "noop" takes any object, which noise never ends. Long
        # markers (DeepSeek's fullwidth bars) are many tokens in the tiny vocabulary.
        choice = "set_alarm" if seed == 2 else "required"
        events = answer(engine, found, choice, seed, (TOOL,), num_predict=1000)
        calls = [e for e in events if isinstance(e, ToolCallEvent)]
        assert events[-1].type == "done" and len(calls) == 1, (name, events)
        assert calls[0].name == "set_alarm"
        assert calls[0].arguments["day"] in ("mon", "tue", "wed"), (name, events)
        assert isinstance(calls[0].arguments["hour"], int)


def test_required_after_an_opened_thinking_block(engine: Engine) -> None:
    """The prompt opened <think> (DeepSeek R1, QwQ): the model reasons freely, and once
    it closes the block, only a call may follow."""
    import llama_cpp.llama_cpp as L

    from localserve.engine.sampler import Sampler

    found = detect(ChatTemplate(chat_templates.HERMES))
    assert found.tools is not None
    grammar = tool_grammar(found.tools, [TOOL], choice="required", parallel=False, after="</think>")
    assert grammar is not None and grammar.triggers
    model = engine.model
    sampler = Sampler(model, SamplingOptions(temperature=0), grammar.gbnf, grammar.triggers)
    try:
        letter = model.tokenize("x", add_special=False)[-1]
        assert sampler._grammar_allows(letter)  # thinking is free
        for token in model.tokenize("Let me think.\n</think>\n", add_special=False):
            L.llama_sampler_accept(sampler.grammar, token)
        assert not sampler._grammar_allows(letter)  # the call must come now
        assert sampler._grammar_allows(model.tokenize("<", add_special=False)[-1])
    finally:
        sampler.close()


def test_muse_auto_grammar_wakes_at_a_message_to_a_tool(engine: Engine) -> None:
    """Muse writes reasoning (`` to=self``) and its answer (`` to=user``) as messages
    like a call's: the lazy grammar stays off for those and holds a message addressed
    to a tool to the call's syntax."""
    import llama_cpp.llama_cpp as L

    from localserve.engine.sampler import Sampler

    source = (Path(chat_templates.__file__).parent / "templates" / "muse-glimmer.jinja").read_text()
    found = detect(ChatTemplate(source))
    assert found.tools is not None
    grammar = tool_grammar(found.tools, [TOOL], choice="auto", parallel=False)
    assert grammar is not None and grammar.triggers
    model = engine.model
    sampler = Sampler(model, SamplingOptions(temperature=0), grammar.gbnf, grammar.triggers)
    try:
        letter = model.tokenize("x", add_special=False)[-1]
        free = " to=self<|message|>Hmm.<|eom|><|start|>assistant to=user<|message|>Hi"
        for token in model.tokenize(free, add_special=False):
            L.llama_sampler_accept(sampler.grammar, token)
        assert sampler._grammar_allows(letter)  # reasoning and text are free
        for token in model.tokenize(
            ".<|eom|><|start|>assistant to=set_alarm<|message|>", add_special=False
        ):
            L.llama_sampler_accept(sampler.grammar, token)
        assert not sampler._grammar_allows(letter)  # the call's XML must come now
        assert sampler._grammar_allows(model.tokenize("<", add_special=False)[-1])
    finally:
        sampler.close()


# Every value one of a few: a call is short, so noise writes several within num_predict.
ALARM = {
    "type": "function",
    "function": {
        "name": "set_alarm",
        "parameters": {
            "type": "object",
            "properties": {
                "day": {"type": "string", "enum": ["mon", "tue", "wed"]},
                "hour": {"enum": [6, 7, 8]},
                "loud": {"type": "boolean"},
            },
            "required": ["day", "hour"],
        },
    },
}
SNOOZE = {
    "type": "function",
    "function": {
        "name": "snooze",
        "parameters": {
            "type": "object",
            "properties": {"minutes": {"enum": [5, 10, 15]}},
            "required": ["minutes"],
        },
    },
}
# Formats whose call syntax holds one call (their grammar has one, parallel or not).
ONE_CALL = {"LLAMA3", "HARMONY"}


def written_calls(text: str, kind: str) -> list[tuple[str, dict[str, Any]]]:
    """The whole calls in ``text``, found without the format's parser: each tool name
    (no argument can hold one), then its arguments, the next JSON object (for Qwen3-Coder's
    XML, the parameter blocks up to ``</function>``); a call cut short ends the list."""
    calls: list[tuple[str, dict[str, Any]]] = []
    for found in re.finditer(r"set_alarm|snooze", text):
        if kind == "qwen3_coder":
            end = text.find("</function>", found.end())
            if end < 0:
                break
            blocks = re.findall(r"<parameter=(\w+)>\n(.*?)\n</parameter>", text[found.end() : end])
            calls.append((found.group(), {key: _value(raw) for key, raw in blocks}))
            continue
        start = text.find("{", found.end())
        try:
            arguments, _ = json.JSONDecoder().raw_decode(text, start)
        except ValueError:
            break
        calls.append((found.group(), arguments))
    return calls


def _value(raw: str) -> Any:
    """A Qwen3-Coder parameter: a JSON value, or a string written as raw text."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw


@pytest.mark.parametrize("family", FAMILIES)
def test_parallel_calls_parse_in_order(engine: Engine, family: str) -> None:
    """``parallel_tool_calls``: the grammar lets noise write call after call; every call
    comes back, in the order written, numbered from 0, and nothing else."""
    found = detect(ChatTemplate(getattr(chat_templates, family)))
    assert found.tools is not None
    grammar = tool_grammar(found.tools, [SNOOZE, ALARM], choice="required", parallel=True)
    assert grammar is not None and not grammar.triggers
    most = 0
    # Seeds until one answer has several calls (a third or so of them do); the checks
    # hold for every answer.
    for seed in range(1, 4 if family in ONE_CALL else 31):
        text, events = sample(engine, found, grammar.gbnf, seed, ["snooze", "set_alarm"])
        done = events[-1]
        assert done.type == "done", (family, events)
        if done.done_reason != "stop":
            continue  # cut short inside a call (these formats differ on what is kept)
        calls = [e for e in events if isinstance(e, ToolCallEvent)]
        assert [(c.name, c.arguments) for c in calls] == written_calls(text, found.tools.kind), (
            family,
            text,
        )
        assert [c.index for c in calls] == list(range(len(calls)))
        assert not [e for e in events if e.type == "text" and e.text.strip()], (family, text)
        most = max(most, len(calls))
        if most >= 2:
            break
    assert most == 1 if family in ONE_CALL else most >= 2, (family, most)


def test_schemas_that_allow_anything_and_huge_bounds() -> None:
    """Claude Code's tools: a property with only a description (JSON Schema's "any
    value", which llama.cpp's converter refuses as "Unrecognized schema") and a
    ``maxLength`` of 524288 (spelt out, a 4 MB grammar). The first becomes any JSON
    value, the bound too large to spell out is dropped; the grammar stays small."""
    tool = {
        "type": "function",
        "function": {
            "name": "run",
            "parameters": {
                "type": "object",
                "properties": {
                    "args": {"description": "anything, as JSON"},
                    "extra": {"type": "object", "additionalProperties": {}},
                    "script": {"type": "string", "maxLength": 524288},
                    "tag": {"type": "string", "maxLength": 8},
                },
                "required": ["args", "script"],
            },
        },
    }
    found = detect(ChatTemplate(chat_templates.HERMES))
    assert found.tools is not None
    grammar = tool_grammar(found.tools, [tool], choice="required", parallel=False)
    assert grammar is not None and len(grammar.gbnf) < 20_000
    rules = dict(line.split(" ::= ", 1) for line in grammar.gbnf.splitlines())
    assert rules["tool0-arguments-tag"].count("char") == 8  # a small bound still holds
    assert "tool0-arguments-script" not in rules  # any string: the string primitive


def test_a_thought_that_never_ends_is_closed_for_the_call(engine: Engine) -> None:
    """Random weights never write </think>: once the thinking budget is spent the close
    is forced, the grammar that waited for it switches on and the call follows
    (prepare.thinking_room sets that budget)."""
    from localserve.engine.thinking_budget import ThinkingLimit
    from localserve.runtime.chat.formats import ThinkingTags

    found = detect(ChatTemplate(chat_templates.HERMES))
    assert found.tools is not None
    grammar = tool_grammar(found.tools, [TOOL], choice="required", parallel=False, after="</think>")
    assert grammar is not None

    def parser(job_id: str) -> Any:
        tags = ThinkingTags("<think>", "</think>")
        return AnswerParser(
            job_id, tools=found.tools, tool_names=["set_alarm"], thinking=tags, in_thinking=True
        )

    prompt = engine.model.tokenize("Wake me up on Tuesday at seven.", add_special=True)
    options = SamplingOptions(temperature=1.0, seed=3, num_predict=300)
    job = Job(
        "think",
        prompt,
        options,
        grammar.gbnf,
        grammar_triggers=grammar.triggers,
        thinking=ThinkingLimit(
            40,
            "<think>",
            "</think>",
            tuple(engine.model.tokenize("</think>", add_special=False)),
            opened=True,
        ),
        parser_factory=parser,
    )
    engine.submit(job)
    events: list[Event] = []
    while engine.has_work():
        events.extend(engine.step())
    kinds = [e.type for e in events]
    assert kinds[0] == "thinking" and kinds[-1] == "done", events
    calls = [e for e in events if isinstance(e, ToolCallEvent)]
    assert len(calls) == 1 and calls[0].arguments["day"] in ("mon", "tue", "wed"), events
    assert job.generated < 300
