"""Sliding-window models at their real size (llama.cpp's iSWA cache) on real llama.cpp.

The model here is a tiny Gemma 3 in F32 (batch-invariant, so greedy output can be
compared exactly): five layers in six attend over a window of 32 positions, and
llama.cpp keeps for them a cache of the window's cells only, overwriting what falls
out of a sequence's window. Going on from a cached prefix then needs the cells the
next position attends to: the engine checks the window, loads a checkpoint of it, or
reads the prompt again, and in every case generates what a cold engine generates.
The plan's KV figure is what llama.cpp allocates, for this model and for Gemma 3 270M.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from localserve.engine import cells as cells_module
from localserve.engine.engine import Engine
from localserve.engine.job import Job
from localserve.engine.llama import Context, Model
from localserve.plan import Devices, plan
from localserve.runtime.options import LoadOptions, SamplingOptions
from localserve.runtime.protocol import ErrorEvent, LogprobsEvent
from tests.support.jobs import run_engine as run
from tests.support.tiny_gguf import write_tiny_gguf

MiB = 1 << 20
RAM = 64 << 30
WINDOW = 32
GREEDY = SamplingOptions(temperature=0.0, num_predict=12)
# 128-token prompt chunks: the window's cache is pad256(32 x 2 + 128) = 256 cells, so
# a prompt of several hundred tokens wraps it, and checkpoints fall every chunk.
OPTIONS = LoadOptions(
    num_ctx=2048, num_parallel=2, num_batch=128, num_ubatch=128, kv_cache_type="f32"
)


@pytest.fixture(scope="module")
def swa_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(
        tmp_path_factory.mktemp("swa") / "tiny-gemma3.gguf",
        n_layer=6,
        sliding_window=WINDOW,
        n_ctx_train=8192,
    )


@pytest.fixture(scope="module")
def model(swa_path: Path) -> Iterator[Model]:
    loaded = Model([swa_path], n_gpu_layers=0)
    yield loaded
    loaded.close()


@pytest.fixture
def step64(monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint after every 128-token chunk of a prompt."""
    monkeypatch.setattr(cells_module, "CHECKPOINT_STEP", 64)


def cold(model: Model, tokens: list[int], options: LoadOptions = OPTIONS) -> str:
    """What a fresh engine generates for ``tokens``."""
    engine = Engine(model, options, n_threads=2)
    try:
        engine.submit(Job("cold", tokens, GREEDY))
        texts, done = run(engine)
        assert done["cold"].prompt_cached == 0
        return texts["cold"]
    finally:
        engine.close()


def words(model: Model, text: str, *, first: bool = False) -> list[int]:
    return model.tokenize(text, add_special=first)


LONG = "the quick brown fox jumps over the lazy dog and then " * 30


