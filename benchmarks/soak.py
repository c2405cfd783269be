"""Soak: a steady mixed load on one daemon for minutes; daemon and runner memory must stay flat.

    python benchmarks/soak.py [--minutes 10] [--model PATH|gemma] [--clients 6] [--json PATH]

On demand, not part of the test suite. Starts a daemon of its own (a temp
LOCALSERVE_HOME, the tiny random model by default, or ``--model``: a GGUF path, or
``gemma`` for Gemma 3 270M from its PyPI package) and keeps ``--clients`` clients busy
with a weighted mix: Ollama and OpenAI generation and chat, streamed and not,
embeddings, streams cancelled after a few tokens, and bad requests (unknown model,
broken JSON, invalid options) that must get their 4xx. Every answer is checked
(whole streams, exact token counts); 5xx answers, timeouts and wrong answers are
counted as failures.

Every ``--every`` seconds it samples VmRSS (/proc/PID/status) of the daemon and of its
runner (the daemon's child process). At the end the median RSS of the first window
after the warm-up is compared with the median of the last window; the exit status is
1 when either process grew by more than ``--max-growth`` (10%), when any request
failed, when the runner was replaced (a restart would hide a leak), or when the daemon
did not stop cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.daemon import Daemon, children_of, rss_kib, start_daemon, stop_daemon  # noqa: E402

MODEL = "tiny"  # the name start_daemon imports the model under
REQUEST_TIMEOUT = 120.0
EMBED_INPUTS = (1, 4)  # inputs per /api/embed request, at least and at most
EMBED_WORDS = (2, 20)  # words per input
WORDS = ["the", "ocean", "lighthouse", "mountain", "city", "night", "train", "moon", "bakery",
         "library", "desert", "chess", "rain", "jazz", "glacier", "market", "river", "forest",
         "engine", "garden", "winter", "letter", "bridge"]  # fmt: skip


class WrongAnswer(Exception):
    """An answer that is not what the request must get."""


@dataclass
class Sample:
    at: float  # seconds since the load started
    daemon_kib: int | None
    runner_pid: int | None
    runner_kib: int | None
    requests: int


# ------------------------------------------------------------------ the request mix


def words(rng: random.Random, count: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(count))


def fixed_length(rng: random.Random) -> tuple[int, dict[str, Any]]:
    tokens = rng.randint(4, 48)
    return tokens, {"num_predict": tokens, "ignore_eos": True, "seed": rng.randint(0, 1 << 30)}


def messages(rng: random.Random) -> list[dict[str, str]]:
    turns: list[dict[str, str]] = []
    for _ in range(rng.randint(0, 2)):
        turns += [
            {"role": "user", "content": words(rng, 6)},
            {"role": "assistant", "content": words(rng, 8)},
        ]
    return [*turns, {"role": "user", "content": f"tell me about {words(rng, 3)}"}]


def expect(condition: bool, what: str) -> None:
    if not condition:
        raise WrongAnswer(what)


def check_status(response: httpx.Response, wanted: int) -> None:
    if response.status_code != wanted:
        raise httpx.HTTPStatusError(
            f"{response.status_code}", request=response.request, response=response
        )


async def generate(client: httpx.AsyncClient, rng: random.Random) -> None:
    tokens, options = fixed_length(rng)
    body = {"model": MODEL, "prompt": words(rng, 12), "stream": False, "options": options}
    response = await client.post("/api/generate", json=body)
    check_status(response, 200)
    expect(response.json()["eval_count"] == tokens, "wrong token count")


def chat_count_ok(count: int | None, tokens: int, reason: str | None) -> bool:
    """A chat generates exactly ``tokens`` (end of generation is ignored), except that
    on a model without a chat template the answer ends where the model starts the
    fallback format's next "User:" turn, a stop string, which ignore_eos leaves on."""
    if count == tokens:
        return True
    return reason == "stop" and count is not None and 0 < count < tokens


async def generate_stream(client: httpx.AsyncClient, rng: random.Random) -> None:
    tokens, options = fixed_length(rng)
    body = {"model": MODEL, "prompt": words(rng, 12), "options": options}
    await ndjson_stream(client, "/api/generate", body, tokens)


async def chat_stream(client: httpx.AsyncClient, rng: random.Random) -> None:
    tokens, options = fixed_length(rng)
    body = {"model": MODEL, "messages": messages(rng), "options": options}
    await ndjson_stream(client, "/api/chat", body, tokens, chat=True)


