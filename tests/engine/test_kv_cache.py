"""KV cache types and flash attention on real llama.cpp: every type loads and generates
as planned, q8_0's plan matches llama.cpp's on Gemma, refusals from the context and the
runner, parked sequences keep the cache type.

The default tiny model's attention heads are 16 wide, less than the 32-value blocks of
q8_0 and q4_0; the model here has heads 32 wide (n_embd 64, 2 heads, 1 KV head)."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from localserve.config import KV_CACHE_TYPES
from localserve.engine import llama
from localserve.engine.engine import Engine
from localserve.engine.job import Job
from localserve.engine.llama import Context, Model
from localserve.errors import InvalidOptionError
from localserve.plan import Devices, plan
from localserve.runtime.options import LoadOptions, SamplingOptions
from localserve.runtime.protocol import LoadRequest
from localserve.store.gguf import read_gguf
from tests.support.jobs import run_engine as run
from tests.support.tiny_gguf import write_tiny_gguf

MiB = 1 << 20

RAM = 64 << 30

GREEDY = SamplingOptions(temperature=0.0, num_predict=8)

FA_OFF_ERROR = "a q8_0 V cache needs flash attention: set flash_attention to on or auto"


@pytest.fixture(scope="module")
def path32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model whose attention heads are 32 wide: one block of q8_0 or q4_0."""
    folder = tmp_path_factory.mktemp("kv-cache")
    return write_tiny_gguf(folder / "tiny-hd32.gguf", n_embd=64, n_head=2, n_head_kv=1)


@pytest.fixture(scope="module")
def model32(path32: Path) -> Iterator[Model]:
    loaded = Model([path32], n_gpu_layers=0)
    yield loaded
    loaded.close()


def kv_log(caplog: pytest.LogCaptureFixture) -> tuple[float, str]:
    """The KV buffers llama.cpp allocated (MiB) and its "llama_kv_cache: size" lines
    (two for a sliding-window model: the global layers' cache and the window's)."""
    text = "\n".join(record.getMessage() for record in caplog.records)
    sizes = re.findall(r"KV buffer size =\s+([\d.]+) MiB", text)
    lines = [x for x in text.splitlines() if "llama_kv_cache: size" in x]
    assert lines, text
    return sum(float(s) for s in sizes), "\n".join(lines)


@pytest.mark.parametrize("kv_type", KV_CACHE_TYPES)
def test_every_kv_type_loads_plans_and_generates(
    kv_type: str, model32: Model, path32: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="localserve.llama")
    options = LoadOptions(num_ctx=2048, num_parallel=2, kv_cache_type=kv_type)
    engine = Engine(model32, options, n_threads=2)
    try:
        allocated, line = kv_log(caplog)
        engine.submit(Job("a", model32.tokenize("Hello world, this is", add_special=True), GREEDY))
        engine.submit(Job("b", model32.tokenize("Once upon a time", add_special=True), GREEDY))
        texts, done = run(engine)
    finally:
        engine.close()
    assert f"K ({kv_type})" in line and f"V ({kv_type})" in line, line
    assert [done[j].eval_count for j in "ab"] == [8, 8]
    assert all(texts[j] for j in "ab")
    planned = plan(
        read_gguf(path32),
        num_ctx=2048,
        num_parallel=2,
        kv_type=kv_type,
        devices=Devices.cpu_only(RAM),
    )
    assert planned.kv_type == kv_type
    assert allocated == pytest.approx(planned.kv_bytes / MiB, abs=0.01)


