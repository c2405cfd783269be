"""Throughput and time to first token: localserve's engine against llama-server, one run.

    python benchmarks/engine.py [--model PATH] [--streams 1 4 8 16] [--reps 3] [--tokens 64]

Same GGUF (default Gemma 3 270M Q4_K_M), same llama.cpp (llama-server is built from
the pinned llama-cpp-python's vendor/llama.cpp, see peers.py), same threads, greedy,
a fixed number of new tokens per request (end-of-generation ignored), distinct
prompts per stream. localserve is driven through its runner process
(engine/client.py: the engine plus its pipe to the daemon), llama-server through
its HTTP streaming /completion endpoint. Runs alternate between the two and the
medians are reported, with the ratio localserve / llama-server.

Also measures the turn-2 time to first token of a chat (~600-token history) against
a cold prompt of the same length.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.peers import start_llama_server, stop  # noqa: E402

TOPICS = ["the ocean", "a lighthouse", "mountains", "a city at night", "the first computer", "autumn leaves", "a train journey", "the moon",
          "a bakery", "old libraries", "desert winds", "a chess match", "rain in spring", "a jazz club", "glaciers", "a market day"]  # fmt: skip


def prompt(i: int) -> str:
    return f"Write a long, detailed essay about {TOPICS[i % len(TOPICS)]} (variant {i}).\n\n"


Result = tuple[float, float]  # (ttft seconds, end seconds) relative to the start


async def run_streams(
    one: Callable[[int], Awaitable[Result]], streams: int, tokens: int
) -> dict[str, float]:
    start = time.perf_counter()
    results = await asyncio.gather(*(one(i) for i in range(streams)))
    ttfts = sorted(r[0] - start for r in results)
    end = max(r[1] for r in results) - start
    return {
        "tok_s": streams * tokens / end,
        "ttft_p50": statistics.median(ttfts),
        "ttft_p95": ttfts[min(len(ttfts) - 1, round(0.95 * (len(ttfts) - 1)))],
    }


class Localserve:
    name = "localserve"

    def __init__(self, model: Path, parallel: int, ctx: int, threads: int) -> None:
        self.args = (model, parallel, ctx, threads)
        self.runner: Any = None

    async def start(self) -> None:
        from localserve.engine.client import RunnerClient
        from localserve.engine.options import LoadOptions

        model, parallel, ctx, threads = self.args
        self.runner = await RunnerClient.start(
            [model], LoadOptions(num_ctx=ctx, num_parallel=parallel, num_thread=threads)
        )

    async def stream(self, text: str, tokens: int) -> Result:
        first = 0.0
        async for event in self.runner.generate(
            {
                "prompt": text,
                "raw": True,
                "options": {"temperature": 0, "num_predict": tokens, "ignore_eos": True},
            }
        ):
            if event["type"] == "text" and not first:
                first = time.perf_counter()
            if event["type"] == "done":
                assert event["eval_count"] == tokens, event
        return first, time.perf_counter()

    async def close(self) -> None:
        await self.runner.close()


class LocalserveHTTP:
    """The whole daemon: HTTP, routes, scheduler, runner. Same engine as above."""

    name = "localserve-http"

    def __init__(self, model: Path, parallel: int, ctx: int, threads: int) -> None:
        self.args = (model, parallel, ctx, threads)

    async def start(self) -> None:
        import os
        import subprocess
        import tempfile

        import httpx

        from benchmarks.peers import free_port, wait_http

        model, parallel, ctx, threads = self.args
        self.home = tempfile.mkdtemp(prefix="localserve-bench-")
        port = free_port()
        env = {**os.environ, "LOCALSERVE_HOME": self.home, "LOCALSERVE_HOST": f"127.0.0.1:{port}",
               "LOCALSERVE_NUM_PARALLEL": str(parallel), "LOCALSERVE_CONTEXT_LENGTH": str(ctx)}  # fmt: skip
        subprocess.run(
            [sys.executable, "-m", "localserve", "import", str(model), "bench"],
            env=env,
            check=True,
            capture_output=True,
        )
        self.process = subprocess.Popen(
            [sys.executable, "-m", "localserve", "serve", "--foreground"],
            env=env,
            stderr=subprocess.DEVNULL,
        )
        self.url = f"http://127.0.0.1:{port}"
        wait_http(self.url + "/")
        self.threads = threads
        self.client = httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=64))

    async def stream(self, text: str, tokens: int) -> Result:
        first = 0.0
        options = {
            "temperature": 0,
            "num_predict": tokens,
            "ignore_eos": True,
            "num_thread": self.threads,
        }
        body = {"model": "bench", "prompt": text, "raw": True, "options": options}
        async with self.client.stream("POST", self.url + "/api/generate", json=body) as response:
            async for line in response.aiter_lines():
                event = json.loads(line)
                if event.get("response") and not first:
                    first = time.perf_counter()
                if event.get("done"):
                    assert event["eval_count"] == tokens, event
        return first, time.perf_counter()

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    async def close(self) -> None:
        import shutil

        from benchmarks.peers import stop

        await self.client.aclose()
        stop(self.process)  # type: ignore[arg-type]
        shutil.rmtree(self.home, ignore_errors=True)


class LlamaServer:
    name = "llama-server"

    def __init__(self, model: Path, parallel: int, ctx: int, threads: int) -> None:
        self.args = (model, parallel, ctx, threads)

    async def start(self) -> None:
        import httpx

        model, parallel, ctx, threads = self.args
        self.process, self.url = start_llama_server(
            model, parallel=parallel, ctx_per_slot=ctx, threads=threads
        )
        # No keep-alive: llama-server drops idle connections, and a POST on a stale one fails.
        self.client = httpx.AsyncClient(
            timeout=600, limits=httpx.Limits(max_connections=64, max_keepalive_connections=0)
        )

    async def stream(self, text: str, tokens: int) -> Result:
        first = 0.0
        body = {
            "prompt": text,
            "n_predict": tokens,
            "temperature": 0,
            "stream": True,
            "ignore_eos": True,
            "cache_prompt": True,
        }
        async with self.client.stream("POST", self.url + "/completion", json=body) as response:
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                event = json.loads(line[6:])
                if event.get("content") and not first:
                    first = time.perf_counter()
                if event.get("stop"):
                    assert event["timings"]["predicted_n"] == tokens, event["timings"]
        return first, time.perf_counter()

    async def close(self) -> None:
        await self.client.aclose()
        stop(self.process)


def history(turns: int) -> str:
    lines = []
    for i in range(turns):
        lines.append(f"User: Tell me something interesting about {TOPICS[i % len(TOPICS)]}.")
        lines.append(
            f"Assistant: Here is a fact about {TOPICS[i % len(TOPICS)]}: "
            + "it is remarkable in many ways, " * 6
        )
    return "\n".join(lines) + "\n"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--ctx", type=int, default=1024, help="context per slot")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    if args.model is None:
        from tests.support.tiny_gguf import gemma_path

        args.model = gemma_path()

    parallel = max(args.streams)
    servers = [
        Localserve(args.model, parallel, args.ctx, args.threads),
        LocalserveHTTP(args.model, parallel, args.ctx, args.threads),
        LlamaServer(args.model, parallel, args.ctx, args.threads),
    ]
    results: dict[str, dict[int, list[dict[str, float]]]] = {
        s.name: {n: [] for n in args.streams} for s in servers
    }
    chat: dict[str, dict[str, list[float]]] = {s.name: {"cold": [], "turn2": []} for s in servers}
    started: list[Any] = []
    try:
        for server in servers:
            await server.start()
            started.append(server)
        idle_rss = servers[1].rss_mb()  # the daemon before any model is loaded
        for server in servers:  # warm up (page cache, thread pools)
            await server.stream("Hello", 8)
        for rep in range(args.reps):
            for n in args.streams:
                for server in servers if rep % 2 == 0 else reversed(servers):
                    results[server.name][n].append(
                        await run_streams(
                            lambda i, s=server, r=rep: s.stream(prompt(i + 100 * r), args.tokens),
                            n,
                            args.tokens,
                        )
                    )
            for server in servers:
                # Turn 2 of a conversation: the ~600-token history was just processed.
                base = history(8) + f"(session {rep})\n"
                await server.stream(base + "User: hello\nAssistant:", 16)
                t0 = time.perf_counter()
                first, _ = await server.stream(
                    base + "User: hello\nAssistant:" + " ok\nUser: and more?\nAssistant:", 8
                )
                chat[server.name]["turn2"].append(first - t0)
                cold = (
                    history(8).replace("fact", "note")
                    + f"(other {rep})\nUser: hello\nAssistant: ok\nUser: and more?\nAssistant:"
                )
                t0 = time.perf_counter()
                first, _ = await server.stream(cold, 8)
                chat[server.name]["cold"].append(first - t0)
    finally:
        for server in started:  # never leave a server running, whatever failed
            await server.close()

    summary: dict[str, Any] = {
        "model": args.model.name,
        "threads": args.threads,
        "tokens": args.tokens,
        "reps": args.reps,
        "streams": {},
    }
    print(
        f"model {args.model.name}, {args.threads} threads, {args.tokens} new tokens per stream, {args.reps} reps, medians"
    )
    print("tok/s: aggregate output tokens per second; ttft: seconds to first token (p50, p95)")
    print("engine = localserve's runner driven directly; daemon = the same through HTTP")
    header = f"{'streams':>7} | {'engine':>7} {'ttft':>6} | {'daemon':>7} {'ttft':>6} {'p95':>6} | {'llama-srv':>9} {'ttft':>6} {'p95':>6} | daemon/llama tok/s ttft | daemon/engine"
    print(header)
    for n in args.streams:
        row = {}
        for name in results:
            runs = results[name][n]
            row[name] = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        engine, ours, theirs = row["localserve"], row["localserve-http"], row["llama-server"]
        ratio = ours["tok_s"] / theirs["tok_s"]
        ttft_ratio = ours["ttft_p50"] / theirs["ttft_p50"]
        overhead = ours["tok_s"] / engine["tok_s"]
        summary["streams"][n] = {
            **row,
            "ratio_tok_s": ratio,
            "ratio_ttft_p50": ttft_ratio,
            "http_over_engine": overhead,
        }
        print(
            f"{n:>7} | {engine['tok_s']:>7.1f} {engine['ttft_p50']:>6.3f} | {ours['tok_s']:>7.1f} {ours['ttft_p50']:>6.3f} {ours['ttft_p95']:>6.3f} | "
            f"{theirs['tok_s']:>9.1f} {theirs['ttft_p50']:>6.3f} {theirs['ttft_p95']:>6.3f} | {ratio:>18.2f} {ttft_ratio:>4.2f} | {overhead:>13.2f}"
        )
    for name, values in chat.items():
        cold, turn2 = statistics.median(values["cold"]), statistics.median(values["turn2"])
        summary[f"chat_{name}"] = {"cold_ttft": cold, "turn2_ttft": turn2, "ratio": turn2 / cold}
        print(
            f"{name}: chat turn-2 TTFT {turn2 * 1000:.0f} ms vs cold {cold * 1000:.0f} ms (ratio {turn2 / cold:.2f})"
        )
    summary["daemon_idle_rss_mb"] = idle_rss
    print(f"daemon RSS with no model loaded: {idle_rss:.0f} MB")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
