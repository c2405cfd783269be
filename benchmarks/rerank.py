"""Rerank next to llama-server: the same scores and token counts, and the time per request.

    python benchmarks/rerank.py [--docs 64] [--reps 5] [--threads 2]

The tiny reranker of the tests (tests/support/tiny_reranker.py: a BERT cross-encoder
with rank pooling), without and with a rerank template, on a localserve daemon and on
llama-server (``--reranking``, flash attention off as localserve's rank context has it;
benchmarks/peers.py builds it from the same llama.cpp). Both get the same query and
``--docs`` documents; the script prints the largest difference between their scores,
their ``usage.prompt_tokens``, and the median wall time of a request on each (rounds
alternate); then the median wall time of ``--clients`` requests sent at once, the
documents split between them (localserve packs their pairs into shared decodes). Real rerankers are far larger: the times say what the serving costs, not
what a model does.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.peers import start_llama_server, stop
from tests.support.daemon import add_model, start_daemon, stop_daemon
from tests.support.tiny_reranker import RERANK_TEMPLATE, write_tiny_reranker

QUERY = "what colour is the sky on a clear day"
WORDS = [
    "the",
    "sky",
    "is",
    "blue",
    "water",
    "hello",
    "world",
    "model",
    "one",
    "two",
    "three",
    "four",
    "five",
    "café",
    "naïve",
]


def documents(count: int) -> list[str]:
    return [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(8 + i % 24)) for i in range(count)]


def timed(client: httpx.Client, url: str, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    response = client.post(url, json=body)
    if response.status_code != 200:
        raise SystemExit(f"{url}: {response.status_code} {response.text[:500]}")
    return time.perf_counter() - started, response.json()


def at_once(
    client: httpx.Client, url: str, body: dict[str, Any], field: str, args: argparse.Namespace
) -> float:
    """The median wall time of ``--clients`` requests at once, ``body[field]`` (the
    documents, the inputs) split between them; ``--reps`` rounds."""
    items = body[field]
    share = max(1, len(items) // args.clients)
    bodies = [{**body, field: items[i * share : (i + 1) * share]} for i in range(args.clients)]
    times = []
    with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
        for _ in range(args.reps):
            started = time.perf_counter()
            list(pool.map(lambda b: timed(client, url, b), bodies))
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=64)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    docs = documents(args.docs)
    folder = Path(tempfile.mkdtemp(prefix="rerank-bench-"))
    daemon = start_daemon(folder / "home")
    try:
        for name, template in (("plain", None), ("templated", RERANK_TEMPLATE)):
            path = write_tiny_reranker(folder / f"{name}.gguf", rerank_template=template)
            add_model(daemon.home, path, name)
            server, server_url = start_llama_server(
                path, parallel=1, ctx_per_slot=512, threads=args.threads,
                extra=("--reranking", "-fa", "off"),
            )  # fmt: skip
            try:
                body = {
                    "model": name,
                    "query": QUERY,
                    "documents": docs,
                    "options": {"num_thread": args.threads},
                }
                ours_s, theirs_s = [], []
                with httpx.Client(timeout=600, trust_env=False) as client:
                    timed(client, f"{daemon.url}/v1/rerank", body)  # load it first
                    for _ in range(args.reps):
                        took, ours = timed(client, f"{daemon.url}/v1/rerank", body)
                        ours_s.append(took)
                        took, theirs = timed(client, f"{server_url}/v1/rerank", body)
                        theirs_s.append(took)
                    together_ours = at_once(
                        client, f"{daemon.url}/v1/rerank", body, "documents", args
                    )
                    together_theirs = at_once(
                        client, f"{server_url}/v1/rerank", body, "documents", args
                    )
                mine = {r["index"]: r["relevance_score"] for r in ours["results"]}
                peer = {r["index"]: r["relevance_score"] for r in theirs["results"]}
                worst = max(abs(mine[i] - peer[i]) for i in range(len(docs)))
                print(
                    f"{name}: {len(docs)} documents, max |score difference| {worst:.2e}, "
                    f"prompt_tokens {ours['usage']['prompt_tokens']} (llama-server "
                    f"{theirs['usage']['prompt_tokens']}), median request "
                    f"{statistics.median(ours_s) * 1000:.0f} ms (llama-server "
                    f"{statistics.median(theirs_s) * 1000:.0f} ms); {args.clients} clients at "
                    f"once {together_ours * 1000:.0f} ms (llama-server "
                    f"{together_theirs * 1000:.0f} ms)"
                )
            finally:
                stop(server)
    finally:
        stop_daemon(daemon, check=False)


if __name__ == "__main__":
    main()
