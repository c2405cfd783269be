"""``tool_choice: required`` on a random-weight model, for every call format: the
grammar built from the tool's schema (engine/tool_grammar.py) must make even
noise a call that the format's parser reads back with arguments matching the schema.
Real llama.cpp sampling on the tiny model, in-process (the engine, no runner)."""

from __future__ import annotations

from collections.abc import Iterator
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


def answer(engine: Engine, found: ChatFormat, choice: str, seed: int) -> list[Event]:
    assert found.tools is not None
    grammar = tool_grammar(found.tools, [OTHER, TOOL], choice=choice, parallel=False)
    assert grammar is not None and not grammar.triggers

    def parser(job_id: str) -> Any:
        if found.harmony:
            return HarmonyParser(job_id, tool_names=["noop", "set_alarm"])
        return AnswerParser(job_id, tools=found.tools, tool_names=["noop", "set_alarm"])

    prompt = engine.model.tokenize("Wake me up on Tuesday at seven.", add_special=True)
    options = SamplingOptions(temperature=1.0, seed=seed, num_predict=300)
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
