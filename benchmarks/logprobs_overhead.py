"""What log-probabilities cost while streaming: 8 concurrent generations with
``top_logprobs: 5`` on every stream against the same without logprobs, on one daemon,
in the same run.

    python benchmarks/logprobs_overhead.py [--streams 8] [--tokens 64] [--reps 5]

Gemma 3 270M (262k-token vocabulary: the log-softmax reads every logit). Same prompts
on both sides (raw /api/generate), exactly ``--tokens`` tokens each (end of generation
ignored, greedy); rate = generated tokens over the wall time of a round; rounds
alternate; the ratio of the medians is with / without. Run it at two commits to
compare "logprobs off" before and after a change.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.daemon import start_daemon, stop_daemon
from tests.support.tiny_gguf import gemma_path

PROMPTS = [f"Here is a long story about the number {i}:" for i in range(64)]


async def round_of(
    client: httpx.AsyncClient, streams: int, tokens: int, top: int | None, offset: int
) -> float:
    async def one(i: int) -> None:
        body: dict[str, object] = {
            "model": "tiny",
            "prompt": PROMPTS[(offset + i) % len(PROMPTS)],
            "raw": True,
            "options": {"temperature": 0, "num_predict": tokens, "ignore_eos": True},
        }
        if top is not None:
            body.update(logprobs=True, top_logprobs=top)
        count = 0
        async with client.stream("POST", "/api/generate", json=body) as answer:
            answer.raise_for_status()
            async for line in answer.aiter_lines():
                chunk = json.loads(line)
                count += len(chunk.get("logprobs") or ())
                if chunk.get("done"):
                    assert chunk["eval_count"] == tokens, chunk
        assert count == (tokens if top is not None else 0)

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(streams)))
    return streams * tokens / (time.perf_counter() - started)


async def measure(
    url: str, streams: int, tokens: int, reps: int, top: int, off_only: bool
) -> dict[str, list[float]]:
    rates: dict[str, list[float]] = {"off": [], "on": []}
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        await round_of(client, streams, tokens, None, 0)  # load and warm up
        for rep in range(reps):
            modes = ("off", "on") if rep % 2 == 0 else ("on", "off")
            for mode in ("off",) if off_only else modes:
                value = top if mode == "on" else None
                rates[mode].append(await round_of(client, streams, tokens, value, rep * streams))
    return rates


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--top", type=int, default=5)
    parser.add_argument(
        "--off-only",
        action="store_true",
        help="only the rounds without logprobs (to compare two commits)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        env = {"LOCALSERVE_NUM_PARALLEL": str(args.streams), "LOCALSERVE_CONTEXT_LENGTH": "1024"}
        daemon = start_daemon(Path(folder) / "home", gemma_path(), env=env)
        try:
            rates = asyncio.run(
                measure(daemon.url, args.streams, args.tokens, args.reps, args.top, args.off_only)
            )
        finally:
            stop_daemon(daemon)
    off = statistics.median(rates["off"])
    print(f"{args.streams} streams x {args.tokens} tokens, {args.reps} rounds each")
    print(f"logprobs off          {off:7.1f} tok/s  {[round(x, 1) for x in rates['off']]}")
    if args.off_only:
        return 0
    on = statistics.median(rates["on"])
    print(f"top_logprobs {args.top:<2}       {on:7.1f} tok/s  {[round(x, 1) for x in rates['on']]}")
    print(f"ratio {on / off:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
