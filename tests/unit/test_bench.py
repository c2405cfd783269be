"""`localserve bench`'s arithmetic, without a daemon: percentiles, the summary of a level's
repetitions, rates, the parsing of concurrency levels, the CLI's defaults, and one
failing stream cancelling the others (client/bench.py)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from localserve.client import bench
from localserve.errors import InvalidOptionError, ModelNotFoundError


def test_percentile_matches_numpy() -> None:
    values = [12.0, 3.5, 7.25, 40.0, 1.0, 9.0, 9.0]
    for q in (1, 25, 50, 90, 95, 99):
        assert bench.percentile(values, q) == pytest.approx(np.percentile(values, q))
    assert bench.percentile([4.2], 95) == 4.2
    with pytest.raises(ValueError, match="no values"):
        bench.percentile([], 50)
    with pytest.raises(ValueError, match="between 1 and 99"):
        bench.percentile(values, 100)


def sample(ttft_s: float, end_s: float, tokens: int, eval_s: float) -> bench.StreamSample:
    return bench.StreamSample(
        ttft_s=ttft_s,
        end_s=end_s,
        prompt_tokens=10,
        prompt_eval_ns=1_000_000,
        tokens=tokens,
        eval_ns=round(eval_s * 1e9),
    )


def test_a_level_is_summarised_from_its_repetitions() -> None:
    # Two reps of two streams. Rep 1 starts at t=100 and ends at t=102 (the later
    # stream); rep 2 starts at t=200 and ends at t=201.
    first = [sample(0.1, 101.0, 10, 0.5), sample(0.3, 102.0, 10, 1.0)]
    second = [sample(0.2, 200.5, 10, 0.25), sample(0.4, 201.0, 10, 0.5)]
    level = bench.summarize_level(2, [(100.0, first), (200.0, second)])
    assert level.streams == 2
    assert level.tokens_per_stream == 10
    # Aggregates: 20 tokens / 2 s = 10, 20 tokens / 1 s = 20; median 15.
    assert level.aggregate_tokens_per_s == pytest.approx(15.0)
    # Per-stream rates 20, 10, 40, 20 tok/s: median 20.
    assert level.per_stream_tokens_per_s == pytest.approx(20.0)
    # TTFTs pooled over both reps: 100, 300, 200, 400 ms.
    ttfts = [100.0, 300.0, 200.0, 400.0]
    assert level.ttft_p50_ms == pytest.approx(np.percentile(ttfts, 50))
    assert level.ttft_p95_ms == pytest.approx(np.percentile(ttfts, 95))
    assert level.ttft_p95_ms >= level.ttft_p50_ms


def test_rates_and_prompts() -> None:
    assert bench.rate(50, 2_000_000_000) == 25.0
    assert bench.rate(3, 0) > 0  # a zero duration is never a division error
    import random

    prompt = bench.words_prompt(12, random.Random(7), first="water")
    words = prompt.split(" ")
    assert len(words) == 12 and words[0] == "water"
    assert set(words) <= set(bench.WORDS)


def test_concurrency_parsing_and_config_checks() -> None:
    assert bench.parse_concurrency("1,4,8") == (1, 4, 8)
    assert bench.parse_concurrency(" 8, 1 ,1") == (1, 8)
    for bad in ("", "1,,2", "two", "0", "-1", "257", "1.5"):
        with pytest.raises(InvalidOptionError):
            bench.parse_concurrency(bad)
    for fields in (
        {"prompt_tokens": 0},
        {"decode_tokens": 1},
        {"reps": 0},
        {"concurrency": ()},
        {"concurrency": (1, 0)},
    ):
        with pytest.raises(InvalidOptionError):
            bench.BenchConfig(**fields)  # type: ignore[arg-type]


def test_cli_defaults_are_the_library_defaults() -> None:
    # The CLI repeats them (importing the library would slow down `--help`).
    from localserve.cli import bench as command

    assert command.DEFAULT_PROMPT_TOKENS == bench.DEFAULT_PROMPT_TOKENS
    assert command.DEFAULT_DECODE_TOKENS == bench.DEFAULT_DECODE_TOKENS
    assert bench.parse_concurrency(command.DEFAULT_CONCURRENCY) == bench.DEFAULT_CONCURRENCY
    assert command.DEFAULT_REPS == bench.DEFAULT_REPS


def test_one_failing_stream_cancels_the_others_and_is_raised_as_itself() -> None:
    cancelled: list[str] = []

    async def fails() -> int:
        await asyncio.sleep(0.01)
        raise ModelNotFoundError("gone")

    async def slow(name: str) -> int:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.append(name)
            raise
        return 0

    with pytest.raises(ModelNotFoundError):
        asyncio.run(bench.gather_all([slow("a"), fails(), slow("b")]))
    assert sorted(cancelled) == ["a", "b"]

    async def value(n: int) -> int:
        await asyncio.sleep(0.01 * (3 - n))
        return n

    assert asyncio.run(bench.gather_all([value(n) for n in range(3)])) == [0, 1, 2]  # in order
