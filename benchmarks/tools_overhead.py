"""What parsing tool calls costs while streaming: 8 concurrent chats with tools (the
answer parser and the lazy tool grammar on) against the very same prompts sent raw
(no parser, no grammar), on one daemon, in the same run.

    python benchmarks/tools_overhead.py [--streams 8] [--tokens 64] [--reps 5]

Gemma 3 270M gets a Hermes chat template (tools, no thinking). With tools, each
request is an /api/chat with ``tools``; without, the same conversation rendered by
the same template with the same tools, sent to /api/generate with ``raw``: the same
prompt tokens, so the difference is the parser and the grammar alone. Every request
generates exactly ``--tokens`` tokens (end of generation ignored, greedy). The rate is
generated tokens over the wall time of a whole round; rounds alternate; the ratio of
the medians is with tools / without (goal >= 0.97).
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

from localserve.runtime.templates import ChatTemplate
from tests.e2e.test_tools_gemma import WEATHER, with_template
from tests.support import chat_templates
from tests.support.daemon import add_model, start_daemon, stop_daemon
from tests.support.tiny_gguf import gemma_path

QUESTIONS = [f"Tell me a story about the number {i}." for i in range(64)]


def rendered(question: str) -> str:
    """The prompt /api/chat builds for ``question`` with the tools, as text."""
    template = ChatTemplate(chat_templates.HERMES)
    return template.render([{"role": "user", "content": question}], tools=[WEATHER])


async def round_of(
    client: httpx.AsyncClient, streams: int, tokens: int, tools: bool, offset: int
) -> float:
    """Aggregate generated tok/s of ``streams`` concurrent streamed requests."""

    async def one(i: int) -> None:
        question = QUESTIONS[(offset + i) % len(QUESTIONS)]
        options = {"temperature": 0, "num_predict": tokens, "ignore_eos": True}
        if tools:
            path = "/api/chat"
            body: dict[str, object] = {
                "model": "gemma-tools",
                "messages": [{"role": "user", "content": question}],
                "tools": [WEATHER],
                "options": options,
            }
        else:
            path = "/api/generate"
            body = {"model": "gemma-tools", "prompt": rendered(question), "raw": True}
            body["options"] = options
        final: dict[str, object] = {}
        async with client.stream("POST", path, json=body) as answer:
            answer.raise_for_status()
            async for line in answer.aiter_lines():
                chunk = json.loads(line)
                if chunk.get("done"):
                    final = chunk
        assert final.get("eval_count") == tokens, final

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(streams)))
    return streams * tokens / (time.perf_counter() - started)


async def measure(
    url: str, streams: int, tokens: int, reps: int
) -> tuple[list[float], list[float]]:
    rates: dict[bool, list[float]] = {True: [], False: []}
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        for tools in (True, False):  # load the model, warm both paths
            await round_of(client, streams, tokens, tools, 0)
        for rep in range(reps):
            for tools in (True, False) if rep % 2 == 0 else (False, True):  # alternate
                # Both sides of a rep ask the same questions: the same prompt tokens.
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
