"""Embeddings next to llama-server: the same vectors, and the time per request.

    python benchmarks/embed.py [--inputs 64] [--reps 5] [--threads 2] [--clients 8]

Gemma 3 270M (a generative model: both servers take the mean of its hidden states,
llama-server with ``--embeddings --pooling mean``) on a localserve daemon and on
llama-server built from the same llama.cpp (benchmarks/peers.py). Both get the same
``--inputs`` texts on /v1/embeddings; the script prints the lowest cosine similarity
between their vectors, their ``usage.prompt_tokens``, the median wall time of one
request of all the inputs on each (rounds alternate), then the median wall time of
``--clients`` requests sent at once, the inputs split between them (localserve packs
their inputs into shared decodes, engine/pooled.py).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.peers import start_llama_server, stop
from benchmarks.rerank import at_once, documents, timed
from tests.support.daemon import add_model, start_daemon, stop_daemon
from tests.support.tiny_gguf import gemma_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--inputs", type=int, default=64)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    texts = documents(args.inputs)
    gemma = gemma_path()
    folder = Path(tempfile.mkdtemp(prefix="embed-bench-"))
    daemon = start_daemon(folder / "home")
    server, server_url = start_llama_server(
        gemma, parallel=1, ctx_per_slot=2048, threads=args.threads,
        extra=("--embeddings", "--pooling", "mean"),
    )  # fmt: skip
    try:
        add_model(daemon.home, gemma, "gemma")
        body = {"model": "gemma", "input": texts, "options": {"num_thread": args.threads}}
        ours_url, theirs_url = f"{daemon.url}/v1/embeddings", f"{server_url}/v1/embeddings"
        ours_s, theirs_s = [], []
        with httpx.Client(timeout=600, trust_env=False) as client:
            timed(client, ours_url, body)  # load it first
            timed(client, theirs_url, body)
            for _ in range(args.reps):
                took, ours = timed(client, ours_url, body)
                ours_s.append(took)
                took, theirs = timed(client, theirs_url, body)
                theirs_s.append(took)
            at_once_ours = at_once(client, ours_url, body, "input", args)
            at_once_theirs = at_once(client, theirs_url, body, "input", args)
        mine = np.array([d["embedding"] for d in ours["data"]])
        peer = np.array([d["embedding"] for d in theirs["data"]])
        cosine = (mine * peer).sum(1) / np.linalg.norm(mine, axis=1) / np.linalg.norm(peer, axis=1)
        print(
            f"gemma: {len(texts)} inputs, lowest cosine {cosine.min():.6f}, prompt_tokens "
            f"{ours['usage']['prompt_tokens']} (llama-server {theirs['usage']['prompt_tokens']}), "
            f"median request {statistics.median(ours_s) * 1000:.0f} ms (llama-server "
            f"{statistics.median(theirs_s) * 1000:.0f} ms); {args.clients} clients at once "
            f"{at_once_ours * 1000:.0f} ms (llama-server {at_once_theirs * 1000:.0f} ms)"
        )
    finally:
        stop(server)
        stop_daemon(daemon, check=False)


if __name__ == "__main__":
    main()