def test_q8_0_plan_matches_llama_cpp_on_gemma(
    gemma_gguf_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """18 layers of one 256-wide KV head: 9,792 bytes a cell in q8_0, 18,432 in f16."""
    caplog.set_level(logging.INFO, logger="localserve.llama")
    model = Model([gemma_gguf_path], n_gpu_layers=0)
    try:
        for kv_type in ("q8_0", "q4_0"):
            caplog.clear()
            options = LoadOptions(
                num_ctx=1024, num_parallel=2, num_ubatch=32, kv_cache_type=kv_type
            )
            Context(model, options, n_threads=1).close()
            allocated, line = kv_log(caplog)
            assert f"K ({kv_type})" in line
            planned = plan(
                read_gguf(gemma_gguf_path),
                num_ctx=1024,
                num_parallel=2,
                num_ubatch=32,
                kv_type=kv_type,
                devices=Devices.cpu_only(RAM),
            )
            assert allocated == pytest.approx(planned.kv_bytes / MiB, abs=0.01)
    finally:
        model.close()


def test_the_runner_refuses_them_as_an_option_error(tiny_gguf_path: Path) -> None:
    """Found by the runner's plan, before llama.cpp loads anything: a 400, not a 500."""
    from localserve.scheduler.runner_client import RunnerClient

    async def body() -> None:
        options = LoadOptions(num_ctx=256, num_parallel=1, num_thread=2, kv_cache_type="q4_0")
        await RunnerClient.start(LoadRequest((tiny_gguf_path,), options))

    with pytest.raises(InvalidOptionError) as caught:
        asyncio.run(asyncio.wait_for(body(), 60))
    assert str(caught.value).startswith(
        "the model failed to load: a q4_0 KV cache stores blocks of 32 values"
    )


def test_context_refuses_a_quantized_cache_without_flash_attention(model32: Model) -> None:
    """Even options that skipped validation never reach llama.cpp."""
    options = LoadOptions(num_ctx=256, num_parallel=1, kv_cache_type="q8_0", flash_attention="off")
    with pytest.raises(InvalidOptionError, match=re.escape(FA_OFF_ERROR)):
        Context(model32, options, n_threads=1)


def test_auto_on_a_gpu_without_flash_attention_is_refused(
    model32: Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    """llama.cpp turns "auto" into "on" for a quantized V cache without asking the
    backend; where the GPU has no flash-attention kernel, say so instead of running
    the attention on the CPU behind the user's back."""
    assert llama.flash_attention_supported(model32)  # the CPU backend always has it
    asked: list[Model] = []

    def unsupported(model: Model, *, n_threads: int = 1) -> bool:
        asked.append(model)
        return False

    monkeypatch.setattr(llama, "_on_gpu", lambda model: True)
    monkeypatch.setattr(llama, "flash_attention_supported", unsupported)
    quantized = LoadOptions(num_ctx=256, num_parallel=1, kv_cache_type="q8_0")
    with pytest.raises(InvalidOptionError) as caught:
        Context(model32, quantized, n_threads=1)
    assert "a q8_0 V cache needs flash attention, which this llama.cpp build cannot run" in str(
        caught.value
    )
    assert caught.value.hint is not None and "flash_attention on" in caught.value.hint
    assert asked == [model32]
    # "on" is the user's explicit choice, and an f16 cache does not need it: no question.
    for options in (
        LoadOptions(num_ctx=256, num_parallel=1, kv_cache_type="q8_0", flash_attention="on"),
        LoadOptions(num_ctx=256, num_parallel=1),
    ):
        Context(model32, options, n_threads=1).close()
    assert asked == [model32]


def parked_run(model: Model, kv_type: str) -> tuple[int, int, str, str]:
    """Park a conversation, continue it from the parked cells; (parked bytes, parked
    tokens, the continuation's text, a fresh engine's text for the same prompt)."""
    options = LoadOptions(num_ctx=256, num_parallel=4, kv_cache_type=kv_type)
    first = model.tokenize("alpha beta gamma delta " * 6, add_special=True)
    engine = Engine(model, options, n_threads=2)
    try:
        engine.submit(Job("a", first, GREEDY))
        run(engine)
        [held] = [s for s in engine.slots if s.tokens]
        conversation = list(held.tokens)
        engine.submit(Job("b", model.tokenize("one two three four " * 4, add_special=True), GREEDY))
        engine.step()  # admission parks "a"
        assert engine.stats.parked == 1 and len(engine.cells.parked) == 1
        parked_bytes, parked_tokens = engine.cells.parked_bytes, engine.cells.parked_tokens
        run(engine)
        follow_up = [*conversation, *model.tokenize(" and then", add_special=False)]
        engine.submit(Job("c", follow_up, GREEDY))
        texts, done = run(engine)
        assert engine.stats.restored == 1
        assert done["c"].prompt_cached == len(conversation)
    finally:
        engine.close()
    fresh = Engine(model, options, n_threads=2)
    try:
        fresh.submit(Job("c", follow_up, GREEDY))
        fresh_texts, fresh_done = run(fresh)
        assert fresh_done["c"].prompt_cached == 0
    finally:
        fresh.close()
    return parked_bytes, parked_tokens, texts["c"], fresh_texts["c"]


def test_parked_sequences_keep_the_cache_type(model32: Model) -> None:
    """A parked q8_0 sequence is stored as q8_0 cells (about 34/64 of f16's bytes)
    and restored as such: the continuation is what a fresh engine generates."""
    f16_bytes, f16_tokens, f16_text, f16_fresh = parked_run(model32, "f16")
    q8_bytes, q8_tokens, q8_text, q8_fresh = parked_run(model32, "q8_0")
    assert f16_tokens == q8_tokens > 0
    assert f16_text == f16_fresh
    assert q8_text == q8_fresh
    # Per cell: K and V of 2 layers x 32 values; f16 256 bytes, q8_0 136 (+ metadata).
    assert q8_bytes < f16_bytes * 0.6
    assert q8_bytes >= q8_tokens * 2 * 2 * 34
