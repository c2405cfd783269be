"""Cache reuse past a changed span (``cache_reuse``, llama-server's --cache-reuse) on real
llama.cpp, with the tiny F32 model: off, a prompt whose header changed is read as a
cold engine reads it (identical tokens); on, the cached cells after the span are moved
to their new positions, and the next-token distribution stays close to a cold read's
(an approximation: they were computed after the old span)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from localserve.engine.engine import Engine
from localserve.engine.job import Job
from localserve.engine.llama import Model
from localserve.runtime.options import LoadOptions, SamplingOptions
from localserve.runtime.protocol import DoneEvent, ErrorEvent, Event, TextEvent
from tests.support.tiny_gguf import write_tiny_gguf

GREEDY = SamplingOptions(temperature=0.0, num_predict=12)
BODY = "the quick brown fox jumps over the lazy dog and then it sat on a chair " * 25
OLD = "Time: 10:00:01 on the first day. "
NEW = "Time: 10:07:45, a later day. "


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Model]:
    path = write_tiny_gguf(tmp_path_factory.mktemp("reuse") / "tiny.gguf", n_ctx_train=4096)
    loaded = Model([path], n_gpu_layers=0)
    yield loaded
    loaded.close()


def options(reuse: int, **more: object) -> LoadOptions:
    return LoadOptions(num_ctx=2048, num_parallel=2, cache_reuse=reuse, **more)  # type: ignore[arg-type]


def run(engine: Engine) -> tuple[dict[str, str], dict[str, DoneEvent], np.ndarray]:
    """Step until idle: texts, done events, and the log-probabilities over the whole
    vocabulary of the first token of the first job that asked for them."""
    texts: dict[str, str] = {}
    done: dict[str, DoneEvent] = {}
    first: list[np.ndarray] = []
    sample = engine._on_token

    def spy(job: Job, token: int, events: list[Event], row: int) -> None:
        if job.logprobs >= 0 and not first:
            logits = engine.context.logits(row).astype(np.float64)
            first.append(logits - np.logaddexp.reduce(logits))
        sample(job, token, events, row)

    engine._on_token = spy  # type: ignore[method-assign]
    for _ in range(10_000):
        if not engine.has_work():
            break
        for event in engine.step():
            assert not isinstance(event, ErrorEvent), event
            if isinstance(event, TextEvent):
                texts[event.id] = texts.get(event.id, "") + event.text
            elif isinstance(event, DoneEvent):
                done[event.id] = event
    assert not engine.has_work()
    return texts, done, first[0] if first else np.zeros(0)


def submit(engine: Engine, job_id: str, tokens: list[int], logprobs: bool = False) -> None:
    job = Job(job_id, tokens, GREEDY)
    job.logprobs = 1 if logprobs else -1
    engine.submit(job)


def second_turn(
    engine: Engine, first: list[int], second: list[int], logprobs: bool = False
) -> tuple[dict[str, str], dict[str, DoneEvent], np.ndarray]:
    """``first`` read and answered as job "a", then ``second`` as job "b": what ``run``
    gives for the second."""
    submit(engine, "a", first)
    run(engine)
    submit(engine, "b", second, logprobs=logprobs)
    return run(engine)


def turns(model: Model) -> tuple[list[int], list[int]]:
    """A prompt, and the next one: its header changed, the rest the same and more."""
    first = model.tokenize(OLD + BODY, add_special=True)
    second = model.tokenize(NEW + BODY + " and what then?", add_special=True)
    return first, second


def cold(model: Model, tokens: list[int]) -> tuple[str, np.ndarray]:
    engine = Engine(model, options(0), n_threads=2)
    try:
        submit(engine, "cold", tokens, logprobs=True)
        texts, _, first = run(engine)
        return texts["cold"], first
    finally:
        engine.close()


def divergence(cold: np.ndarray, warm: np.ndarray) -> float:
    """KL(cold || warm) of two next-token distributions (log-probabilities), in nats."""
    return float(np.sum(np.exp(cold) * (cold - warm)))


def test_off_a_changed_header_is_read_as_cold(model: Model) -> None:
    """The setting off (the default): only the prefix before the change is reused, and
    the tokens are exactly a cold engine's."""
    first, second = turns(model)
    engine = Engine(model, options(0), n_threads=2)
    try:
        texts, done, _ = second_turn(engine, first, second)
        shared = next(i for i, (x, y) in enumerate(zip(first, second, strict=False)) if x != y)
        assert done["b"].prompt_cached == shared
        assert engine.stats.reuse_shifted == 0
    finally:
        engine.close()
    assert texts["b"] == cold(model, second)[0]


