"""The runner process: ``python -m localserve.engine.runner``, one per loaded model.

It owns one llama.cpp model. The daemon starts it and sends a LoadRequest frame on
stdin; the runner loads (engine/loading.py) and answers with RunnerInfo (or a
LoadFailure, and exits). Then requests come in and events go back on the original
stdout (runtime/protocol.py). File descriptor 1 is pointed at stderr right away so
that nothing printed by llama.cpp or a stray ``print`` can corrupt the protocol stream.

One thread does everything: wait for input (blocking only when idle), hand
requests to the engine (their jobs made by engine/prepare.py) or to the queues of
embeddings and rerank pairs (engine/pooled.py), compute one pack of each queue, run
one engine step, write the answers and events in one frame. If llama.cpp crashes or aborts, only this
process dies; the daemon sees its pipe close and fails the requests it had in
flight. If the daemon dies, the kernel kills this process too (PR_SET_PDEATHSIG),
so no orphan keeps RAM or VRAM.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import logging
import os
import select
import signal
import sys
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from localserve.config import debug_enabled
from localserve.engine.loading import Loaded, Loader
from localserve.engine.pooled import PooledQueue, PooledRequest
from localserve.engine.prepare import JobBuilder, request_of
from localserve.errors import InvalidOptionError, LocalserveError
from localserve.runtime.framing import FrameReader, write_frame
from localserve.runtime.protocol import (
    EmbedJob,
    EmbedResult,
    ErrorEvent,
    ErrorKind,
    Event,
    GenerateJob,
    LoadFailure,
    LoadRequest,
    Op,
    RankJob,
    RankResult,
    Reply,
    Request,
    TokenCount,
    event_to_wire,
    reply_to_wire,
)
from localserve.runtime.tokens import (
    Detokenized,
    DetokenizeJob,
    RenderedPrompt,
    TokenizeJob,
    Tokens,
)

if TYPE_CHECKING:
    from localserve.engine.embed import Embedder
    from localserve.engine.job import Job
    from localserve.engine.rank import Ranker

log = logging.getLogger("localserve.runner")


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


class Runner:
    """Serves requests to one loaded model over the pipe's frames."""

    def __init__(self, out_fd: int, loaded: Loaded) -> None:
        self.out_fd = out_fd
        self.loaded = loaded
        self.engine = loaded.engine
        self.jobs = JobBuilder(loaded)
        # Embeddings and rerank scores: a context each, made on the first request (a
        # model used only for chat never pays for it), and a queue that packs the
        # requests' sequences together between engine steps (pooled.py).
        self.embedder: Embedder | None = None
        self.embeddings: PooledQueue[list[float]] | None = None
        self.ranker: Ranker | None = None
        self.rankings: PooledQueue[float] | None = None
        self._ops: dict[Op, Callable[[Request], list[Reply]]] = {
            Op.GENERATE: self._generate,
            Op.CANCEL: self._cancel,
            Op.EMBED: self._embed,
            Op.RANK: self._rank,
            Op.COUNT: self._count,
            Op.TOKENIZE: self._tokenize,
            Op.DETOKENIZE: self._detokenize,
            Op.RENDER: self._render,
            Op.STATS: self._stats,
        }
        # Prompts with images or sounds are built on a thread of their own (decoding a
        # photo or a long recording takes from tens of ms to seconds), so that streams
        # already generating keep getting tokens meanwhile; the loop submits the jobs
        # when they are ready. llama-server tokenizes media in its HTTP threads too.
        self.preparing: dict[str, concurrent.futures.Future[list[Job]]] = {}
        self.cancelled_early: set[str] = set()  # cancelled while still being prepared
        self._preparer: concurrent.futures.ThreadPoolExecutor | None = None
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)

    def send(self, message: dict[str, Any]) -> None:
        write_frame(self.out_fd, message)

    # -------------------------------------------------------------- requests

    def handle(self, message: dict[str, Any]) -> list[Reply]:
        """Act on one request frame; returns the answers to send at once (errors, replies)."""
        request_id = str(message.get("id", ""))
        try:
            request = Request.from_wire(message)
            act = self._ops.get(request.op)
            if act is None:
                raise InvalidOptionError(f"unknown op {request.op.value!r}")
            return act(request)
        except LocalserveError as exc:
            return [ErrorEvent.of(request_id, exc)]
        except TypeError as exc:  # a job with fields of the wrong shape: a daemon bug
            return [ErrorEvent(request_id, f"malformed request: {exc}", ErrorKind.INVALID)]

    def _generate(self, request: Request) -> list[Reply]:
        job = request.job
        assert isinstance(job, GenerateJob)
        # Aside while others generate, or behind a request being prepared.
        if job.media_count() and (self.engine.has_work() or self.preparing):
            self._prepare_aside(request.id, job)
        else:
            self._submit(self.jobs.build(request.id, job))
        return []

    def _cancel(self, request: Request) -> list[Reply]:
        self.cancel(request.id)
        return []

    def cancel(self, request_id: str) -> None:
        """End a request's answers (done_reason "cancel"), or the request once prepared."""
        if request_id in self.preparing:
            self.cancelled_early.add(request_id)
        for job_id in [j for j in self.engine.jobs if request_of(j)[0] == request_id]:
            self.engine.cancel(job_id)
        for queue in self._pooled():
            queue.cancel(request_id)

    def _embed(self, request: Request) -> list[Reply]:
        """Queue the inputs; the loop computes them a pack at a time between engine steps."""
        job = request.job
        assert isinstance(job, EmbedJob)
        embedder, queue = self._embedder()
        items = embedder.prepare(job.inputs, truncate=job.truncate)
        tokens = sum(len(item) for item in items)

        def answer(vectors: list[list[float]], took: int) -> Reply:
            return EmbedResult(request.id, vectors, tokens, took)

        return queue.submit(PooledRequest(request.id, items, answer))

    def _rank(self, request: Request) -> list[Reply]:
        """Queue the pairs; scored a pack at a time between engine steps, as embeddings."""
        job = request.job
        assert isinstance(job, RankJob)
        ranker, queue = self._ranker()
        items = ranker.pairs(job.query, job.documents)
        tokens = sum(len(item) for item in items)

        def answer(scores: list[float], took: int) -> Reply:
            return RankResult(request.id, scores, tokens, took)

        return queue.submit(PooledRequest(request.id, items, answer))

    def _embedder(self) -> tuple[Embedder, PooledQueue[list[float]]]:
        """The embedding context and its queue, made on the first embed request."""
        from localserve.engine.embed import Embedder

        if self.embedder is None or self.embeddings is None:
            loaded = self.loaded
            self.embedder = Embedder(loaded.model, loaded.options, n_threads=loaded.n_threads)
            self.embeddings = PooledQueue(self.embedder)
        return self.embedder, self.embeddings

    def _ranker(self) -> tuple[Ranker, PooledQueue[float]]:
        """The rank context and its queue, made on the first rank request."""
        from localserve.engine.rank import Ranker

        if self.ranker is None or self.rankings is None:
            loaded = self.loaded
            self.ranker = Ranker(loaded.model, loaded.options, n_threads=loaded.n_threads)
            self.rankings = PooledQueue(self.ranker)
        return self.ranker, self.rankings

    def _pooled(self) -> list[PooledQueue[Any]]:
        return [q for q in (self.embeddings, self.rankings) if q is not None]

    def _count(self, request: Request) -> list[Reply]:
        """The prompt's length, answered at once: no slot, no step of the engine."""
        job = request.job
        assert isinstance(job, GenerateJob)
        return [TokenCount(request.id, self.jobs.count(job))]

    # Tokens and templates are answered at once too: no slot, no step of the engine.

    def _tokenize(self, request: Request) -> list[Reply]:
        from localserve.engine.tokens import tokenize

        job = request.job
        assert isinstance(job, TokenizeJob)
        tokens, pieces = tokenize(self.loaded.model, job)
        return [Tokens(request.id, tokens, pieces)]

    def _detokenize(self, request: Request) -> list[Reply]:
        from localserve.engine.tokens import detokenize

        job = request.job
        assert isinstance(job, DetokenizeJob)
        return [Detokenized(request.id, detokenize(self.loaded.model, job))]

    def _render(self, request: Request) -> list[Reply]:
        job = request.job
        assert isinstance(job, GenerateJob)
        return [RenderedPrompt(request.id, self.jobs.render(job))]

    def _stats(self, request: Request) -> list[Reply]:
        stats = self.engine.describe(request.id)
        pooled = [q.stats for q in self._pooled()]
        packs = sum(s.packs for s in pooled)
        shared = sum(s.shared_packs for s in pooled)
        waiting = sum(len(q.waiting) for q in self._pooled())
        return [
            replace(stats, pooled_packs=packs, pooled_shared_packs=shared, pooled_waiting=waiting)
        ]

    def _prepare_aside(self, request_id: str, request: GenerateJob) -> None:
        """Build the request's jobs on the preparing thread; ``prepared`` submits them."""
        if self._preparer is None:
            self._preparer = concurrent.futures.ThreadPoolExecutor(1, "prepare")
        future = self._preparer.submit(self.jobs.build, request_id, request)
        self.preparing[request_id] = future
        future.add_done_callback(lambda _: os.write(self._wake_write, b"."))

    def prepared(self) -> list[Reply]:
        """Submit the jobs whose prompts are ready; the errors of those that failed."""
        with contextlib.suppress(BlockingIOError):
            os.read(self._wake_read, 1024)
        errors: list[Reply] = []
        for request_id, future in list(self.preparing.items()):
            if not future.done():
                continue
            del self.preparing[request_id]
            try:
                self._submit(future.result())
            except Exception as exc:  # one request's failure ends that request only
                self.cancelled_early.discard(request_id)
                errors.append(ErrorEvent.of(request_id, exc))
                continue
            if request_id in self.cancelled_early:
                self.cancelled_early.discard(request_id)
                self.cancel(request_id)
        return errors

    def _submit(self, jobs: list[Job]) -> None:
        for job in jobs:
            self.engine.submit(job)

    # ------------------------------------------------------------------ loop

    def has_work(self) -> bool:
        return self.engine.has_work() or any(q.has_work() for q in self._pooled())

    def serve(self, in_fd: int, reader: FrameReader) -> None:
        while True:
            busy = self.has_work()
            watched = [in_fd, self._wake_read]
            readable, _, _ = select.select(watched, [], [], 0 if busy else None)
            events: list[dict[str, Any]] = []
            if self._wake_read in readable:
                events.extend(reply_to_wire(r) for r in self.prepared())
            if in_fd in readable:
                data = os.read(in_fd, 1 << 20)
                if not data:
                    return  # the daemon closed our stdin: it is gone or wants us gone
                for message in reader.feed(data):
                    if message.get("op") == Op.SHUTDOWN:
                        return
                    events.extend(reply_to_wire(r) for r in self.handle(message))
            if events and self.has_work():
                # Answers made at once (counts, tokens, errors) go before the step, not
                # a whole decode later: a busy model still answers them in about a step.
                self.send({"events": events})
                events = []
            for queue in self._pooled():  # one pack each, then one step of the streams
                if queue.has_work():
                    events.extend(reply_to_wire(r) for r in queue.step())
            if self.engine.has_work():
                events.extend(event_to_wire(_as_choice(e)) for e in self.engine.step())
            if events:
                self.send({"events": events})

    def close(self) -> None:
        if self._preparer is not None:  # it may be using the projector and the model
            self._preparer.shutdown(wait=True, cancel_futures=True)
        if self.embedder is not None:
            self.embedder.close()
        if self.ranker is not None:
            self.ranker.close()
        self.loaded.close()


def _as_choice(event: Event) -> Event:
    """An engine event as the daemon sees it: its request's id and the answer index."""
    request_id, choice = request_of(event.id)
    return replace(event, id=request_id, choice=choice) if choice else event


def main(argv: list[str] | None = None) -> int:
    # The protocol keeps the real stdout; fd 1 becomes stderr for everyone else.
    out_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the daemon decides when we stop
    _die_with_parent()
    level = logging.DEBUG if debug_enabled() else logging.WARNING
    logging.basicConfig(level=level, stream=sys.stderr, format="%(message)s")

    reader = FrameReader()
    in_fd = 0
    first: dict[str, Any] | None = None
    while first is None:
        data = os.read(in_fd, 1 << 20)
        if not data:
            return 0
        messages = reader.feed(data)
        if messages:
            first = messages[0]
    try:
        loaded = Loader().load(LoadRequest.from_wire(first))
    except LocalserveError as exc:
        write_frame(out_fd, LoadFailure.of(exc).to_wire())
        return 1
    runner = Runner(out_fd, loaded)
    runner.send(loaded.info.to_wire())
    try:
        runner.serve(in_fd, reader)
    finally:
        runner.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
