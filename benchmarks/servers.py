"""The servers the benchmark drives, behind one interface: start, stream, rss, close.

- ``localserve``: localserve's engine through its runner process (scheduler/runner_client.py),
  no HTTP: what the engine itself can do.
- ``localserve-http``: the whole daemon (HTTP, routes, scheduler, runner) through
  Ollama's streaming /api/generate. This is the one the targets are about.
- ``llama-server``: llama.cpp's server, streaming /completion (peers.py builds it).
- ``llama-cpp-python``: ``python -m llama_cpp.server``, streaming /v1/completions; it
  serves one request at a time.

Every request is greedy with a fixed number of new tokens. llama_cpp.server cannot
ignore end-of-generation, so its streams may end early: each ``Stream`` carries the
tokens that were really generated, and rates are computed from those.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx

from benchmarks.peers import free_port, start_llama_cpp_python, start_llama_server, stop, wait_http
from tests.support.daemon import children_of, rss_kib


@dataclass
class Stream:
    """One request, timed on the client (``time.perf_counter()`` values)."""

    first: float  # first token arrived (its text)
    last: float  # last token arrived
    end: float  # the response was complete
    tokens: int  # new tokens generated
    wanted: int  # new tokens asked for
    server_prefill_tok_s: float | None = None  # the server's own prompt rate, if it says

    @classmethod
    def finished(
        cls, first: float, last: float, tokens: int, wanted: int, prefill: float | None = None
    ) -> Stream:
        """The stream that just ended; one without any text counts its end as its first
        and last token."""
        end = time.perf_counter()
        return cls(first or end, last or end, end, tokens, wanted, prefill)

    @property
    def decode_tok_s(self) -> float | None:
        """This stream's rate after its first token."""
        if self.tokens < 2 or self.last <= self.first:
            return None
        return (self.tokens - 1) / (self.last - self.first)


class Server(Protocol):
    name: str

    async def start(self) -> None: ...
    async def stream(self, text: str, tokens: int) -> Stream: ...
    def rss_mb(self) -> dict[str, float]: ...
    async def close(self) -> None: ...


def rss_mb(pid: int) -> float:
    return (rss_kib(pid) or 0) / 1024


def _prefill_rate(count: int, cached: int, duration_ns: int) -> float | None:
    return (count - cached) / (duration_ns / 1e9) if duration_ns > 0 else None


class Localserve:
    name = "localserve"

    def __init__(self, model: Path, parallel: int, ctx: int, threads: int) -> None:
        self.args = (model, parallel, ctx, threads)
        self.runner: Any = None

    async def start(self) -> None:
        from localserve.runtime.options import LoadOptions
        from localserve.runtime.protocol import LoadRequest
        from localserve.scheduler.runner_client import RunnerClient

        model, parallel, ctx, threads = self.args
        options = LoadOptions(num_ctx=ctx, num_parallel=parallel, num_thread=threads)
        self.runner = await RunnerClient.start(LoadRequest((model,), options))

    async def stream(self, text: str, tokens: int) -> Stream:
        from localserve.runtime.options import SamplingOptions
        from localserve.runtime.protocol import DoneEvent, GenerateJob, TextEvent

        first = last = 0.0
        done: DoneEvent | None = None
        options = SamplingOptions(temperature=0, num_predict=tokens, ignore_eos=True)
        async for event in self.runner.generate(
            GenerateJob(prompt=text, raw=True, options=options)
        ):
            if isinstance(event, TextEvent):
                last = time.perf_counter()
                first = first or last
            if isinstance(event, DoneEvent):
                done = event
        assert done is not None and done.eval_count == tokens, done
        rate = _prefill_rate(done.prompt_eval_count, done.prompt_cached, done.prompt_eval_duration)
        return Stream.finished(first, last, tokens, tokens, rate)

    def rss_mb(self) -> dict[str, float]:
        return {"runner": rss_mb(self.runner.pid)}

    async def close(self) -> None:
        await self.runner.close()


