"""Load: 64 concurrent streaming clients against 4 slots and a queue of 16.

What "queue" counts (scheduler.py): every request is admitted first, then takes a slot
of the resident model; ``Scheduler.waiting()`` is the admitted requests not holding a
slot, and a request arriving while ``waiting() >= LOCALSERVE_MAX_QUEUE`` gets 503 at
once. So with the model loaded, the daemon holds

    4 running (NUM_PARALLEL) + 16 waiting (MAX_QUEUE) = 20 admitted;  64 - 20 = 44 refused.

That arithmetic is exact only if no slot frees while the 64 are still arriving, and on
a shared 2-core machine decode speed swings tenfold, so no output length guarantees it.
Instead the runner process is frozen (SIGSTOP) while the clients arrive: admission is
the daemon's alone, so it runs as usual, but nothing can finish. Once every refusal is
in, the runner is thawed (SIGCONT) and the admitted streams run to the end. Outputs
have a fixed length (``ignore_eos``), so a whole stream is checkable: it ends with its
done line or ``[DONE]`` and has exactly the requested number of tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support.daemon import Daemon, running_daemon

SLOTS = 4
QUEUE = 16
CLIENTS = 64
ADMITTED = SLOTS + QUEUE
REFUSED = CLIENTS - ADMITTED

TOKENS = 24  # per stream: 20 streams on 4 slots take about a second on the tiny model
REFUSED_WITHIN = 30.0  # seconds to a 503; refused while frozen is the real proof
ALL_REFUSED_WITHIN = 60.0  # give up waiting for the 44th refusal after this
CLIENT_TIMEOUT = 90.0  # no client may wait longer than this for its whole answer

GENERATE = "/api/generate"
CHAT = "/v1/chat/completions"


@dataclass
class Outcome:
    """What one client saw."""

    path: str
    tokens: int  # requested
    sent: float = 0.0
    status: int | None = None
    answered: float | None = None  # response headers arrived
    finished: float | None = None
    retry_after: str | None = None
    body: Any = None  # a refusal's JSON body
    text: str = ""
    count: int | None = None  # tokens the server reports having generated
    reason: str | None = None
    ended: bool = False  # saw the done line / [DONE]
    stream_errors: list[Any] = field(default_factory=list)
    timed_out: bool = False


def request_body(path: str, tokens: int, index: int) -> dict[str, Any]:
    options = {"temperature": 0, "ignore_eos": True}
    if path == GENERATE:
        return {
            "model": "tiny",
            "prompt": f"client {index} says hello",
            "options": {**options, "num_predict": tokens},
        }
    return {
        "model": "tiny",
        "messages": [{"role": "user", "content": f"client {index} says hello"}],
        "max_tokens": tokens,
        "options": options,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def read_ndjson(response: httpx.Response, outcome: Outcome) -> None:
    async for line in response.aiter_lines():
        if not line.strip():
            continue
        event = json.loads(line)
        if "error" in event:
            outcome.stream_errors.append(event)
        elif event["done"]:
            outcome.ended = True
            outcome.count = event["eval_count"]
            outcome.reason = event["done_reason"]
        else:
            outcome.text += event["response"]


async def read_sse(response: httpx.Response, outcome: Outcome) -> None:
    async for line in response.aiter_lines():
        if not line.startswith("data: "):
            continue
        data = line.removeprefix("data: ")
        if data == "[DONE]":
            outcome.ended = True
            continue
        chunk = json.loads(data)
        if "error" in chunk:
            outcome.stream_errors.append(chunk)
            continue
        for choice in chunk["choices"]:
            outcome.text += choice["delta"].get("content") or ""
            outcome.reason = choice["finish_reason"] or outcome.reason
        if chunk.get("usage"):
            outcome.count = chunk["usage"]["completion_tokens"]


async def stream_one(client: httpx.AsyncClient, outcome: Outcome, index: int) -> Outcome:
    async def run() -> None:
        outcome.sent = time.monotonic()
        body = request_body(outcome.path, outcome.tokens, index)
        async with client.stream("POST", outcome.path, json=body) as response:
            outcome.status = response.status_code
            outcome.answered = time.monotonic()
            if response.status_code != 200:
                outcome.retry_after = response.headers.get("retry-after")
                outcome.body = json.loads(await response.aread())
            elif outcome.path == GENERATE:
                await read_ndjson(response, outcome)
            else:
                await read_sse(response, outcome)
        outcome.finished = time.monotonic()

    try:
        await asyncio.wait_for(run(), CLIENT_TIMEOUT)
    except (TimeoutError, httpx.TimeoutException):
        outcome.timed_out = True
    return outcome


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def requests_counted(samples: dict[Any, float], route: str, status: int) -> float:
    key = ("localserve_requests_total", (("route", route), ("status", str(status))))
    return samples.get(key, 0.0)


@contextlib.contextmanager
def frozen(pid: int) -> Iterator[None]:
    """The process stopped (SIGSTOP) for the duration, whatever happens inside."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


