"""End to end on a real model: Gemma 3 270M Q4_K_M (a sliding-window model with no chat
template), through the runner process. Slower than the tiny-model tests."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from localserve.errors import PromptTooLongError
from localserve.runtime.options import LoadOptions
from localserve.runtime.protocol import LoadRequest
from localserve.scheduler.runner_client import RunnerClient
from tests.support.jobs import collect

pytestmark = pytest.mark.slow


def test_gemma_batches_caches_and_chats(gemma_gguf_path: Path) -> None:
    async def body() -> None:
        runner = await RunnerClient.start(
            LoadRequest((gemma_gguf_path,), LoadOptions(num_ctx=1024, num_parallel=4, num_thread=2))
        )
        try:
            assert runner.info.has_template is False  # a base model: fallback format
            greedy = {"temperature": 0, "num_predict": 16, "ignore_eos": True}
            prompts = [f"The {word} is" for word in ("sky", "sea", "sun", "moon")]
            results = await asyncio.gather(
                *(collect(runner, {"prompt": p, "options": greedy}) for p in prompts)
            )
            assert all(done["eval_count"] == 16 for _, done in results)
            stats = await runner.stats()
            assert stats.max_jobs_in_step == 4

            text, _ = await collect(
                runner,
                {
                    "prompt": "The capital of France is Paris. The capital of Germany is",
                    "options": {"temperature": 0, "num_predict": 8},
                },
            )
            assert "Berlin" in text  # real inference, not noise

            history = "".join(
                f"Fact {i}: the number {i} is interesting because it is {i}.\n" for i in range(40)
            )
            first, done1 = await collect(
                runner,
                {"prompt": history, "raw": True, "options": {"temperature": 0, "num_predict": 8}},
            )
            assert done1["prompt_cached"] <= 1  # at most the BOS every prompt starts with
            _, done2 = await collect(
                runner,
                {
                    "prompt": history + first + "\nFact 41:",
                    "raw": True,
                    "options": {"temperature": 0, "num_predict": 8},
                },
            )
            # Turn 2 reuses the whole first turn, sliding-window layers included.
            assert done2["prompt_cached"] >= done1["prompt_eval_count"] - 1
            assert done2["prompt_eval_duration"] < done1["prompt_eval_duration"] / 3

            chat, done = await collect(
                runner,
                {
                    "messages": [{"role": "user", "content": "Say hello."}],
                    "options": {"temperature": 0, "num_predict": 12},
                },
            )
            assert done["eval_count"] >= 1 and isinstance(chat, str)

            # A base model in the fallback format goes on with the next "User:" turn
            # after its answer; the answer must end there, not run to num_predict.
            few_shot = [
                {"role": "user", "content": "What is 2 + 2?"},
                {"role": "assistant", "content": "4"},
                {"role": "user", "content": "What is 3 + 3?"},
                {"role": "assistant", "content": "6"},
                {"role": "user", "content": "What is 5 + 5?"},
            ]
            answer, done = await collect(
                runner, {"messages": few_shot, "options": {"temperature": 0, "num_predict": 64}}
            )
            assert done["done_reason"] == "stop" and done["eval_count"] < 64, (answer, done)
            assert "User:" not in answer and answer.strip()
        finally:
            await runner.close()

    asyncio.run(asyncio.wait_for(body(), 300))


def test_cpu_repack_off_loads_plain_cpu_weights(
    gemma_gguf_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """LOCALSERVE_CPU_REPACK=false reaches llama.cpp: the load keeps no weights in its
    repacked CPU buffer (CPU_REPACK), which the default load does, as RPC workers run."""
    from localserve.engine.loading import Loader
    from localserve.plan import Devices

    def repacked_bytes_logged(setting: str) -> bool:
        monkeypatch.setenv("LOCALSERVE_CPU_REPACK", setting)
        caplog.clear()
        loader = Loader(probe=lambda **_: Devices.cpu_only(8 << 30))
        loaded = loader.load(
            LoadRequest((gemma_gguf_path,), LoadOptions(num_ctx=512, num_parallel=1))
        )
        loaded.close()
        return "CPU_REPACK model buffer size" in caplog.text

    caplog.set_level(logging.DEBUG, logger="localserve.llama")
    if not repacked_bytes_logged("true"):
        pytest.skip("this CPU has no repacked kernels for Gemma's weights: nothing to turn off")
    assert not repacked_bytes_logged("false")


def test_embeddings_in_a_long_context(gemma_gguf_path: Path) -> None:
    """A 32k context: llama.cpp gives every token of an embedding batch a row of logits
    (1 MiB for Gemma's vocabulary), so a batch as long as the context asked for 37 GB
    and every embedding failed. Inputs are capped at 1024 tokens here: a longer one is
    cut (truncate) or refused with that number, and the runner goes on."""

    async def body() -> None:
        options = LoadOptions(num_ctx=32768, num_parallel=1, num_thread=2)
        runner = await RunnerClient.start(LoadRequest((gemma_gguf_path,), options))
        try:
            short = await runner.embed(["The sky is blue.", "The sea is wide."], truncate=True)
            assert len(short.embeddings) == 2 and short.embeddings[0] != short.embeddings[1]
            long = await runner.embed(["word " * 3000], truncate=True)
            assert long.prompt_eval_count == 1024
            with pytest.raises(PromptTooLongError, match="embeds at most 1024 tokens"):
                await runner.embed(["word " * 3000], truncate=False)
            again = await runner.embed(["The sky is blue."], truncate=True)
            assert again.embeddings[0] == pytest.approx(short.embeddings[0], abs=1e-4)
        finally:
            await runner.close()

    asyncio.run(asyncio.wait_for(body(), 300))