class LocalserveHTTP:
    """The whole daemon: HTTP, routes, scheduler, runner. Same engine as above."""

    name = "localserve-http"
    model_name = "bench"

    def __init__(self, model: Path, parallel: int, ctx: int, threads: int) -> None:
        self.args = (model, parallel, ctx, threads)
        self.options = {"num_thread": threads}  # load options: every request must agree

    async def start(self) -> None:
        model, parallel, ctx, _ = self.args
        self.home = tempfile.mkdtemp(prefix="localserve-bench-")
        port = free_port()
        env = {**os.environ, "LOCALSERVE_HOME": self.home, "LOCALSERVE_HOST": f"127.0.0.1:{port}",
               "LOCALSERVE_NUM_PARALLEL": str(parallel), "LOCALSERVE_CONTEXT_LENGTH": str(ctx)}  # fmt: skip
        subprocess.run(
            [sys.executable, "-m", "localserve", "import", str(model), self.model_name],
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
        try:
            wait_http(self.url + "/", process=self.process)
        except BaseException:
            self._stop()
            raise
        self.client = httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=64))

    async def stream(self, text: str, tokens: int) -> Stream:

        first = last = 0.0
        final: dict[str, Any] = {}
        options = {**self.options, "temperature": 0, "num_predict": tokens, "ignore_eos": True}
        body = {"model": self.model_name, "prompt": text, "raw": True, "options": options}
        async with self.client.stream("POST", self.url + "/api/generate", json=body) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                event = json.loads(line)
                if event.get("response"):
                    last = time.perf_counter()
                    first = first or last
                if event.get("done"):
                    final = event
        assert final["eval_count"] == tokens, final
        rate = _prefill_rate(final["prompt_eval_count"], 0, final["prompt_eval_duration"])
        return Stream.finished(first, last, tokens, tokens, rate)

    async def load_model(self) -> tuple[float, float]:
        """Load the model (an empty prompt): (client wall seconds, the daemon's load_duration)."""
        t0 = time.perf_counter()
        response = await self.client.post(
            self.url + "/api/generate",
            json={"model": self.model_name, "prompt": "", "options": self.options},
        )
        response.raise_for_status()
        return time.perf_counter() - t0, response.json()["load_duration"] / 1e9

    async def unload_model(self) -> None:
        response = await self.client.post(
            self.url + "/api/generate", json={"model": self.model_name, "keep_alive": 0}
        )
        response.raise_for_status()
        assert not self.runner_pids(), "the runner is still there after keep_alive 0"

    def runner_pids(self) -> list[int]:
        return children_of(self.process.pid)  # a daemon's only children are its runners

    def rss_mb(self) -> dict[str, float]:
        rss = {"daemon": rss_mb(self.process.pid)}
        for pid in self.runner_pids():
            rss["runner"] = rss_mb(pid)
        return rss

    def _stop(self) -> None:
        stop(self.process)
        shutil.rmtree(self.home, ignore_errors=True)

    async def close(self) -> None:
        await self.client.aclose()
        self._stop()


class LlamaServer:
    name = "llama-server"

    def __init__(self, model: Path, parallel: int, ctx: int, threads: int) -> None:
        self.args = (model, parallel, ctx, threads)

    async def start(self) -> None:
        model, parallel, ctx, threads = self.args
        self.process, self.url = start_llama_server(
            model, parallel=parallel, ctx_per_slot=ctx, threads=threads
        )
        # No keep-alive: llama-server drops idle connections, and a POST on a stale one fails.
        self.client = httpx.AsyncClient(
            timeout=600, limits=httpx.Limits(max_connections=64, max_keepalive_connections=0)
        )

    async def stream(self, text: str, tokens: int) -> Stream:

        first = last = 0.0
        timings: dict[str, Any] = {}
        body = {
            "prompt": text,
            "n_predict": tokens,
            "temperature": 0,
            "stream": True,
            "ignore_eos": True,
            "cache_prompt": True,
        }
        async with self.client.stream("POST", self.url + "/completion", json=body) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                event = json.loads(line[6:])
                if event.get("content"):
                    last = time.perf_counter()
                    first = first or last
                if event.get("stop"):
                    timings = event["timings"]
        assert timings["predicted_n"] == tokens, timings
        rate = timings["prompt_per_second"] if timings["prompt_n"] > 0 else None
        return Stream.finished(first, last, tokens, tokens, rate)

    def rss_mb(self) -> dict[str, float]:
        return {"server": rss_mb(self.process.pid)}

    async def close(self) -> None:
        await self.client.aclose()
        stop(self.process)


class LlamaCppPython:
    """``python -m llama_cpp.server``: one request at a time (the others wait)."""

    name = "llama-cpp-python"

    def __init__(self, model: Path, parallel: int, ctx: int, threads: int) -> None:
        self.args = (model, ctx, threads)  # one sequence: the context of one slot

    async def start(self) -> None:
        model, ctx, threads = self.args
        self.process, self.url = start_llama_cpp_python(model, ctx=ctx, threads=threads)
        self.client = httpx.AsyncClient(
            timeout=3600, limits=httpx.Limits(max_connections=64, max_keepalive_connections=0)
        )

    async def stream(self, text: str, tokens: int) -> Stream:

        first = last = 0.0
        pieces = 0
        reason = None
        # repeat_penalty: its server's default is 1.1; the others use 1.0 (none).
        body = {"prompt": text, "max_tokens": tokens, "temperature": 0, "repeat_penalty": 1.0,
                "stream": True}  # fmt: skip
        async with self.client.stream("POST", self.url + "/v1/completions", json=body) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                choice = json.loads(line[6:])["choices"][0]
                if choice["text"]:
                    pieces += 1  # one piece per token, except a character split across tokens
                    last = time.perf_counter()
                    first = first or last
                reason = choice["finish_reason"] or reason
        # It has no ignore_eos: "length" means all `tokens` were generated; after an
        # early stop, the pieces streamed are the count.
        generated = tokens if reason == "length" else pieces
        return Stream.finished(first, last, generated, tokens)

    def rss_mb(self) -> dict[str, float]:
        return {"server": rss_mb(self.process.pid)}

    async def close(self) -> None:
        await self.client.aclose()
        stop(self.process)


SERVERS: dict[str, type[Localserve | LocalserveHTTP | LlamaServer | LlamaCppPython]] = {
    "localserve": Localserve,
    "localserve-http": LocalserveHTTP,
    "llama-server": LlamaServer,
    "llama-cpp-python": LlamaCppPython,
}
