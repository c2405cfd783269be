"""OpenAI's ``n``: one request for 4 answers against 4 requests at once for the same
prompt, time to the last token, on one daemon, in the same run.

    python benchmarks/n_choices.py [--n 4] [--tokens 32] [--reps 5]

Gemma 3 270M, a ~600-token prompt that no cache holds (a new one each round), each
answer exactly ``--tokens`` tokens. With ``n`` the answers after the first copy its
prompt cells (one prefill); the separate requests arrive together, so each reads the
prompt itself. Rounds alternate; the ratio of the median times is n / separate.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.daemon import start_daemon, stop_daemon
from tests.support.tiny_gguf import gemma_path


def prompt(round_number: int) -> str:
    facts = "".join(f"Fact {i}: the number {i} is not {i + 1}. " for i in range(60))
    return f"Round {round_number}. {facts}Now tell me a story:"


async def one_request(client: httpx.AsyncClient, text: str, n: int, tokens: int, seed: int) -> None:
    body = {
        "model": "tiny",
        "prompt": text,
        "max_tokens": tokens,
        "temperature": 1.0,
        "seed": seed,
        "n": n,
        "options": {"ignore_eos": True},
    }
    answer = await client.post("/v1/completions", json=body)
    answer.raise_for_status()
    assert answer.json()["usage"]["completion_tokens"] == n * tokens


async def measure(url: str, n: int, tokens: int, reps: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"n": [], "separate": []}
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        await one_request(client, prompt(-1), 1, 1, 0)  # load
        for rep in range(reps):
            for mode in ("n", "separate") if rep % 2 == 0 else ("separate", "n"):
                text = prompt(rep * 2 + (mode == "n"))  # never cached
                started = time.perf_counter()
                if mode == "n":
                    await one_request(client, text, n, tokens, rep)
                else:
                    await asyncio.gather(
                        *(one_request(client, text, 1, tokens, rep + i) for i in range(n))
                    )
                times[mode].append(time.perf_counter() - started)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        env = {"LOCALSERVE_NUM_PARALLEL": str(args.n), "LOCALSERVE_CONTEXT_LENGTH": "2048"}
        daemon = start_daemon(Path(folder) / "home", gemma_path(), env=env)
        try:
            times = asyncio.run(measure(daemon.url, args.n, args.tokens, args.reps))
        finally:
            stop_daemon(daemon)
    with_n, separate = statistics.median(times["n"]), statistics.median(times["separate"])
    print(f"n={args.n} x {args.tokens} tokens, {args.reps} rounds each (time to last token)")
    print(f"one request, n={args.n}   {with_n:6.2f} s  {[round(t, 2) for t in times['n']]}")
    print(
        f"{args.n} separate requests {separate:6.2f} s  {[round(t, 2) for t in times['separate']]}"
    )
    print(f"ratio {with_n / separate:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
