"""``tool_choice: required`` on a random-weight model, for every call format: the
grammar built from the tool's schema (engine/tool_grammar.py) must make even
noise a call that the format's parser reads back with arguments matching the schema.
Real llama.cpp sampling on the tiny model, in-process (the engine, no runner)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localserve.engine.engine import Engine
from localserve.engine.job import Job
from localserve.engine.llama import Model
from localserve.engine.tool_grammar import enforced_kinds, tool_grammar
from localserve.runtime.chat.formats import ChatFormat, detect
from localserve.runtime.chat.parse import AnswerParser, HarmonyParser
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

    def parser(job_id: str) -> Any:
        if found.harmony:
            return HarmonyParser(job_id, tool_names=["noop", "set_alarm"])
        return AnswerParser(job_id, tools=found.tools, tool_names=["noop", "set_alarm"])

    prompt = engine.model.tokenize("Wake me up on Tuesday at seven.", add_special=True)
    options = SamplingOptions(temperature=1.0, seed=seed, num_predict=num_predict)
    engine.submit(Job(f"j{seed}", prompt, options, grammar.gbnf, parser_factory=parser))
    events: list[Event] = []
    while engine.has_work():
        events.extend(engine.step())
    return events


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


# Real templates (tests/support/templates_detect/), one per syntax learnt from a render
# or read from instructions.
REAL = [
    "GLM-4.7-Flash",  # tagged, nothing between the name and the first argument
    "deepseek-ai-DeepSeek-V3.2",  # tagged, string="true|false" per value
    "moonshotai-Kimi-K2",  # tagged, JSON arguments, a call number in the markers
    "upstage-Solar-Open-100B",  # tagged, a call id before the name
    "MiniMax-M2",  # tagged, a section around the calls
    "Apertus-8B-Instruct",  # JSON, the name as the key
    "CohereForAI-c4ai-command-r7b-12-2024-tool_use",  # JSON array with ids
    "GigaChat3.1-10B-A1.8B",  # JSON after a tag, one call a turn
    "LFM2.5-8B-A1B",  # python-style calls
    "google-gemma-4-31B-it",  # Gemma 4's own object syntax
    "Mistral-Small-3.2-24B-Instruct-2506",  # [TOOL_CALLS]NAME[CALL_ID]...[ARGS]
    "meetkai-functionary-medium-v3.2",  # the prompt wrote the first ">>>"
]


@pytest.mark.parametrize("name", REAL)
def test_required_call_is_valid_for_real_templates(engine: Engine, name: str) -> None:
    source = (
        Path(chat_templates.__file__).parent / "templates_detect" / f"{name}.jinja"
    ).read_text()
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


def test_a_thought_that_never_ends_is_closed_for_the_call(engine: Engine) -> None:
    """Random weights never write </think>: past the deadline the grammar switches on
    by itself, closes the thought and makes the call (prepare.thinking_room)."""
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
        grammar_deadline=40,
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
