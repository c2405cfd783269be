"""The daemon's side of a runner: start it, talk to it, notice when it dies.

No llama_cpp here: this module only spawns ``python -m localserve.engine.runner``
and speaks runtime/protocol.py over its pipes, from asyncio: it sends the typed
LoadRequest and Requests, and hands back typed answers (RunnerInfo as ``info``,
events, and the one-answer replies: EmbedResult, TokenCount, RunnerStats...); a failed
request raises the exception its ErrorKind names. One reader task receives the runner's frames and routes each
answer to the queue of the request it belongs to. When the pipe closes (the runner
exited, crashed, or was killed), every request still in flight fails at once with
RunnerCrashedError, and ``alive`` turns false.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any, TypeVar

from localserve.errors import RunnerCrashedError
from localserve.runtime.framing import ProtocolError, encode, read_frame
from localserve.runtime.protocol import (
    DoneEvent,
    EmbedJob,
    EmbedResult,
    ErrorEvent,
    Event,
    GenerateJob,
    LoadFailure,
    LoadRequest,
    Op,
    RankJob,
    RankResult,
    Request,
    RequestJob,
    RunnerInfo,
    RunnerStats,
    TokenCount,
    event_from_wire,
    load_reply_from_wire,
)
from localserve.runtime.tokens import (
    Detokenized,
    DetokenizeJob,
    RenderedPrompt,
    TokenizeJob,
    Tokens,
)

log = logging.getLogger("localserve.runner")

_END = object()
Answer = TypeVar(
    "Answer", EmbedResult, RankResult, TokenCount, Tokens, Detokenized, RenderedPrompt, RunnerStats
)


class RunnerClient:
    """A running runner process for one model."""

    def __init__(
        self,
        process: asyncio.subprocess.Process,
        info: RunnerInfo,
        stderr_tail: collections.deque[str],
    ) -> None:
        self.process = process
        self.info = info
        self._stderr_tail = stderr_tail
        self._queues: dict[str, asyncio.Queue[Any]] = {}
        self._ids = itertools.count(1)
        self._write_lock = asyncio.Lock()
        self._reader: asyncio.Task[None] | None = None
        self.exit_reason: str | None = None
        self._closing: str | None = None

    # ---------------------------------------------------------------- start

    @classmethod
    async def start(
        cls,
        load: LoadRequest,
        *,
        env: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> RunnerClient:
        """Spawn a runner and wait until the model is loaded (or it fails)."""
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "localserve.engine.runner",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **(env or {})},
            limit=1 << 20,
        )
        tail: collections.deque[str] = collections.deque(maxlen=30)
        stderr_task = asyncio.create_task(_drain_stderr(process, tail))
        assert process.stdin is not None
        assert process.stdout is not None
        process.stdin.write(encode(load.to_wire()))
        try:
            first = await asyncio.wait_for(read_frame(process.stdout), timeout)
        except (TimeoutError, asyncio.CancelledError):
            await _kill(process)
            raise
        try:
            reply = None if first is None else load_reply_from_wire(first)
        except ProtocolError as exc:
            reply = LoadFailure(str(exc))
        if not isinstance(reply, RunnerInfo):
            await _kill(process)
            await asyncio.wait_for(stderr_task, 5)
            failure = reply or LoadFailure("")
            # No word from the runner: it crashed, and its last log line says why.
            reason = failure.message or _crash_reason(process.returncode, tail)
            raise replace(failure, message=reason).error()
        client = cls(process, reply, tail)
        client._reader = asyncio.create_task(client._read_loop(stderr_task))
        return client

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.exit_reason is None and self.process.returncode is None

    @property
    def in_flight(self) -> int:
        return len(self._queues)

    # -------------------------------------------------------------- requests

    async def generate(self, job: GenerateJob) -> AsyncIterator[Event]:
        """Stream a generation: text, thinking and tool-call events, then a DoneEvent
        for each of the job's ``n`` answers (events carry their answer's ``choice``).

        Stopping the iteration early (the client went away) cancels the request in
        the runner, which frees its slots within one engine step.
        """
        request_id, queue = await self._send(Op.GENERATE, job)
        finished = False
        answers_left = max(1, job.n)
        try:
            while True:
                entry = await queue.get()
                if entry is _END:
                    raise RunnerCrashedError(self._stopped_message())
                event = event_from_wire(entry)
                if event is None:
                    continue  # not an event of a generation: ignore it
                if isinstance(event, ErrorEvent):
                    finished = True
                    raise event.error()
                yield event
                if isinstance(event, DoneEvent):
                    answers_left -= 1
                    if answers_left == 0:
                        finished = True
                        return
        finally:
            self._queues.pop(request_id, None)
            if not finished and self.alive:
                with contextlib.suppress(Exception):
                    await self._write(Request(Op.CANCEL, request_id))

    async def embed(self, inputs: list[str], *, truncate: bool) -> EmbedResult:
        """One pooled, normalised vector per input."""
        return await self._ask(Op.EMBED, EmbedJob(inputs, truncate), EmbedResult)

    async def rank(self, query: str, documents: list[str]) -> RankResult:
        """One relevance score per document, in their order."""
        return await self._ask(Op.RANK, RankJob(query, documents), RankResult)

    async def count_tokens(self, job: GenerateJob) -> TokenCount:
        """The length of the job's prompt in tokens, rendered as its generation would be
        (whole: nothing dropped to fit); nothing is generated and no slot is taken."""
        return await self._ask(Op.COUNT, job, TokenCount)

    async def tokenize(self, job: TokenizeJob) -> Tokens:
        """Text to the model's token ids (with their pieces if asked), between steps."""
        return await self._ask(Op.TOKENIZE, job, Tokens)

    async def detokenize(self, job: DetokenizeJob) -> Detokenized:
        """Token ids to text, between steps."""
        return await self._ask(Op.DETOKENIZE, job, Detokenized)

    async def render(self, job: GenerateJob) -> RenderedPrompt:
        """The job's prompt as text, as its generation would render it, between steps."""
        return await self._ask(Op.RENDER, job, RenderedPrompt)

    async def stats(self) -> RunnerStats:
        """The engine's slots, caches and counters now."""
        return await self._ask(Op.STATS, None, RunnerStats)

    async def _ask(self, op: Op, job: RequestJob | None, answer: type[Answer]) -> Answer:
        """A request with one answer, of type ``answer``."""
        request_id, queue = await self._send(op, job)
        answered = False
        try:
            reply = await queue.get()
            answered = True
        finally:
            self._queues.pop(request_id, None)
            if not answered and self.alive:  # the client went away: drop queued work
                with contextlib.suppress(Exception):
                    await self._write(Request(Op.CANCEL, request_id))
        if reply is _END:
            raise RunnerCrashedError(self._stopped_message())
        error = event_from_wire(reply)
        if isinstance(error, ErrorEvent):
            raise error.error()
        return answer.from_wire(reply)

    def _stopped_message(self) -> str:
        if self._closing:
            return self._closing
        return f"the model runner stopped: {self.exit_reason}"

    async def _send(self, op: Op, job: RequestJob | None) -> tuple[str, asyncio.Queue[Any]]:
        """Send a request under a new id; its answers will arrive on the queue."""
        if not self.alive:
            raise RunnerCrashedError(self._stopped_message())
        request_id = f"r{next(self._ids)}"
        queue: asyncio.Queue[Any] = asyncio.Queue()
        self._queues[request_id] = queue
        try:
            await self._write(Request(op, request_id, job))
        except (ConnectionError, RuntimeError) as exc:
            self._queues.pop(request_id, None)
            raise RunnerCrashedError(f"the model runner stopped: {exc}") from exc
        return request_id, queue

    async def _write(self, request: Request) -> None:
        stdin = self.process.stdin
        assert stdin is not None
        async with self._write_lock:
            stdin.write(encode(request.to_wire()))
            await stdin.drain()

    async def _read_loop(self, stderr_task: asyncio.Task[None]) -> None:
        stdout = self.process.stdout
        assert stdout is not None
        try:
            while True:
                frame = await read_frame(stdout)
                if frame is None:
                    break
                for event in frame.get("events", ()):
                    queue = self._queues.get(str(event.get("id")))
                    if queue is not None:
                        queue.put_nowait(event)
        except Exception as exc:  # a corrupted stream counts as a dead runner
            log.error("runner %s: bad frame: %s", self.pid, exc)
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
        returncode = await self.process.wait()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(stderr_task, 2)
        self.exit_reason = self._closing or _crash_reason(returncode, self._stderr_tail)
        for queue in self._queues.values():
            queue.put_nowait(_END)

    # ----------------------------------------------------------------- stop

    async def close(self, timeout: float = 5.0, *, reason: str = "the model was unloaded") -> None:
        """Ask the runner to exit; kill it if it does not within ``timeout``.

        Requests still in flight fail with RunnerCrashedError carrying ``reason``.
        """
        self._closing = reason
        if self.process.returncode is None:
            with contextlib.suppress(Exception):
                await self._write(Request(Op.SHUTDOWN))
            try:
                await asyncio.wait_for(self.process.wait(), timeout)
            except TimeoutError:
                await _kill(self.process)
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader, timeout)
        self.exit_reason = reason


async def _drain_stderr(process: asyncio.subprocess.Process, tail: collections.deque[str]) -> None:
    """Forward the runner's log lines (llama.cpp's included) and keep the last few for
    error messages: when llama.cpp aborts, its last line says why."""
    assert process.stderr is not None
    while line := await process.stderr.readline():
        text = line.decode("utf-8", "replace").rstrip()
        if text:
            tail.append(text)
            log.info("runner %s: %s", process.pid, text)


async def _kill(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        process.kill()
    await process.wait()


def _crash_reason(returncode: int | None, tail: collections.deque[str]) -> str:
    if returncode is None:
        return "unknown"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        what = f"killed by {name}"
    else:
        what = f"exited with code {returncode}"
    if returncode in (0, -signal.SIGKILL, -signal.SIGTERM):
        return what  # stopped from outside: its last log line says nothing about why
    # An abort or a crash inside llama.cpp: its last line (a GGML_ASSERT...) says why.
    last = next((line for line in reversed(tail) if line.strip()), "")
    return f"{what}: {last}" if last else what
