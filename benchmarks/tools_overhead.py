"""What parsing tool calls and thinking costs while streaming: 8 concurrent chats with
tools (answer parser and lazy tool grammar on) against the same chats without, on one
daemon, in the same run.

    python benchmarks/tools_overhead.py [--streams 8] [--tokens 64] [--reps 5]

Gemma 3 270M gets a Hermes chat template (tools, no thinking), so without tools no
answer parser runs at all, and with tools every token goes through the answer parser
and the lazy grammar's trigger check.
Every request generates exactly ``--tokens`` tokens (end of generation ignored,
greedy), so both sides decode the same amount; the rate is generated tokens over the
wall time of the whole round (prompts included: the tool definitions add ~90 prompt
tokens, cached after the first round). Rounds alternate; the ratio of the medians is
with tools / without (goal >= 0.97).
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

from tests.support import chat_templates
from tests.support.daemon import add_model, start_daemon, stop_daemon
from tests.support.tiny_gguf import gemma_path
from tests.test_tools_gemma import WEATHER, with_template

QUESTIONS = [f"Tell me a story about the number {i}." for i in range(64)]


async def round_of(
    client: httpx.AsyncClient, streams: int, tokens: int, tools: bool, offset: int
) -> float:
    """Aggregate generated tok/s of ``streams`` concurrent streamed chats."""

    async def one(i: int) -> None:
        body = {
            "model": "gemma-tools",
            "messages": [{"role": "user", "content": QUESTIONS[(offset + i) % len(QUESTIONS)]}],
            "max_tokens": tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
            "options": {"ignore_eos": True},
            **({"tools": [WEATHER]} if tools else {}),
        }
        usage = None
        async with client.stream("POST", "/v1/chat/completions", json=body) as answer:
            answer.raise_for_status()
            async for line in answer.aiter_lines():
                if line.startswith("data: {") and '"usage"' in line:
                    usage = json.loads(line[6:]).get("usage") or usage
        assert usage and usage["completion_tokens"] == tokens, usage

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(streams)))
    return streams * tokens / (time.perf_counter() - started)


async def measure(
    url: str, streams: int, tokens: int, reps: int
) -> tuple[list[float], list[float]]:
    rates: dict[bool, list[float]] = {True: [], False: []}
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        await round_of(client, streams, tokens, True, 0)  # load the model, warm caches
        for rep in range(reps):
            for tools in (True, False) if rep % 2 == 0 else (False, True):  # alternate
                rates[tools].append(await round_of(client, streams, tokens, tools, rep * streams))
    return rates[True], rates[False]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        home = Path(folder) / "home"
        model = with_template(
            gemma_path(), Path(folder) / "gemma-qwen3.gguf", chat_templates.HERMES
        )
        env = {"LOCALSERVE_NUM_PARALLEL": str(args.streams), "LOCALSERVE_CONTEXT_LENGTH": "1024"}
        daemon = start_daemon(home, env=env)
        try:
            add_model(home, model, "gemma-tools")
            with_tools, without = asyncio.run(
                measure(daemon.url, args.streams, args.tokens, args.reps)
            )
        finally:
            stop_daemon(daemon)
    a, b = statistics.median(with_tools), statistics.median(without)
    print(f"{args.streams} streams x {args.tokens} tokens, {args.reps} rounds each")
    print(f"with tools    {a:7.1f} tok/s  {[round(x, 1) for x in with_tools]}")
    print(f"without tools {b:7.1f} tok/s  {[round(x, 1) for x in without]}")
    print(f"ratio {a / b:.3f} (goal >= 0.97)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
