"""Side by side: localserve against llama-server and llama_cpp.server, one run.

    python benchmarks/engine.py [--model PATH] [--streams 1 4 8 16] [--reps 3] [--tokens 64]
        [--peers localserve llama-server llama-cpp-python] [--skip chat prefill load ceiling]
        [--json FILE]

Same GGUF (default Gemma 3 270M Q4_K_M), same llama.cpp (llama-server and
llama-batched-bench are built from the pinned llama-cpp-python's vendor/llama.cpp, see
peers.py; llama_cpp.server is that package), same threads, the same context per
slot, greedy, a fixed number of new tokens per request, distinct prompts per stream.
The servers are in servers.py; runs alternate between them and medians are reported.
The localserve daemon (HTTP) always runs; --peers picks the others ("localserve" is
its engine driven directly, without HTTP).

Measured:
- aggregate output tok/s and time to first token (p50, p95) at each stream count,
  and per-stream decode tok/s (tokens after the first over the time after the first);
- resident memory of every process after the throughput runs (the daemon idle, too);
- chat: turn-2 time to first token (a ~600-token history just processed) against a
  cold prompt of the same length;
- prefill: a ~1500-token prompt nobody has cached, one new token; the request's time
  is the common measure, plus each server's own prompt rate where it reports one;
- model load time, cold and warm page cache (load_time.py);
- the llama.cpp ceiling from llama-batched-bench at the same sizes (ceiling.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import report  # noqa: E402
from benchmarks.prompts import Tokenizer, history, long_prompt, prompt  # noqa: E402
from benchmarks.servers import SERVERS, LocalserveHTTP, Server, Stream  # noqa: E402

DAEMON = report.DAEMON
PEERS = ("localserve", "llama-server", "llama-cpp-python")
PARTS = ("chat", "prefill", "load", "ceiling")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def run_streams(server: Server, prompts: list[str], tokens: int) -> dict[str, float]:
    """All ``prompts`` at once; aggregate and per-stream numbers of this one run."""
    start = time.perf_counter()
    streams: list[Stream] = await asyncio.gather(*(server.stream(p, tokens) for p in prompts))
    elapsed = max(s.end for s in streams) - start
    ttfts = [s.first - start for s in streams]
    decode = [r for s in streams if (r := s.decode_tok_s) is not None]
    return {
        "tok_s": sum(s.tokens for s in streams) / elapsed,
        "ttft_p50": statistics.median(ttfts),
        "ttft_p95": percentile(ttfts, 0.95),
        "decode_tok_s": statistics.median(decode) if decode else 0.0,
        "tokens": sum(s.tokens for s in streams),
        "wanted": sum(s.wanted for s in streams),
    }


def stream_prompts(streams: int, rep: int) -> list[str]:
    """The prompts of one throughput run: none seen before by any server."""
    return [prompt(i + 100 * streams + 10000 * rep) for i in range(streams)]


def alternate(servers: list[Any], rep: int) -> list[Any]:
    """Forward on even repetitions, backward on odd: no server always goes first."""
    return servers if rep % 2 == 0 else servers[::-1]


async def throughput(
    servers: list[Server], streams: list[int], reps: int, tokens: int
) -> dict[str, dict[int, list[dict[str, float]]]]:
    runs: dict[str, dict[int, list[dict[str, float]]]] = {
        s.name: {n: [] for n in streams} for s in servers
    }
    for rep in range(reps):
        for n in streams:
            prompts = stream_prompts(n, rep)
            for server in alternate(servers, rep):
                runs[server.name][n].append(await run_streams(server, prompts, tokens))
    return runs


async def chat(servers: list[Server], reps: int) -> dict[str, dict[str, list[float]]]:
    times: dict[str, dict[str, list[float]]] = {s.name: {"cold": [], "turn2": []} for s in servers}
    for rep in range(reps):
        for server in alternate(servers, rep):
            # Turn 2 of a conversation: the ~600-token history was just processed.
            base = history(8) + f"(session {rep})\nUser: hello\nAssistant:"
            await server.stream(base, 16)
            t0 = time.perf_counter()
            turn2 = await server.stream(base + " ok\nUser: and more?\nAssistant:", 8)
            times[server.name]["turn2"].append(turn2.first - t0)
            # Different from its first token on, so that no cache (slot, parked or
            # host-RAM prompt cache) holds any of it, not even from an earlier rep.
            cold = (
                f"(other {rep})\n"
                + history(8).replace("fact", "note")
                + "User: hello\nAssistant: ok\nUser: and more?\nAssistant:"
            )
            t0 = time.perf_counter()
            first = await server.stream(cold, 8)
            times[server.name]["cold"].append(first.first - t0)
    return times


async def prefill(
    servers: list[Server], prompts: list[list[tuple[str, int]]]
) -> dict[str, dict[str, list[float]]]:
    """One new token after a long prompt nobody has cached (``prompts[rep][server]``)."""
    results: dict[str, dict[str, list[float]]] = {
        s.name: {"tokens": [], "seconds": [], "tok_s": [], "server_tok_s": []} for s in servers
    }
    for rep, texts in enumerate(prompts):
        for index, server in alternate(list(enumerate(servers)), rep):
            text, n = texts[index]
            t0 = time.perf_counter()
            done = await server.stream(text, 1)
            seconds = done.end - t0
            result = results[server.name]
            result["tokens"].append(n)
            result["seconds"].append(seconds)
            result["tok_s"].append(n / seconds)
            if done.server_prefill_tok_s is not None:
                result["server_tok_s"].append(done.server_prefill_tok_s)
    return results


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="a GGUF (default: Gemma 3 270M)")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per request")
    parser.add_argument("--ctx", type=int, default=2048, help="context per slot")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prefill-tokens", type=int, default=1500)
    parser.add_argument("--peers", nargs="*", choices=PEERS, default=list(PEERS),
                        help="servers to run besides the localserve daemon")  # fmt: skip
    parser.add_argument("--skip", nargs="+", choices=PARTS, default=[], help="parts to leave out")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    if "prefill" not in args.skip and args.ctx < args.prefill_tokens + 64:
        parser.error(f"--ctx {args.ctx} is too small for --prefill-tokens {args.prefill_tokens}")
    if args.model is None:
        from tests.support.tiny_gguf import gemma_path

        args.model = gemma_path()
    return args


async def main() -> None:
    args = parse_args()
    parallel = max(args.streams)
    names = [n for n in ("localserve", DAEMON, "llama-server", "llama-cpp-python")
             if n == DAEMON or n in args.peers]  # fmt: skip
    summary: dict[str, Any] = {
        "model": args.model.name,
        "threads": args.threads,
        "tokens": args.tokens,
        "reps": args.reps,
        "ctx_per_slot": args.ctx,
        "slots": parallel,
        "servers": names,
    }

    # The tokenizer is needed only to size prompts; free it before load times are taken.
    tokenizer = Tokenizer(args.model)
    short_prompt_tokens = statistics.median_low(
        tokenizer.count(text)
        for n in args.streams
        for rep in range(args.reps)
        for text in stream_prompts(n, rep)
    )
    long_prompts = [
        [long_prompt(tokenizer, f"r{rep}s{i}", args.prefill_tokens) for i in range(len(names))]
        for rep in range(args.reps)
    ]
    tokenizer.close()

    servers: list[Any] = [SERVERS[name](args.model, parallel, args.ctx, args.threads) for name in names]  # fmt: skip
    daemon: LocalserveHTTP = servers[names.index(DAEMON)]
    started: list[Any] = []
    try:
        for server in servers:
            await server.start()
            started.append(server)
        summary["rss_mb_idle_daemon"] = daemon.rss_mb()["daemon"]  # no model loaded yet
        for server in servers:  # warm up (page cache, thread pools, the daemon's runner)
            await server.stream("Hello", 8)
        print(f"throughput: {args.reps} reps x streams {args.streams} ...", flush=True)
        runs = await throughput(servers, args.streams, args.reps, args.tokens)
        summary["rss_mb"] = {s.name: s.rss_mb() for s in servers}
        if "chat" not in args.skip:
            print("chat turn 2 ...", flush=True)
            chats = await chat(servers, args.reps)
        if "prefill" not in args.skip:
            print("prefill ...", flush=True)
            prefills = await prefill(servers, long_prompts)
    finally:
        for server in started:  # never leave a server running, whatever failed
            await server.close()
    if "load" not in args.skip:
        from benchmarks import load_time

        print("load times ...", flush=True)
        loads = await load_time.measure(
            args.model, args.peers, parallel, args.ctx, args.threads, args.reps
        )
    if "ceiling" not in args.skip:
        from benchmarks.ceiling import batched_bench

        print("llama-batched-bench ...", flush=True)
        ceiling = batched_bench(
            args.model,
            prompt_tokens=short_prompt_tokens,
            new_tokens=args.tokens,
            levels=args.streams,
            ctx=args.ctx * parallel,
            threads=args.threads,
            reps=args.reps,
        )

    report.header(args, parallel)
    summary["streams"] = report.throughput(runs, args.streams, names)
    summary["targets"] = report.targets(summary["streams"])
    report.memory(summary["rss_mb_idle_daemon"], summary["rss_mb"])
    if "chat" not in args.skip:
        summary["chat"] = report.chat(chats)
    if "prefill" not in args.skip:
        summary["prefill"] = report.prefill(prefills, args.prefill_tokens)
    if "load" not in args.skip:
        summary["load"] = report.load(loads)
    if "ceiling" not in args.skip:
        summary["ceiling"] = report.ceiling(ceiling, summary["streams"], short_prompt_tokens)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    asyncio.run(main())