def test_on_the_cells_after_the_header_move(model: Model) -> None:
    """A header of another length in the middle: the body's cells wait in a free
    sequence while the new header is read, then join at their new positions; only the
    header and the new end are read. The next token's distribution stays within a
    small KL of a cold read's."""
    first, second = turns(model)
    engine = Engine(model, options(64), n_threads=2)
    try:
        texts, done, warm = second_turn(engine, first, second, logprobs=True)
        assert engine.stats.reuse_shifted > len(second) - 40
        assert done["b"].prompt_cached == engine.stats.prefix_tokens + engine.stats.reuse_shifted
        assert engine.stats.prompt_tokens < len(first) + 40  # the first read, and ~30 more
        assert all(slot.job is None for slot in engine.slots)  # the scratch is free again
        # The cache now holds the new prompt: asking again reads one token.
        submit(engine, "c", second)
        again, done_again, _ = run(engine)
        assert done_again["c"].prompt_cached == len(second) - 1
        assert again["c"] == texts["b"]
    finally:
        engine.close()
    cold_text, cold_first = cold(model, second)
    kl = divergence(cold_first, warm)
    assert kl < 0.001, kl
    assert int(np.argmax(cold_first)) == int(np.argmax(warm))
    assert texts["b"] != "" and cold_text != ""


def test_on_a_removed_span_moves_in_place(model: Model) -> None:
    """A span removed (a message dropped from the history): the cells after it move
    back in the same sequence, no free sequence needed, even with a single slot."""
    first = model.tokenize(OLD + "some words that go away now. " + BODY, add_special=True)
    second = model.tokenize(OLD + BODY + " then?", add_special=True)
    engine = Engine(model, LoadOptions(num_ctx=2048, num_parallel=1, cache_reuse=32), n_threads=2)
    try:
        _, done, warm = second_turn(engine, first, second, logprobs=True)
        assert done["b"].prompt_cached > len(second) - 10
        assert engine.stats.reuse_shifted > 0
    finally:
        engine.close()
    assert divergence(cold(model, second)[1], warm) < 0.001


def test_without_a_free_sequence_only_the_prefix(model: Model) -> None:
    """One slot, a replaced header: nothing to keep the body in while the header is
    read, so the prompt is read as with the setting off."""
    first, second = turns(model)
    engine = Engine(model, LoadOptions(num_ctx=2048, num_parallel=1, cache_reuse=32), n_threads=2)
    try:
        texts, _, _ = second_turn(engine, first, second)
        assert engine.stats.reuse_shifted == 0
    finally:
        engine.close()
    assert texts["b"] == cold(model, second)[0]


def test_a_run_shorter_than_the_setting_is_not_reused(model: Model) -> None:
    first, second = turns(model)
    engine = Engine(model, options(len(second)), n_threads=2)
    try:
        texts, _, _ = second_turn(engine, first, second)
        assert engine.stats.reuse_shifted == 0
    finally:
        engine.close()
    assert texts["b"] == cold(model, second)[0]


def test_a_parked_sequence_is_reused_past_its_header(model: Model) -> None:
    """The cached sequence was parked meanwhile (another conversation ran): it comes
    back, and its body moves."""
    first, second = turns(model)
    engine = Engine(model, options(64), n_threads=2)
    try:
        submit(engine, "a", first)
        run(engine)
        submit(engine, "other", model.tokenize("one two three " * 30, add_special=True))
        run(engine)
        assert engine.stats.parked >= 1
        submit(engine, "b", second)
        _, done, _ = run(engine)
        assert engine.stats.restored == 1
        assert engine.stats.reuse_shifted > len(second) - 40
        assert done["b"].prompt_cached > len(second) - 40
    finally:
        engine.close()


