"""The runner as a real child process, driven through scheduler/runner_client.py."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from localserve.errors import (
    EngineError,
    InvalidOptionError,
    PromptTooLongError,
    RunnerCrashedError,
)
from localserve.runtime.options import LoadOptions
from localserve.runtime.protocol import GenerateJob, LoadRequest, RunnerInfo
from localserve.scheduler.runner_client import RunnerClient
from tests.support.daemon import alive
from tests.support.jobs import collect

T = TypeVar("T")
SMALL = LoadOptions(num_ctx=256, num_parallel=2, num_thread=2)


def run_async(body: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(asyncio.wait_for(body(), 120))  # type: ignore[arg-type]


def test_load_generate_chat_and_stats(tiny_gguf_path: Path) -> None:
    async def body() -> None:
        runner = await RunnerClient.start(LoadRequest((tiny_gguf_path,), SMALL))
        try:
            assert runner.info.num_ctx == 256 and runner.info.has_template is True
            assert runner.info.load_duration > 0
            text, done = await collect(
                runner,
                {"prompt": "Hello", "raw": True, "options": {"temperature": 0, "num_predict": 10}},
            )
            assert done["done_reason"] == "length" and done["eval_count"] == 10 and text
            chat = {
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Hi!"},
                ],
                "options": {"temperature": 0, "num_predict": 5},
            }
            _, done = await collect(runner, chat)
            assert done["prompt_eval_count"] > 5
            stats = await runner.stats()
            assert stats.slots_total == 2 and stats.generated_tokens >= 10
            embedded = await runner.embed(["a", "b"], truncate=True)
            assert len(embedded.embeddings) == 2
        finally:
            await runner.close()
        assert runner.process.returncode == 0
        assert not runner.alive

    run_async(body)


def test_concurrent_streams_and_a_cancelled_one(tiny_gguf_path: Path) -> None:
    async def body() -> None:
        runner = await RunnerClient.start(LoadRequest((tiny_gguf_path,), SMALL))
        try:
            long = {
                "prompt": "Once",
                "raw": True,
                "options": {"temperature": 0, "num_predict": 200},
            }
            stream = runner.generate(GenerateJob.from_wire(long))
            await stream.__anext__()
            await stream.aclose()  # the client went away
            results = await asyncio.gather(
                *(
                    collect(
                        runner,
                        {
                            "prompt": f"Count {i}",
                            "raw": True,
                            "options": {"temperature": 0, "num_predict": 12},
                        },
                    )
                    for i in range(4)
                )
            )
            assert all(done["eval_count"] == 12 for _, done in results)
            stats = await runner.stats()
            assert stats.slots_busy == 0 and stats.waiting == 0
            assert stats.max_jobs_in_step == 2
        finally:
            await runner.close()

    run_async(body)


def test_a_long_embedding_request_is_computed_between_the_streams_steps(
    tiny_gguf_path: Path,
) -> None:
    """Embeddings go a pack at a time between engine steps (engine/pooled.py): a stream
    keeps getting tokens while 300 inputs are embedded, not only after them."""

    async def body() -> None:
        options = LoadOptions(num_ctx=1024, num_parallel=1, num_thread=2)
        runner = await RunnerClient.start(LoadRequest((tiny_gguf_path,), options))
        try:
            long = {
                "prompt": "Once",
                "raw": True,
                "options": {"temperature": 0, "num_predict": 900, "stop": []},
            }
            stream = runner.generate(GenerateJob.from_wire(long))
            await stream.__anext__()
            before = await runner.stats()
            inputs = [f"input {i} " + "hello there general kenobi " * 4 for i in range(300)]
            embedded = await runner.embed(inputs, truncate=True)
            after = await runner.stats()
            await stream.aclose()
            assert len(embedded.embeddings) == 300
            packs = after.pooled_packs - before.pooled_packs
            assert packs >= 10  # 300 inputs of ~20 tokens, at most 128 tokens a pack
            # One step of the stream after each pack (the stream ran all along: 900 tokens).
            assert after.steps - before.steps >= packs - 1
        finally:
            await runner.close()

    run_async(body)


def test_embeddings_in_the_smallest_context(tiny_gguf_path: Path, tiny_reranker_path: Path) -> None:
    """A 16-token context: the pooled contexts hold fewer sequences than that (llama.cpp
    aborted the decode when they held more; found by tests/e2e/test_fuzz.py)."""

    async def body() -> None:
        options = LoadOptions(num_ctx=16, num_parallel=1, num_thread=2)
        for path in (tiny_gguf_path, tiny_reranker_path):
            runner = await RunnerClient.start(LoadRequest((path,), options))
            try:
                embedded = await runner.embed(["word " * 100, "a"], truncate=True)
                assert [len(v) > 0 for v in embedded.embeddings] == [True, True]
                if path == tiny_reranker_path:
                    assert len((await runner.rank("q", ["word " * 100, "a"])).scores) == 2
            finally:
                await runner.close()

    run_async(body)


def test_bad_requests_are_errors_not_crashes(tiny_gguf_path: Path) -> None:
    async def body() -> None:
        runner = await RunnerClient.start(
            LoadRequest((tiny_gguf_path,), LoadOptions(num_ctx=64, num_parallel=1, num_thread=2))
        )
        try:
            with pytest.raises(PromptTooLongError, match="64"):
                await collect(runner, {"prompt": "word " * 200, "raw": True})
            with pytest.raises(InvalidOptionError, match="temperature"):
                await collect(runner, {"prompt": "x", "options": {"temperature": float("nan")}})
            with pytest.raises(InvalidOptionError):
                await collect(runner, {"prompt": "x", "format": "yaml"})
            with pytest.raises(InvalidOptionError, match="role"):
                await collect(runner, {"messages": [{"role": "wizard", "content": "x"}]})
            _, done = await collect(
                runner, {"prompt": "still alive?", "raw": True, "options": {"num_predict": 3}}
            )
            assert done["eval_count"] <= 3
        finally:
            await runner.close()

    run_async(body)


def test_killed_runner_fails_its_streams_at_once(tiny_gguf_path: Path) -> None:
    async def body() -> None:
        # The whole training context and no end-of-generation: the stream is still
        # running when the kill lands.
        runner = await RunnerClient.start(
            LoadRequest((tiny_gguf_path,), LoadOptions(num_ctx=2048, num_parallel=1, num_thread=2))
        )
        options = {"temperature": 0, "num_predict": 100_000, "ignore_eos": True}
        stream = runner.generate(
            GenerateJob.from_wire({"prompt": "Once", "raw": True, "options": options})
        )
        await stream.__anext__()
        os.kill(runner.pid, signal.SIGKILL)
        started = time.monotonic()
        with pytest.raises(RunnerCrashedError, match="SIGKILL"):
            async for _ in stream:
                pass
        assert time.monotonic() - started < 30  # noticed, not waited out by a timeout
        assert runner.process.returncode == -signal.SIGKILL  # reaped: no zombie
        assert not runner.alive
        with pytest.raises(RunnerCrashedError):
            await collect(runner, {"prompt": "x"})

    run_async(body)


def test_unloadable_model_is_a_clear_error(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 64)

    async def body() -> None:
        with pytest.raises(EngineError, match="failed to load"):
            await RunnerClient.start(LoadRequest((bogus,), SMALL))

    run_async(body)


def test_runner_dies_with_its_parent(tiny_gguf_path: Path, tmp_path: Path) -> None:
    """A daemon killed with SIGKILL must not leave its runners holding memory."""
    import subprocess
    import sys

    script = tmp_path / "parent.py"
    script.write_text(
        "import asyncio, sys\n"
        "from pathlib import Path\n"
        "from localserve.scheduler.runner_client import RunnerClient\n"
        "from localserve.runtime.options import LoadOptions\n"
        "from localserve.runtime.protocol import LoadRequest\n"
        "async def main():\n"
        f"    r = await RunnerClient.start(LoadRequest((Path({str(tiny_gguf_path)!r}),), LoadOptions(num_ctx=64, num_parallel=1)))\n"
        "    print(r.pid, flush=True)\n"
        "    await asyncio.sleep(60)\n"
        "asyncio.run(main())\n"
    )
    parent = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[2],
    )
    try:
        assert parent.stdout is not None
        runner_pid = int(parent.stdout.readline())
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if not alive(runner_pid):
                break
            time.sleep(0.05)
        else:
            os.kill(runner_pid, signal.SIGKILL)
            raise AssertionError("the runner outlived its parent")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()


def test_long_chat_drops_oldest_turns_but_keeps_system_and_latest(tiny_gguf_path: Path) -> None:
    async def body() -> None:
        runner = await RunnerClient.start(
            LoadRequest((tiny_gguf_path,), LoadOptions(num_ctx=128, num_parallel=1, num_thread=2))
        )
        try:
            messages = [{"role": "system", "content": "Be brief."}]
            for i in range(12):
                messages.append(
                    {"role": "user", "content": f"question number {i} about many things"}
                )
                messages.append(
                    {"role": "assistant", "content": f"answer number {i} with some words"}
                )
            messages.append({"role": "user", "content": "the latest question"})
            _, done = await collect(runner, {"messages": messages, "options": {"num_predict": 4}})
            assert done["dropped_messages"] >= 2
            assert done["dropped_messages"] % 2 == 0  # whole question/answer pairs
            assert done["prompt_eval_count"] <= 128 - 32  # room kept for the answer
            with pytest.raises(PromptTooLongError, match="latest message"):
                await collect(runner, {"messages": [{"role": "user", "content": "word " * 300}]})
        finally:
            await runner.close()

    run_async(body)


def test_count_is_the_prompt_a_generation_reads(tiny_gguf_path: Path) -> None:
    """The count op renders and tokenizes as a generation does (its prompt_eval_count),
    and counts a chat too long for the context whole instead of dropping turns."""

    async def body() -> None:
        runner = await RunnerClient.start(
            LoadRequest((tiny_gguf_path,), LoadOptions(num_ctx=128, num_parallel=1, num_thread=2))
        )
        try:
            chat = {
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Hi there!"},
                ],
                "options": {"num_predict": 1},
            }
            _, done = await collect(runner, chat)
            counted = await runner.count_tokens(GenerateJob.from_wire(chat))
            assert counted.tokens == done["prompt_eval_count"] > 5
            long = {"messages": [{"role": "user", "content": "word " * 300}]}
            assert (await runner.count_tokens(GenerateJob.from_wire(long))).tokens > 300
            with pytest.raises(InvalidOptionError, match="does not support thinking"):
                await runner.count_tokens(GenerateJob.from_wire({**chat, "think": True}))
            assert (await runner.stats()).prompt_tokens == done["prompt_eval_count"]
        finally:
            await runner.close()

    run_async(body)


def test_context_tokens_round_trip_and_num_predict_zero(tiny_gguf_path: Path) -> None:
    async def body() -> None:
        runner = await RunnerClient.start(LoadRequest((tiny_gguf_path,), SMALL))
        try:
            greedy = {"temperature": 0, "num_predict": 6}
            first, done = await collect(
                runner, {"prompt": "Hello", "raw": True, "want_context": True, "options": greedy}
            )
            context = done["context"]
            assert len(context) == done["prompt_eval_count"] + done["eval_count"]
            # Continuing from the returned context is the same as sending the text again.
            _, cont = await collect(
                runner,
                {"prompt": " more", "context": context, "want_context": True, "options": greedy},
            )
            assert cont["context"][: len(context)] == context
            assert cont["prompt_cached"] >= len(context) - 1  # and it hits the prefix cache
            with pytest.raises(InvalidOptionError, match="token ids"):
                await collect(runner, {"prompt": "x", "context": [10**9]})
            text, zero = await collect(
                runner, {"prompt": "Hello", "raw": True, "options": {"num_predict": 0}}
            )
            assert text == ""
            assert zero["eval_count"] == 0
            assert zero["done_reason"] == "length"
            assert first
        finally:
            await runner.close()

    run_async(body)


def test_runner_plans_memory_before_loading(tiny_gguf_path: Path) -> None:
    async def body() -> RunnerInfo:
        runner = await RunnerClient.start(LoadRequest((tiny_gguf_path,), SMALL))
        try:
            return runner.info
        finally:
            await runner.close()

    info = run_async(body)
    # What the planner decides on this machine: everything on the CPU with a CPU-only
    # build, everything on the GPU where llama.cpp can offload (the tiny model fits).
    from localserve.engine.devices import probe
    from localserve.plan import plan
    from localserve.store.gguf import read_gguf

    expected = plan(
        read_gguf(tiny_gguf_path),
        num_ctx=SMALL.num_ctx,
        num_parallel=SMALL.num_parallel,
        num_batch=SMALL.num_batch,
        num_ubatch=SMALL.num_ubatch,
        kv_type=SMALL.kv_cache_type,
        devices=probe(),
    )
    assert info.gpu_layers == expected.gpu_layers
    assert expected.gpu_layers in (0, expected.n_layers)
    assert info.size_vram == expected.size_vram
    assert info.size == expected.total_bytes
    assert info.size > tiny_gguf_path.stat().st_size  # weights plus KV and compute
    assert "layers on GPU" in info.plan
    assert expected.processor in info.plan


def test_runner_refuses_what_ram_cannot_hold(
    tiny_gguf_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before llama.cpp is asked to load anything."""
    from localserve.engine.loading import Loader
    from localserve.errors import ModelTooLargeError
    from localserve.plan import Devices

    loader = Loader(probe=lambda **_: Devices.cpu_only(64 << 20))
    monkeypatch.setattr(loader, "_load_model", lambda *_: pytest.fail("loaded despite the plan"))
    with pytest.raises(ModelTooLargeError) as caught:
        loader.load(LoadRequest((tiny_gguf_path,), LoadOptions(num_ctx=4096, num_parallel=64)))
    assert caught.value.needed_bytes > caught.value.available_bytes