async def load(daemon: Daemon) -> None:
    limits = httpx.Limits(max_connections=CLIENTS + 8, max_keepalive_connections=CLIENTS + 8)
    async with httpx.AsyncClient(
        base_url=daemon.url, timeout=CLIENT_TIMEOUT, limits=limits, trust_env=False
    ) as client:
        # Load the model first: during a load no request holds a slot, so all admitted
        # ones count as waiting and only 16 would get in.
        loaded = await client.post(GENERATE, json={"model": "tiny"})
        assert loaded.status_code == 200, loaded.text
        [runner] = daemon.children()

        clients = [Outcome(GENERATE if i % 2 == 0 else CHAT, TOKENS) for i in range(CLIENTS)]
        with frozen(runner):
            tasks = [
                asyncio.create_task(stream_one(client, outcome, i))
                for i, outcome in enumerate(clients)
            ]
            deadline = time.monotonic() + ALL_REFUSED_WITHIN
            while sum(o.status == 503 for o in clients) < REFUSED and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            # Admitted streams answer with their first token, so none has answered yet.
            answered = [o.status for o in clients if o.status is not None]
            during = metric_samples((await client.get("/metrics")).text)
        results = await asyncio.gather(*tasks)

        # ---------------------------------------------------------------- checks
        assert answered == [503] * REFUSED, (
            f"expected {REFUSED} refusals while frozen, got {Counter(answered)}"
        )
        assert during[("localserve_busy_slots", ())] == SLOTS
        assert during[("localserve_queue_depth", ())] == QUEUE
        assert not [o for o in results if o.timed_out], "clients timed out: the daemon hung"
        admitted = [o for o in results if o.status == 200]
        refused = [o for o in results if o.status == 503]
        assert (len(admitted), len(refused)) == (ADMITTED, REFUSED)

        for outcome in admitted:
            assert outcome.ended, outcome
            assert not outcome.stream_errors, outcome.stream_errors
            assert outcome.count == outcome.tokens, outcome
            assert outcome.reason == "length", outcome
            assert outcome.text, outcome

        assert {o.path for o in refused} == {GENERATE, CHAT}  # 44 of 32 + 32: both routes
        for outcome in refused:
            assert outcome.answered is not None
            waited = outcome.answered - outcome.sent
            assert waited < REFUSED_WITHIN, f"a 503 took {waited:.2f}s"
            assert outcome.retry_after == "1"
            if outcome.path == CHAT:
                error = outcome.body["error"]
                assert set(error) == {"message", "type", "param", "code"}
                assert error["type"] == "api_error"
                assert "busy" in error["message"]
            else:
                assert "busy" in outcome.body["error"]

        # ------------------------------------------------------------ afterwards
        assert daemon.process.poll() is None, daemon.log_tail()
        assert daemon.children() == [runner]  # the same runner, alive
        ps = (await client.get("/api/ps")).json()
        assert [m["name"] for m in ps["models"]] == ["tiny:latest"]
        fresh = await client.post(
            GENERATE,
            json={
                "model": "tiny",
                "prompt": "after the storm",
                "stream": False,
                "options": {"num_predict": 4, "ignore_eos": True},
            },
        )
        assert fresh.status_code == 200, fresh.text
        assert fresh.json()["eval_count"] == 4

        after = metric_samples((await client.get("/metrics")).text)
        assert after[("localserve_queue_depth", ())] == 0
        assert after[("localserve_busy_slots", ())] == 0
        for path in (GENERATE, CHAT):
            assert requests_counted(after, path, 503) == sum(o.path == path for o in refused)
        # The admitted streams, plus the load and the fresh request on /api/generate.
        assert requests_counted(after, GENERATE, 200) == 2 + sum(
            o.path == GENERATE for o in admitted
        )
        assert requests_counted(after, CHAT, 200) == sum(o.path == CHAT for o in admitted)


def test_64_streams_against_4_slots_and_a_queue_of_16(
    isolated_home: Path, tiny_gguf_path: Path
) -> None:
    env = {"LOCALSERVE_NUM_PARALLEL": str(SLOTS), "LOCALSERVE_MAX_QUEUE": str(QUEUE)}
    with running_daemon(isolated_home, tiny_gguf_path, env=env) as daemon:
        asyncio.run(load(daemon))