def test_a_cancel_while_the_body_waits_frees_its_sequence(model: Model) -> None:
    first, second = turns(model)
    engine = Engine(model, options(64, num_batch=8), n_threads=2)
    try:
        submit(engine, "a", first)
        run(engine)
        submit(engine, "b", second)
        engine.step()  # admitted: the body waits, the header is read 8 tokens a step
        assert engine.busy_slots() == 2
        engine.cancel("b")
        run(engine)
        assert engine.busy_slots() == 0
        assert all(engine.context.seq_pos_max(s.index) == len(s.tokens) - 1 for s in engine.slots)
    finally:
        engine.close()


@pytest.fixture(scope="module")
def windowed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Model]:
    """A tiny F32 Gemma 3: five layers in six attend over 32 positions, in llama.cpp's
    window-sized cache (which llama.cpp itself says cannot shift)."""
    path = write_tiny_gguf(
        tmp_path_factory.mktemp("reuse-swa") / "swa.gguf",
        n_layer=6,
        sliding_window=32,
        n_ctx_train=4096,
    )
    loaded = Model([path], n_gpu_layers=0)
    yield loaded
    loaded.close()


@pytest.mark.parametrize("answer", [4, 80])
def test_a_sliding_window_moves_with_the_run(windowed: Model, answer: int) -> None:
    """llama-server turns cache reuse off for such a cache ("cache_reuse is not
    supported by this context"). The engine moves it anyway: the global layers' cells
    of the run, and the window at the run's end (what follows attends to no earlier
    sliding-window cell): the sequence's own cells after a short answer, the
    checkpoint at the prompt's end after one longer than the window (80 tokens, whose
    cells overwrote it). The tokens before the change are read again."""
    first, second = turns(windowed)
    kv = {"kv_cache_type": "f32"}  # (an f16 cache sums in f16: noise to compare against)
    engine = Engine(windowed, options(64, **kv), n_threads=2)
    try:
        assert not engine.context.can_shift and engine.cells.can_move
        engine.submit(Job("a", first, SamplingOptions(temperature=0.0, num_predict=answer)))
        run(engine)
        submit(engine, "b", second, logprobs=True)
        _, done, warm = run(engine)
        assert engine.stats.reuse_shifted > len(second) - 60
        assert done["b"].prompt_cached == engine.stats.reuse_shifted
        [held] = [s for s in engine.slots if s.tokens]
        # Its window cells run from the window before its end (and no gap: none of the
        # header's cells, read at the start, is left behind the moved run).
        assert 0 < engine.context.seq_pos_min(held.index) <= len(held.tokens) - 32
    finally:
        engine.close()
    fresh = Engine(windowed, options(0, **kv), n_threads=2)
    try:
        submit(fresh, "b", second, logprobs=True)
        _, _, cold_first = run(fresh)
    finally:
        fresh.close()
    assert divergence(cold_first, warm) < 0.001


def test_not_where_cells_cannot_move(windowed: Model, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where cells cannot move (recurrent state, M-RoPE: here a model said to be one),
    the setting does nothing, and the output is a cold read's."""
    first, second = turns(windowed)
    kv = {"kv_cache_type": "f32"}
    monkeypatch.setattr(windowed, "rope_shifts", False)
    engine = Engine(windowed, options(32, **kv), n_threads=2)
    try:
        assert not engine.cells.can_move
        texts, _, _ = second_turn(engine, first, second)
        assert engine.stats.reuse_shifted == 0
    finally:
        engine.close()
    fresh = Engine(windowed, options(0, **kv), n_threads=2)
    try:
        submit(fresh, "b", second)
        expected, _, _ = run(fresh)
    finally:
        fresh.close()
    assert texts["b"] == expected["b"]
