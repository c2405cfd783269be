"""Speculative decoding (n-gram drafts) in the batching loop, on real llama.cpp with the
tiny F32 model (batch-invariant: a token's logits do not depend on what else is in the
batch, so greedy output must be byte-identical with drafts and without)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest

from localserve.engine.engine import Engine
from localserve.engine.grammar import grammar_for
from localserve.engine.job import Job
from localserve.engine.llama import Model
from localserve.runtime.options import LoadOptions, SamplingOptions
from localserve.runtime.protocol import DoneEvent, TextEvent
from tests.support.gates import AlwaysDraft
from tests.support.tiny_gguf import write_tiny_gguf

# Prompts that repeat themselves, so the drafter finds something to copy.
PROMPTS = [
    "one two three four five six seven one two three four five six seven one two three",
    "def add(a, b):\n    return a + b\n\ndef add(a, b):\n    return a",
    "the cat sat on the mat. the cat sat on the mat. the cat sat on the",
    "Lorem ipsum dolor sit amet",
]

LONG = SamplingOptions(temperature=0.0, num_predict=160, ignore_eos=True)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Model]:
    loaded = Model([write_tiny_gguf(tmp_path_factory.mktemp("spec") / "tiny.gguf")])
    yield loaded
    loaded.close()


def engine(model: Model, speculative: str) -> Engine:
    options = LoadOptions(num_ctx=512, num_parallel=4, speculative=speculative)
    built = Engine(model, options, n_threads=2, park_idle=False)
    built.draft_gate = AlwaysDraft()  # drafts on every step, however fast this machine is
    return built


def run(built: Engine, jobs: list[Job]) -> tuple[dict[str, str], dict[str, DoneEvent]]:
    for job in jobs:
        built.submit(job)
    texts: dict[str, str] = {}
    done: dict[str, DoneEvent] = {}
    while built.has_work():
        for event in built.step():
            if isinstance(event, TextEvent):
                texts[event.id] = texts.get(event.id, "") + event.text
            elif isinstance(event, DoneEvent):
                done[event.id] = event
    return texts, done


def jobs(model: Model, options: SamplingOptions, grammar: str | None = None) -> list[Job]:
    return [
        Job(f"p{i}", model.tokenize(text, add_special=True), options, grammar)
        for i, text in enumerate(PROMPTS)
    ]


def compare(
    model: Model, options: SamplingOptions, *, fewer_steps: bool = True, alone: bool = False
) -> DoneEvent:
    """The same jobs with and without drafts: together in one batch, or one at a time
    (a lone stream drafts on shorter matches than one beside others)."""
    plain_engine, spec_engine = engine(model, "off"), engine(model, "ngram")

    def each(built: Engine) -> tuple[dict[str, str], dict[str, DoneEvent]]:
        if not alone:
            return run(built, jobs(model, options))
        texts: dict[str, str] = {}
        done: dict[str, DoneEvent] = {}
        for job in jobs(model, options):
            more_texts, more_done = run(built, [job])
            texts.update(more_texts)
            done.update(more_done)
        return texts, done

    try:
        plain, plain_done = each(plain_engine)
        drafted, drafted_done = each(spec_engine)
        assert drafted == plain
        for key, done in plain_done.items():
            assert drafted_done[key].eval_count == done.eval_count
            assert drafted_done[key].done_reason == done.done_reason
        # Drafts were tried and some kept: the test exercises what it claims to.
        assert spec_engine.stats.draft_tokens > 0
        assert spec_engine.stats.draft_accepted > 0
        assert plain_engine.stats.draft_tokens == 0
        # Rejected drafts left no cells: each slot's cells are exactly its tokens.
        for slot in spec_engine.slots:
            assert spec_engine.context.seq_pos_max(slot.index) == len(slot.tokens) - 1
        # Fewer steps for the same tokens (when the longest answer had drafts kept).
        assert spec_engine.stats.steps <= plain_engine.stats.steps
        if fewer_steps:
            assert spec_engine.stats.steps < plain_engine.stats.steps
        return drafted_done["p0"]
    finally:
        plain_engine.close()
        spec_engine.close()


def test_greedy_output_is_identical_with_drafts(model: Model) -> None:
    compare(model, LONG, fewer_steps=False)


def test_a_lone_stream_takes_fewer_steps(model: Model) -> None:
    plain_engine, spec_engine = engine(model, "off"), engine(model, "ngram")
    try:
        for prompt in PROMPTS[:3]:
            one = [Job("one", model.tokenize(prompt, add_special=True), LONG)]
            plain, _ = run(plain_engine, one)
            one = [Job("one", model.tokenize(prompt, add_special=True), LONG)]
            drafted, done = run(spec_engine, one)
            assert drafted == plain
            assert done["one"].draft_count >= done["one"].draft_accepted
        assert spec_engine.stats.draft_accepted > 0
        assert spec_engine.stats.steps < plain_engine.stats.steps
    finally:
        plain_engine.close()
        spec_engine.close()


def test_stop_strings_and_num_predict_hold_with_drafts(model: Model) -> None:
    compare(model, replace(LONG, num_predict=97), fewer_steps=False, alone=True)
    texts, _ = run(engine(model, "off"), jobs(model, LONG))
    # A stop string taken from the middle of a real answer: it must end there exactly.
    stop = texts["p0"][10:14]
    compare(model, replace(LONG, stop=(stop,)), fewer_steps=False, alone=True)


def test_a_grammar_is_never_broken_by_a_draft(model: Model) -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"enum": ["x y x y x y", "x y"]}, "n": {"type": "integer"}},
        "required": ["a", "n"],
    }
    options = SamplingOptions(temperature=0.0, num_predict=40)
    plain_engine, spec_engine = engine(model, "off"), engine(model, "ngram")
    try:
        plain, _ = run(plain_engine, jobs(model, options, grammar_for(schema)))
        drafted, _ = run(spec_engine, jobs(model, options, grammar_for(schema)))
        assert drafted == plain
        assert all(text.startswith('{"a"') or text.startswith("{ ") for text in drafted.values())
    finally:
        plain_engine.close()
        spec_engine.close()


def test_a_request_can_turn_drafts_off(model: Model) -> None:
    built = engine(model, "ngram")
    try:
        _, done = run(built, jobs(model, replace(LONG, speculative=False)))
        assert built.stats.draft_tokens == 0
        assert all(d.draft_count == 0 for d in done.values())
    finally:
        built.close()


def test_cancel_with_drafts_in_flight(model: Model) -> None:
    built = engine(model, "ngram")
    try:
        for job in jobs(model, replace(LONG, num_predict=400)):
            built.submit(job)
        while built.stats.draft_accepted == 0:
            built.step()
        for job_id in list(built.jobs):
            built.cancel(job_id)
        reasons = {e.id: e.done_reason for e in built.step() if isinstance(e, DoneEvent)}
        assert set(reasons.values()) == {"cancel"} and not built.has_work()
        for slot in built.slots:
            assert built.context.seq_pos_max(slot.index) == len(slot.tokens) - 1
    finally:
        built.close()
