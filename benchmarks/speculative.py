"""Speculative decoding: localserve's n-gram drafts against none, and against
llama-server with and without its n-gram speculation, in the same run.

    python benchmarks/speculative.py [--tokens 200] [--reps 3] [--streams 1 4] [--draft]

Gemma 3 270M Q4_K_M, 2 threads, raw completions of exactly ``--tokens`` tokens:

- copy: a passage followed by an instruction to write it out again (the answer is
  mostly in the prompt; greedy);
- free: a story opening, sampled (temperature 0.8, fixed seeds): little to copy.

localserve runs with LOCALSERVE_SPECULATIVE=ngram; "off" is the same daemon with the
request option ``speculative: false``. llama-server runs twice: plain, and with
``--spec-type ngram-simple`` (its best n-gram mode in the issue's measurements).
With ``--draft``, both also draft with a second model: Gemma 3 270M cut to its first
``--draft-layers`` layers (benchmarks/draft_gguf.py; no smaller model of the family can
be downloaded here), localserve through LOCALSERVE_SPECULATIVE=<its name>, llama-server
through ``--model-draft`` with its own defaults.
Each configuration sends ``streams`` requests at once; tokens/s is all their tokens
over the wall time. Rounds alternate between configurations; medians are reported.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.draft_gguf import truncate_layers
from benchmarks.peers import start_llama_server, stop
from tests.support.daemon import add_model, start_daemon, stop_daemon
from tests.support.tiny_gguf import gemma_path

PASSAGE = (
    "The lighthouse keeper climbed the spiral stairs every evening at dusk, carrying a "
    "brass lantern and a notebook. He wrote down the colour of the sea, the direction of "
    "the wind, and the names of the ships that passed the point. In forty years he had "
    "filled two hundred notebooks, and he kept them in wooden crates beneath his bed. "
    "When the harbour master asked why he bothered, he said that somebody ought to "
    "remember what the water looked like on ordinary days, because nobody ever writes "
    "those down."
)
TASKS = {
    "copy": (
        f"Passage:\n{PASSAGE}\n\nCopy the passage above exactly, word for word.\n\nCopy:\n",
        0.0,
    ),
    "free": ("Once upon a time, in a village at the edge of a great forest,", 0.8),
}


# Per localserve configuration: [generated, drafted, accepted] tokens, this task and count.
DRAFTS: dict[str, list[int]] = {}


async def localserve_request(
    client: httpx.AsyncClient,
    task: str,
    tokens: int,
    seed: int,
    speculative: bool,
    tally: list[int] | None = None,
) -> int:
    prompt, temperature = TASKS[task]
    body = {
        "model": "tiny",
        "prompt": prompt,
        "raw": True,
        "stream": False,
        "options": {
            "num_predict": tokens,
            "temperature": temperature,
            "seed": seed,
            "ignore_eos": True,
            "speculative": speculative,
        },
    }
    answer = (await client.post("/api/generate", json=body)).json()
    if tally is not None:
        tally[0] += int(answer["eval_count"])
        tally[1] += int(answer.get("draft_count", 0))
        tally[2] += int(answer.get("draft_accepted_count", 0))
    return int(answer["eval_count"])


async def server_request(client: httpx.AsyncClient, task: str, tokens: int, seed: int) -> int:
    prompt, temperature = TASKS[task]
    body = {
        "prompt": prompt,
        "n_predict": tokens,
        "temperature": temperature,
        "seed": seed,
        "ignore_eos": True,
        "cache_prompt": True,
    }
    answer = (await client.post("/completion", json=body)).json()
    return int(answer["tokens_predicted"])


async def rate(send: Callable[[int], Any], streams: int) -> float:
    started = time.perf_counter()
    counts = await asyncio.gather(*(send(i) for i in range(streams)))
    return sum(counts) / (time.perf_counter() - started)


async def measure(args: argparse.Namespace, urls: dict[str, str]) -> None:
    clients = {name: httpx.AsyncClient(base_url=url, timeout=600) for name, url in urls.items()}
    try:

        def sender(config: str, task: str, rep: int) -> Callable[[int], Any]:
            if config.startswith("localserve"):
                speculative = config != "localserve off"
                client = clients[
                    "localserve draft" if config == "localserve draft" else "localserve"
                ]
                # Counted in the measured rounds only (rep -1 is the warm-up).
                tally = DRAFTS.setdefault(config, [0, 0, 0]) if rep >= 0 else None
                return lambda i: localserve_request(
                    client, task, args.tokens, rep * 100 + i, speculative, tally
                )
            client = clients[config]
            return lambda i: server_request(client, task, args.tokens, rep * 100 + i)

        configs = ["localserve off", "localserve ngram", "llama-server", "llama-server ngram"]
        if "localserve draft" in clients:
            configs += ["localserve draft", "llama-server draft"]
        for task in TASKS:
            for streams in args.streams:
                rates: dict[str, list[float]] = {c: [] for c in configs}
                DRAFTS.clear()
                for config in configs:  # warm-up: loads, caches the prompt
                    await rate(sender(config, task, -1), streams)
                for rep in range(args.reps):
                    order = configs if rep % 2 == 0 else list(reversed(configs))
                    for config in order:
                        rates[config].append(await rate(sender(config, task, rep), streams))
                median = {c: statistics.median(r) for c, r in rates.items()}
                base = median["localserve off"]
                line = ", ".join(f"{c} {median[c]:.1f}" for c in configs)
                ratios = (
                    f"ngram/off {median['localserve ngram'] / base:.2f}x, ngram/llama-server "
                    f"ngram {median['localserve ngram'] / median['llama-server ngram']:.2f}x"
                )
                if "localserve draft" in median:
                    ratios += (
                        f", draft/off {median['localserve draft'] / base:.2f}x, "
                        f"draft/llama-server draft "
                        f"{median['localserve draft'] / median['llama-server draft']:.2f}x"
                    )
                print(f"{task:>4}, {streams} stream(s): {line} tok/s; {ratios}", flush=True)
                # What drafting cost in rows fed: rejected drafted tokens per token made
                # (each is a row of the output layer that bought nothing).
                for config, (made, drafted, kept) in DRAFTS.items():
                    if drafted:
                        print(
                            f"      {config}: drafted {drafted}, accepted {kept}, rejected "
                            f"rows per generated token {(drafted - kept) / max(made, 1):.3f}",
                            flush=True,
                        )
    finally:
        for client in clients.values():
            await client.aclose()


def main(args: argparse.Namespace) -> None:
    parallel = max(args.streams)
    with tempfile.TemporaryDirectory() as folder:
        env = {"LOCALSERVE_NUM_PARALLEL": str(parallel), "LOCALSERVE_SPECULATIVE": "ngram"}
        daemon = start_daemon(Path(folder) / "home", gemma_path(), env=env)
        drafting = draft_server = None
        if args.draft:
            draft = truncate_layers(gemma_path(), Path(folder) / "draft.gguf", args.draft_layers)
            home = Path(folder) / "home-draft"
            add_model(home, draft, "gemma-draft")
            drafting = start_daemon(
                home, gemma_path(), env={**env, "LOCALSERVE_SPECULATIVE": "gemma-draft"}
            )
            draft_server, draft_url = start_llama_server(
                gemma_path(),
                parallel=parallel,
                ctx_per_slot=4096,
                threads=2,
                extra=("--model-draft", str(draft)),
            )
        plain, plain_url = start_llama_server(
            gemma_path(), parallel=parallel, ctx_per_slot=4096, threads=2
        )
        spec, spec_url = start_llama_server(
            gemma_path(),
            parallel=parallel,
            ctx_per_slot=4096,
            threads=2,
            extra=("--spec-type", "ngram-simple"),
        )
        try:
            urls = {
                "localserve": daemon.url,
                "llama-server": plain_url,
                "llama-server ngram": spec_url,
            }
            if drafting is not None:
                urls["localserve draft"] = drafting.url
                urls["llama-server draft"] = draft_url
            asyncio.run(measure(args, urls))
        finally:
            stop(plain)
            stop(spec)
            stop_daemon(daemon)
            if drafting is not None:
                stop_daemon(drafting)
            if draft_server is not None:
                stop(draft_server)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--draft", action="store_true", help="also draft with a small model")
    parser.add_argument("--draft-layers", type=int, default=6)
    main(parser.parse_args())