async def ndjson_stream(
    client: httpx.AsyncClient, path: str, body: dict[str, Any], tokens: int, chat: bool = False
) -> None:
    final: dict[str, Any] = {}
    async with client.stream("POST", path, json=body) as response:
        check_status(response, 200)
        async for line in response.aiter_lines():
            if line.strip():
                event = json.loads(line)
                expect("error" not in event, f"error line: {event}")
                if event.get("done"):
                    final = event
    expect(bool(final), "no done line")
    if chat:
        ok = chat_count_ok(final["eval_count"], tokens, final.get("done_reason"))
        expect(ok, "wrong token count")
    else:
        expect(final["eval_count"] == tokens, "wrong token count")


async def openai_chat(client: httpx.AsyncClient, rng: random.Random) -> None:
    tokens, options = fixed_length(rng)
    body = {"model": MODEL, "messages": messages(rng), "max_tokens": tokens, "options": options}
    response = await client.post("/v1/chat/completions", json=body)
    check_status(response, 200)
    answer = response.json()
    reason = answer["choices"][0]["finish_reason"]
    expect(chat_count_ok(answer["usage"]["completion_tokens"], tokens, reason), "wrong token count")


async def openai_chat_stream(client: httpx.AsyncClient, rng: random.Random) -> None:
    tokens, options = fixed_length(rng)
    body = {
        "model": MODEL,
        "messages": messages(rng),
        "max_tokens": tokens,
        "options": options,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    done = False
    counted = None
    reason = None
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        check_status(response, 200)
        async for line in response.aiter_lines():
            data = line.removeprefix("data: ")
            if not line.startswith("data: "):
                continue
            if data == "[DONE]":
                done = True
                continue
            chunk = json.loads(data)
            expect("error" not in chunk, f"error event: {chunk}")
            if chunk.get("usage"):
                counted = chunk["usage"]["completion_tokens"]
            for choice in chunk.get("choices") or ():
                reason = choice.get("finish_reason") or reason
    expect(done, "no [DONE]")
    expect(chat_count_ok(counted, tokens, reason), "wrong token count")


async def embed(client: httpx.AsyncClient, rng: random.Random) -> None:
    inputs = [words(rng, rng.randint(*EMBED_WORDS)) for _ in range(rng.randint(*EMBED_INPUTS))]
    response = await client.post("/api/embed", json={"model": MODEL, "input": inputs})
    check_status(response, 200)
    expect(len(response.json()["embeddings"]) == len(inputs), "wrong number of embeddings")


async def openai_embeddings(client: httpx.AsyncClient, rng: random.Random) -> None:
    response = await client.post("/v1/embeddings", json={"model": MODEL, "input": words(rng, 9)})
    check_status(response, 200)
    expect(len(response.json()["data"]) == 1, "wrong number of embeddings")


async def cancelled(client: httpx.AsyncClient, rng: random.Random) -> None:
    """A stream the client walks away from after a few tokens (the runner must cancel it)."""
    body = {
        "model": MODEL,
        "prompt": words(rng, 12),
        "options": {"num_predict": 100_000, "ignore_eos": True},
    }
    keep = rng.randint(1, 8)
    async with client.stream("POST", "/api/generate", json=body) as response:
        check_status(response, 200)
        seen = 0
        async for _ in response.aiter_lines():
            seen += 1
            if seen >= keep:
                break  # leaving the block closes the connection mid-stream


BAD_REQUESTS: tuple[tuple[str, str, int], ...] = (
    ("/api/generate", '{"model": "no-such-model", "prompt": "hi"}', 404),
    ("/api/generate", '{"model": "tiny", "prompt": ', 400),
    ("/api/generate", '{"model": "tiny", "prompt": "hi", "options": {"temperature": "hot"}}', 400),
    ("/api/chat", '{"model": "tiny", "messages": "not a list"}', 400),
    ("/v1/chat/completions", '{"model": "tiny"}', 400),
    ("/v1/chat/completions", '{"model": "missing", "messages": [{"role": "user", "content": "x"}]}', 404),
    ("/api/embed", '{"model": "tiny", "input": 5}', 400),
)  # fmt: skip


async def bad_request(client: httpx.AsyncClient, rng: random.Random) -> None:
    path, raw, wanted = rng.choice(BAD_REQUESTS)
    response = await client.post(path, content=raw, headers={"Content-Type": "application/json"})
    check_status(response, wanted)
    error = response.json()["error"]
    expect(bool(error["message"] if path.startswith("/v1") else error), "empty error")


Kind = Callable[[httpx.AsyncClient, random.Random], Awaitable[None]]
MIX: tuple[tuple[Kind, int], ...] = (
    (generate_stream, 6),
    (generate, 3),
    (chat_stream, 4),
    (openai_chat_stream, 4),
    (openai_chat, 2),
    (embed, 3),
    (openai_embeddings, 2),
    (cancelled, 2),
    (bad_request, 3),
)


# ------------------------------------------------------------------------ the run


class Tally:
    def __init__(self) -> None:
        self.done: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.server_errors = 0  # 5xx answers
        self.timeouts = 0
        self.examples: list[str] = []

    @property
    def total(self) -> int:
        return sum(self.done.values()) + sum(self.failed.values())

    def fail(self, kind: str, why: str) -> None:
        self.failed[kind] += 1
        if len(self.examples) < 10:
            self.examples.append(f"{kind}: {why}")


async def client_loop(
    client: httpx.AsyncClient, daemon: Daemon, seed: int, deadline: float, tally: Tally
) -> None:
    rng = random.Random(seed)
    kinds = [kind for kind, _ in MIX]
    weights = [weight for _, weight in MIX]
    while time.monotonic() < deadline and daemon.process.poll() is None:
        kind = rng.choices(kinds, weights)[0]
        name = kind.__name__
        try:
            await asyncio.wait_for(kind(client, rng), REQUEST_TIMEOUT)
            tally.done[name] += 1
        except httpx.HTTPStatusError as exc:
            status = exc.response.status_code
            tally.server_errors += status >= 500
            tally.fail(name, f"status {status}: {exc.response.text[:200]}")
        except (TimeoutError, httpx.TimeoutException):
            tally.timeouts += 1
            tally.fail(name, "timed out")
        except (WrongAnswer, httpx.HTTPError, ValueError, KeyError) as exc:
            tally.fail(name, f"{type(exc).__name__}: {exc}")


async def sampler(
    daemon: Daemon, started: float, deadline: float, every: float, tally: Tally
) -> list[Sample]:
    samples: list[Sample] = []
    while True:
        runners = children_of(daemon.pid)
        runner = runners[0] if runners else None
        samples.append(
            Sample(
                at=time.monotonic() - started,
                daemon_kib=rss_kib(daemon.pid),
                runner_pid=runner,
                runner_kib=rss_kib(runner),
                requests=tally.total,
            )
        )
        if time.monotonic() >= deadline or daemon.process.poll() is not None:
            return samples
        await asyncio.sleep(min(every, max(0.0, deadline - time.monotonic())))


async def touch_buffers(client: httpx.AsyncClient) -> None:
    """Embed the largest batch the mix sends, once, before measuring.

    The embedding context (made on the first embedding request) keeps logits for every
    token of a batch, 1 MiB a token on Gemma's 262k vocabulary, and its pages become
    resident only when first written: without this the runner's RSS climbs in steps
    each time a batch sets a new record (Gemma: +250 MiB over 4 minutes). Warm-up, not
    a leak.
    """
    rng = random.Random(-1)
    inputs = [words(rng, EMBED_WORDS[1] + 4) for _ in range(EMBED_INPUTS[1])]
    embedded = await client.post("/api/embed", json={"model": MODEL, "input": inputs})
    embedded.raise_for_status()


async def soak(
    daemon: Daemon, seconds: float, clients: int, every: float
) -> tuple[Tally, list[Sample]]:
    tally = Tally()
    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(
        base_url=daemon.url, timeout=REQUEST_TIMEOUT, limits=limits, trust_env=False
    ) as client:
        loaded = await client.post("/api/generate", json={"model": MODEL})
        loaded.raise_for_status()
        await touch_buffers(client)
        started = time.monotonic()
        deadline = started + seconds
        watch = asyncio.create_task(sampler(daemon, started, deadline, every, tally))
        await asyncio.gather(
            *(client_loop(client, daemon, i, deadline, tally) for i in range(clients))
        )
        return tally, await watch


def window_median(samples: list[Sample], field: str, start: float, end: float) -> float | None:
    values = [getattr(s, field) for s in samples if start <= s.at <= end]
    values = [v for v in values if v is not None]
    return statistics.median(values) / 1024 if values else None  # MiB


def compare(
    samples: list[Sample], first: tuple[float, float], last: tuple[float, float], limit: float
) -> list[dict[str, Any]]:
    """Median RSS of each process in the two windows, and whether it grew within ``limit``."""
    rows = []
    for name, field in (("daemon", "daemon_kib"), ("runner", "runner_kib")):
        before = window_median(samples, field, *first)
        after = window_median(samples, field, *last)
        growth = (after / before - 1) if before and after else None
        rows.append({"process": name, "first_mib": before, "last_mib": after, "growth": growth,
                     "ok": growth is not None and growth <= limit})  # fmt: skip
    return rows


def report(summary: dict[str, Any], tally: Tally, limit: float) -> None:
    print(f"soak: {summary['minutes']:.1f} min, {summary['clients']} clients, "
          f"{summary['parallel']} slots, model {summary['model']}")  # fmt: skip
    seconds = summary["minutes"] * 60
    print(f"requests: {tally.total} ({tally.total / seconds if seconds else 0:.1f}/s)")
    print(f"  {'kind':<20} {'ok':>7} {'failed':>7}")
    for kind, _ in MIX:
        name = kind.__name__
        print(f"  {name:<20} {tally.done[name]:>7} {tally.failed[name]:>7}")
    print(f"5xx answers: {tally.server_errors}  timeouts: {tally.timeouts}  "
          f"failed: {sum(tally.failed.values())}")  # fmt: skip
    for example in tally.examples:
        print(f"  {example}")
    (a, b), (c, d) = summary["first_window"], summary["last_window"]
    print(f"RSS medians, warm-up {a:.0f}s left out; first window {a:.0f}-{b:.0f}s, "
          f"last {c:.0f}-{d:.0f}s")  # fmt: skip
    print(f"  {'process':<8} {'first MiB':>10} {'last MiB':>10} {'growth':>8}")
    for row in summary["rss"]:
        before = f"{row['first_mib']:.1f}" if row["first_mib"] else "-"
        after = f"{row['last_mib']:.1f}" if row["last_mib"] else "-"
        growth = f"{row['growth']:+.1%}" if row["growth"] is not None else "-"
        verdict = "ok" if row["ok"] else f"FAIL (limit {limit:.0%})"
        print(f"  {row['process']:<8} {before:>10} {after:>10} {growth:>8}  {verdict}")
    if len(summary["runner_pids"]) > 1:
        print(f"the runner was replaced during the run: pids {summary['runner_pids']}")
    if not summary["daemon_alive"]:
        print("the daemon died during the run")
    if b > c:
        print("note: the windows overlap; run longer for a meaningful comparison")
    print("PASS" if summary["passed"] else "FAIL")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the load (10)")
    parser.add_argument("--model", default=None, help="GGUF path, or 'gemma' (default: tiny)")
    parser.add_argument("--clients", type=int, default=6, help="concurrent clients (6)")
    parser.add_argument("--parallel", type=int, default=4, help="LOCALSERVE_NUM_PARALLEL (4)")
    parser.add_argument("--every", type=float, default=5.0, help="seconds between samples (5)")
    parser.add_argument(
        "--warmup", type=float, default=None, help="seconds left out at the start (10%%, <= 60)"
    )
    parser.add_argument(
        "--window", type=float, default=None, help="seconds in each compared window (20%%)"
    )
    parser.add_argument("--max-growth", type=float, default=0.10, help="allowed RSS growth (0.10)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    seconds = args.minutes * 60
    warmup = args.warmup if args.warmup is not None else min(60.0, seconds * 0.1)
    window = args.window if args.window is not None else seconds * 0.2
    work = Path(tempfile.mkdtemp(prefix="localserve-soak-"))
    try:
        if args.model is None:
            from tests.support.tiny_gguf import write_tiny_gguf

            model = write_tiny_gguf(work / "tiny-llama-F32.gguf")
        elif args.model == "gemma":
            from tests.support.tiny_gguf import gemma_path

            model = gemma_path()
        else:
            model = Path(args.model)
        env = {"LOCALSERVE_NUM_PARALLEL": str(args.parallel), "LOCALSERVE_KEEP_ALIVE": "-1"}
        daemon = start_daemon(work / "home", model, env=env)
        clean_stop = True
        try:
            tally, samples = asyncio.run(soak(daemon, seconds, args.clients, args.every))
            daemon_alive = daemon.process.poll() is None
        finally:
            try:
                stop_daemon(daemon)  # never leaves the daemon or a runner behind
            except AssertionError as exc:  # it exited badly, or a runner outlived it
                print(f"the daemon did not stop cleanly: {exc}", file=sys.stderr)
                clean_stop = False
            if not clean_stop or daemon.process.returncode not in (0, None):
                print(daemon.log_tail(20), file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    elapsed = samples[-1].at if samples else 0.0
    first, last = (warmup, warmup + window), (elapsed - window, elapsed)
    rows = compare(samples, first, last, args.max_growth)
    runner_pids = sorted({s.runner_pid for s in samples if s.runner_pid})
    passed = (
        all(row["ok"] for row in rows)
        and not tally.failed
        and len(runner_pids) == 1
        and daemon_alive
        and clean_stop
    )
    summary: dict[str, Any] = {
        "minutes": elapsed / 60,
        "clients": args.clients,
        "parallel": args.parallel,
        "model": model.name,
        "first_window": first,
        "last_window": last,
        "rss": rows,
        "requests": dict(tally.done),
        "failed": dict(tally.failed),
        "server_errors": tally.server_errors,
        "timeouts": tally.timeouts,
        "examples": tally.examples,
        "runner_pids": runner_pids,
        "daemon_alive": daemon_alive,
        "clean_stop": clean_stop,
        "passed": passed,
        "samples": [asdict(s) for s in samples],
    }
    report(summary, tally, args.max_growth)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