def test_the_plan_is_what_llama_cpp_allocates(
    swa_path: Path, gemma_gguf_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The KV buffers llama.cpp logs (the global layers' cache and the window's) against
    the plan, with and without swa_full, and the window's size as the context reads it."""
    caplog.set_level(logging.INFO, logger="localserve.llama")
    cases = [
        (swa_path, LoadOptions(num_ctx=512, num_parallel=2)),
        (swa_path, LoadOptions(num_ctx=512, num_parallel=2, swa_full=True)),
        (gemma_gguf_path, LoadOptions(num_ctx=4096, num_parallel=4, num_ubatch=64)),
        (gemma_gguf_path, LoadOptions(num_ctx=1024, num_parallel=2, swa_full=True)),
    ]
    from localserve.store.gguf import read_gguf

    found = []
    for path, options in cases:
        model = Model([path], n_gpu_layers=0)
        try:
            caplog.clear()
            context = Context(model, options, n_threads=1)
            swa_cells = context.shape.swa_cells
            context.close()
        finally:
            model.close()
        text = "\n".join(r.getMessage() for r in caplog.records)
        buffers = [float(s) for s in re.findall(r"KV buffer size =\s+([\d.]+) MiB", text)]
        allocated = sum(buffers)
        planned = plan(
            read_gguf(path),
            num_ctx=options.num_ctx,
            num_parallel=options.num_parallel,
            num_ubatch=options.num_ubatch,
            devices=Devices.cpu_only(RAM),
            swa_full=options.swa_full,
        )
        # (each buffer's MiB is logged to two decimals)
        margin = 0.005 * len(buffers) + 1e-9
        assert allocated == pytest.approx(planned.kv_bytes / MiB, abs=margin), (path, options)
        assert swa_cells == planned.swa_cells
        cells = options.num_ctx * options.num_parallel
        assert (swa_cells == cells) == options.swa_full
        found.append((swa_cells, planned.kv_bytes))
    # Gemma 3 270M at 4 x 4096 (micro-batches of 64): 48 MiB for the 3 global layers,
    # 33.75 MiB for the 15 sliding ones at 2304 cells (512 x 4 + 64, padded), where a
    # full-size window cache takes 240 MiB.
    assert found[2] == (2304, (3 * 16384 + 15 * 2304) * 1024)


def test_a_conversation_goes_on_past_its_window(model: Model) -> None:
    """Turn 2 continues turn 1 (prompt and answer) long after the window's cache
    wrapped: the cells it attends to are there, nothing is read again, the output is
    a cold engine's."""
    engine = Engine(model, OPTIONS, n_threads=2)
    try:
        first = words(model, LONG, first=True)
        engine.submit(Job("a", first, GREEDY))
        run(engine)
        [held] = [s for s in engine.slots if s.tokens]
        assert engine.context.seq_pos_min(held.index) > WINDOW  # the window's cache wrapped
        conversation = list(held.tokens)
        follow_up = conversation + words(model, " yes and no")
        engine.submit(Job("b", follow_up, GREEDY))
        texts, done = run(engine)
        assert done["b"].prompt_cached == len(conversation)
    finally:
        engine.close()
    assert texts["b"] == cold(model, follow_up)


def test_a_shorter_prefix_goes_on_from_a_checkpoint(model: Model, step64: None) -> None:
    """A prompt that leaves the cached one 300 tokens in: its window there was
    overwritten long ago, so the engine loads the checkpoint taken at 256 and reads
    from there."""
    engine = Engine(model, OPTIONS, n_threads=2)
    try:
        first = words(model, LONG, first=True)
        engine.submit(Job("a", first, GREEDY))
        run(engine)
        [held] = [s for s in engine.slots if s.tokens]
        assert [cp.n_tokens for cp in held.checkpoints] == [
            *range(128, len(first), 128),
            len(first),
        ]
        assert engine.context.seq_pos_min(held.index) > 300
        other = first[:300] + words(model, " why not blue")
        engine.submit(Job("b", other, GREEDY))
        texts, done = run(engine)
        assert done["b"].prompt_cached == 256
        assert engine.stats.checkpoint_restores == 1
        # The sequence the prompt left was parked whole, with its checkpoints.
        [parked] = engine.cells.parked.values()
        assert len(parked.checkpoints) == len(held.checkpoints) or parked.checkpoints
    finally:
        engine.close()
    assert texts["b"] == cold(model, other)


def test_without_a_checkpoint_the_prompt_is_read_again(
    model: Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No checkpoint before the point where the prompts part, and the window there is
    gone: nothing cached can be used (a stale window would change the output)."""
    monkeypatch.setattr(cells_module, "CHECKPOINT_STEP", 1 << 20)  # the end's only
    engine = Engine(model, OPTIONS, n_threads=2)
    try:
        first = words(model, LONG, first=True)
        engine.submit(Job("a", first, GREEDY))
        run(engine)
        other = first[:300] + words(model, " why not blue")
        engine.submit(Job("b", other, GREEDY))
        texts, done = run(engine)
        assert done["b"].prompt_cached == 0
        assert engine.stats.checkpoint_restores == 0
    finally:
        engine.close()
    assert texts["b"] == cold(model, other)


def test_a_parked_conversation_comes_back_with_its_window(model: Model, step64: None) -> None:
    """Parking copies the global layers' cells and the window's; a job that continues
    the conversation gets them back, and one that leaves it earlier gets its checkpoint."""
    engine = Engine(model, OPTIONS, n_threads=2)
    try:
        first = words(model, LONG, first=True)
        engine.submit(Job("a", first, GREEDY))
        run(engine)
        [held] = [s for s in engine.slots if s.tokens]
        conversation = list(held.tokens)
        engine.submit(Job("b", words(model, "one two three four " * 20, first=True), GREEDY))
        run(engine)  # "a" parked
        assert engine.stats.parked >= 1
        follow_up = conversation + words(model, " and so")
        engine.submit(Job("c", follow_up, GREEDY))
        texts, done = run(engine)
        assert engine.stats.restored == 1
        assert done["c"].prompt_cached == len(conversation)
        earlier = first[:200] + words(model, " red green")
        engine.submit(Job("d", earlier, GREEDY))
        more, done = run(engine)
        assert done["d"].prompt_cached == 128
    finally:
        engine.close()
    assert texts["c"] == cold(model, follow_up)
    assert more["d"] == cold(model, earlier)


def first_logprobs(engine: Engine, tokens: list[int], job_id: str) -> dict[str, float]:
    """Run ``tokens`` for one token: the log-probabilities of its 20 likeliest."""
    job = Job(job_id, tokens, SamplingOptions(temperature=0.0, num_predict=1))
    job.logprobs = 20
    engine.submit(job)
    found: dict[str, float] = {}
    while engine.has_work():
        for event in engine.step():
            if isinstance(event, LogprobsEvent) and event.id == job_id and not found:
                found = {t["token"]: t["logprob"] for t in event.entries[0]["top_logprobs"]}
    return found


def divergence(a: dict[str, float], b: dict[str, float]) -> float:
    """How far two first-token distributions are apart (their top 20 must agree)."""
    if set(a) != set(b):
        return math.inf
    return max(abs(a[k] - b[k]) for k in a)


def cold_logprobs(model: Model, tokens: list[int]) -> dict[str, float]:
    engine = Engine(model, OPTIONS, n_threads=2)
    try:
        return first_logprobs(engine, tokens, "cold")
    finally:
        engine.close()


def test_a_stale_window_would_show(model: Model, monkeypatch: pytest.MonkeyPatch) -> None:
    """The control for the comparisons below: going on 300 tokens into a sequence whose
    window there was overwritten, as if the cells were still right, moves the first
    token's log-probabilities by more than 0.01 (a correct read: 0)."""
    engine = Engine(model, OPTIONS, n_threads=2)
    try:
        first = words(model, LONG, first=True)
        run_one(engine, first)
        other = first[:300] + words(model, " why not blue")
        monkeypatch.setattr(engine.cells, "_window_holds", lambda n, pos_min: True)
        stale = first_logprobs(engine, other, "b")
        assert engine.stats.prefix_tokens == 300
    finally:
        engine.close()
    assert divergence(stale, cold_logprobs(model, other)) > 0.01


def run_one(engine: Engine, tokens: list[int]) -> None:
    engine.submit(Job("a", tokens, GREEDY))
    run(engine)


def test_a_prefix_is_copied_from_a_busy_sequence(model: Model) -> None:
    """A prompt that extends one still generating: its cells come from the busy
    sequence (seq_cp) and its window from that sequence's checkpoint at the prompt's
    end, since the busy one's own window moved on. (The two share batches, which moves
    logits in their last bits: compared by log-probabilities, not tokens.)"""
    options = SamplingOptions(temperature=0.0, num_predict=400, ignore_eos=True)
    engine = Engine(model, OPTIONS, n_threads=2)
    try:
        first = words(model, LONG, first=True)
        engine.submit(Job("a", first, options))
        while engine.stats.generated_tokens < 300:
            engine.step()
        busy = engine.slots[engine.jobs["a"].slot]
        assert engine.context.seq_pos_min(busy.index) > len(first)
        other = first + words(model, " blue sky")
        warm = first_logprobs(engine, other, "b")
        assert engine.stats.checkpoint_restores == 1
        assert engine.stats.prefix_tokens == len(first)
    finally:
        engine.close()
    assert divergence(warm, cold_logprobs(model, other)) < 1e-3


def test_answers_to_one_prompt_share_its_window(model: Model) -> None:
    """OpenAI's n: the second answer copies the first's prompt cells, the window's
    included (a private copy: llama.cpp never overwrites a cell two sequences hold, so
    shared windows would fill its cache)."""
    engine = Engine(model, OPTIONS, n_threads=2)
    try:
        tokens = words(model, LONG, first=True)
        first = Job("n0", tokens, SamplingOptions(temperature=0.0, num_predict=40))
        engine.submit(first)
        second = Job("n1", tokens, SamplingOptions(temperature=0.0, num_predict=40), parent=first)
        second.logprobs = 20
        engine.submit(second)
        found: dict[str, float] = {}
        failed: list[ErrorEvent] = []
        while engine.has_work():
            for event in engine.step():
                if isinstance(event, LogprobsEvent) and not found:
                    found = {t["token"]: t["logprob"] for t in event.entries[0]["top_logprobs"]}
                if isinstance(event, ErrorEvent):
                    failed.append(event)
        assert not failed and engine.stats.kv_full_retries == 0
        assert engine.stats.prefix_tokens == len(tokens) - 1
    finally:
        engine.close()
    assert divergence(found, cold_logprobs(model, tokens)) < 1e-3


def test_swa_full_keeps_every_prefix(model: Model) -> None:
    """With swa_full the window's layers are as long as the pool: no checkpoints are
    taken, and the same outputs come out."""
    options = LoadOptions(num_ctx=2048, num_parallel=2, num_batch=128, swa_full=True)
    engine = Engine(model, options, n_threads=2)
    try:
        assert engine.context.shape.swa_cells == 4096 and not engine.cells.windowed
        first = words(model, LONG, first=True)
        engine.submit(Job("a", first, GREEDY))
        run(engine)
        other = first[:300] + words(model, " why not blue")
        engine.submit(Job("b", other, GREEDY))
        texts, done = run(engine)
        assert engine.stats.checkpoints == 0
        assert done["b"].prompt_cached == 300
    finally:
        engine.close()
    assert texts["b"] == cold(model, other)
