"""Speculative decoding with a draft model (engine/speculate.py DraftModel), on real
llama.cpp with tiny F32 models: greedy output identical to plain decoding, drafts kept
when the draft model is the target's twin, a draft model with another vocabulary
refused."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from localserve.engine.engine import Engine
from localserve.engine.job import Job
from localserve.engine.llama import Model
from localserve.engine.speculate import DraftModel, DraftRequest, check_vocabularies
from localserve.errors import InvalidOptionError
from localserve.runtime.options import LoadOptions, SamplingOptions
from localserve.runtime.protocol import DoneEvent, TextEvent
from tests.support import tiny_gguf
from tests.support.gates import AlwaysDraft
from tests.support.tiny_gguf import write_tiny_gguf

PROMPTS = [
    "one two three four five six seven one two three",
    "def add(a, b):\n    return a + b\n",
    "the cat sat on the mat.",
    "Lorem ipsum dolor sit amet",
]

LONG = SamplingOptions(temperature=0.0, num_predict=120, ignore_eos=True)


@pytest.fixture(scope="module")
def paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("draft")
    return {
        "target": write_tiny_gguf(folder / "target.gguf"),
        # Other weights, the same vocabulary: a draft model that guesses worse.
        "other": write_tiny_gguf(folder / "other.gguf", seed=7, n_layer=1),
        # Three more tokens at the end: still compatible, as llama.cpp's rule allows.
        "fim": write_tiny_gguf(folder / "fim.gguf", fim=True),
    }


@pytest.fixture(scope="module")
def target(paths: dict[str, Path]) -> Iterator[Model]:
    loaded = Model([paths["target"]])
    yield loaded
    loaded.close()


def make_engine(target: Model, draft: Path | None) -> Engine:
    options = LoadOptions(num_ctx=512, num_parallel=4, speculative="draft" if draft else "off")
    draft_model = None
    if draft is not None:
        # p_min 0: a random-weight model is never sure of anything; every guess counts.
        draft_model = DraftModel(Model([draft]), n_slots=4, num_ctx=512, n_threads=2, p_min=0.0)
    built = Engine(target, options, n_threads=2, park_idle=False, draft_model=draft_model)
    # Draft on every step: the cost gate times steps, and these tests must not depend on
    # how fast this machine runs either model (test_speculative.py tests the gate).
    built.draft_gate = AlwaysDraft()
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


def jobs(target: Model, options: SamplingOptions) -> list[Job]:
    return [
        Job(f"p{i}", target.tokenize(text, add_special=True), options)
        for i, text in enumerate(PROMPTS)
    ]


def compare(target: Model, draft: Path, options: SamplingOptions) -> Engine:
    """Run the prompts with and without the draft model; returns the drafting engine
    (closed) after checking identical output and a clean cache."""
    plain, drafting = make_engine(target, None), make_engine(target, draft)
    try:
        plain_texts, plain_done = run(plain, jobs(target, options))
        texts, done = run(drafting, jobs(target, options))
        assert texts == plain_texts
        for key, event in plain_done.items():
            assert done[key].eval_count == event.eval_count
            assert done[key].done_reason == event.done_reason
        assert drafting.stats.draft_tokens > 0
        assert sum(d.draft_count for d in done.values()) == drafting.stats.draft_tokens
        # Rejected drafts left no cells in the target's cache.
        for slot in drafting.slots:
            assert drafting.context.seq_pos_max(slot.index) == len(slot.tokens) - 1
        return drafting
    finally:
        plain.close()
        drafting.close()


def test_a_twin_draft_model_is_always_right(target: Model, paths: dict[str, Path]) -> None:
    drafting = compare(target, paths["target"], LONG)
    # The same weights guess exactly what the target samples greedily.
    assert drafting.stats.draft_accepted == drafting.stats.draft_tokens
    # Each step kept several tokens: fewer steps than tokens generated.
    assert drafting.stats.steps < drafting.stats.generated_tokens / 2


def test_a_worse_draft_model_changes_nothing_but_speed(
    target: Model, paths: dict[str, Path]
) -> None:
    drafting = compare(target, paths["other"], LONG)
    assert drafting.stats.draft_accepted < drafting.stats.draft_tokens


def test_stop_strings_and_num_predict_hold(target: Model, paths: dict[str, Path]) -> None:
    compare(target, paths["other"], replace(LONG, num_predict=53))
    plain = make_engine(target, None)
    try:
        texts, _ = run(plain, jobs(target, LONG))
    finally:
        plain.close()
    compare(target, paths["target"], replace(LONG, stop=(texts["p1"][12:16],)))


def test_drafts_follow_a_changed_history(paths: dict[str, Path], target: Model) -> None:
    """The draft model's copy of a sequence is cut back to what still matches."""
    draft = DraftModel(Model([paths["target"]]), n_slots=2, num_ctx=256, n_threads=2, p_min=0.0)
    try:
        history = target.tokenize("one two three four", add_special=True)
        first = draft.draft([DraftRequest(0, history, 4)])[0]
        assert len(first) == 4
        # The target kept two of the four, then sampled something else.
        changed = [*history, *first[:2], first[2] + 1]
        again = draft.draft([DraftRequest(0, changed, 3)])[0]
        assert draft.read[0] == [*changed, *again[:-1]]
        assert draft.context.seq_pos_max(0) == len(draft.read[0]) - 1
        # A fresh draft of the same history gives the same guess (no stale cells).
        fresh = DraftModel(Model([paths["target"]]), n_slots=1, num_ctx=256, n_threads=2, p_min=0)
        try:
            assert fresh.draft([DraftRequest(0, changed, 3)])[0] == again
        finally:
            fresh.close()
    finally:
        draft.close()


def test_an_unsure_draft_model_drafts_nothing(paths: dict[str, Path], target: Model) -> None:
    draft = DraftModel(Model([paths["other"]]), n_slots=1, num_ctx=256, n_threads=2, p_min=0.999)
    try:
        history = target.tokenize("one two three", add_special=True)
        assert draft.draft([DraftRequest(0, history, 8)]) == [[]]
    finally:
        draft.close()


def test_another_vocabulary_is_refused(
    target: Model, paths: dict[str, Path], gemma_gguf_path: Path
) -> None:
    fim = Model([paths["fim"]])
    try:
        check_vocabularies(target, fim, target_name="tiny", draft_name="fim")
    finally:
        fim.close()
    gemma = Model([gemma_gguf_path], n_gpu_layers=0)
    try:
        with pytest.raises(InvalidOptionError, match="does not share tiny's vocabulary"):
            check_vocabularies(target, gemma, target_name="tiny", draft_name="gemma")
    finally:
        gemma.close()


def test_the_same_size_with_other_token_texts_is_refused(
    target: Model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same size, same specials, two ordinary pieces swapped: ids mean other text."""
    original = tiny_gguf.tiny_vocab()
    tokens = list(original.tokens)
    first = tokens.index("▁the")
    second = tokens.index("▁of")
    tokens[first], tokens[second] = tokens[second], tokens[first]
    swapped = replace(original, tokens=tuple(tokens))
    monkeypatch.setattr(tiny_gguf, "tiny_vocab", lambda fim=False: swapped)
    other = Model([write_tiny_gguf(tmp_path / "swapped.gguf")])
    try:
        low = min(first, second)
        with pytest.raises(InvalidOptionError, match=f"token {low} is "):
            check_vocabularies(target, other, target_name="tiny", draft_name="swapped")
    finally:
        other.close()
