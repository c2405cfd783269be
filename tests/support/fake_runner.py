"""A scripted stand-in for scheduler/runner_client.py's RunnerClient: the scheduler's and the
routes' tests run in-process against it, with no llama.cpp.

Every generation yields ``TextEvent("Hello")``, waits for its job's ``gate`` (an
``asyncio.Event`` on a :class:`GatedJob`), then yields the runner's ``script`` (by
default ``" world"``) and a done event with ``eval_count`` 2. Its ``info`` is a
RunnerInfo as a CPU-only load of the files would give; ``embed`` answers with a
vector of two halves per input, ``rank`` scores each document by its length in
characters, ``count_tokens`` with :data:`COUNTED` tokens,
``tokenize`` with a text's UTF-8 bytes as its ids (``detokenize`` the reverse),
``render`` with each message as a ``role: content`` line, ``stats`` with the slots in use.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from localserve.errors import EngineError, RunnerCrashedError
from localserve.runtime.options import LoadOptions
from localserve.runtime.protocol import (
    DoneEvent,
    EmbedResult,
    Event,
    GenerateJob,
    LoadRequest,
    RankResult,
    RunnerInfo,
    RunnerStats,
    TextEvent,
    TokenCount,
)
from localserve.runtime.tokens import (
    Detokenized,
    DetokenizeJob,
    RenderedPrompt,
    TokenizeJob,
    Tokens,
)
from localserve.scheduler.scheduler import ModelRequest, Scheduler
from localserve.store.manifest import BlobEntry, HubSource, Manifest
from localserve.store.refs import parse_ref
from localserve.store.store import ModelStore

T = TypeVar("T")
ID = "r1"  # the request id on the fake's events (the real client's are per request)
COUNTED = 7  # every prompt's length, for count_tokens
_pids = itertools.count(50_000)


@dataclass(frozen=True, eq=False)
class GatedJob(GenerateJob):
    """A job whose generation holds after its first token until ``gate`` is set."""

    gate: asyncio.Event | None = field(default=None, compare=False)


class FakeRunner:
    """One "runner process": generations wait for their request's ``gate``; ``kill()``
    and ``close()`` fail every generation in flight, as the real client does."""

    def __init__(
        self, paths: Sequence[Path], options: LoadOptions, script: Sequence[Event] | None = None
    ) -> None:
        self.paths = list(paths)
        self.options = options
        self._pid = next(_pids)
        self.info = fake_info(self._pid, self.paths, options)
        self._slots = asyncio.Semaphore(options.num_parallel)
        self._stopped = asyncio.Event()
        self.exit_reason: str | None = None
        self._closing: str | None = None
        self.requests: list[GenerateJob] = []  # every generate() received
        self.counted: list[GenerateJob] = []  # every count_tokens() received
        self.active = 0  # generations holding a slot
        self.cancelled = 0  # generations the caller stopped before their done event
        self.close_reasons: list[str] = []
        # What each generation yields after its first token and its gate (then done).
        self.script: list[Event] = list(script) if script is not None else [TextEvent(ID, " world")]

    @property
    def alive(self) -> bool:
        return self.exit_reason is None

    @property
    def pid(self) -> int:
        return self._pid

    def kill(self, why: str = "killed by SIGKILL") -> None:
        """The process dies: in-flight requests fail, ``alive`` turns false."""
        self.exit_reason = why
        self._stopped.set()

    def _message(self) -> str:
        return self._closing or f"the model runner stopped: {self.exit_reason}"

    async def _until(self, awaitable: Awaitable[T]) -> T:
        """``awaitable``'s result, or RunnerCrashedError if the runner stops first."""
        work = asyncio.ensure_future(awaitable)
        stop = asyncio.ensure_future(self._stopped.wait())
        try:
            await asyncio.wait({work, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (work, stop):
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
        if not work.done() or work.cancelled() or self._stopped.is_set():
            raise RunnerCrashedError(self._message())
        return work.result()

    async def generate(self, job: GenerateJob) -> AsyncIterator[Event]:
        if not self.alive:
            raise RunnerCrashedError(self._message())
        self.requests.append(job)
        finished = False
        await self._until(self._slots.acquire())
        self.active += 1
        try:
            yield TextEvent(ID, "Hello")
            gate: asyncio.Event | None = getattr(job, "gate", None)
            if gate is not None:
                await self._until(gate.wait())
            if not self.alive:
                raise RunnerCrashedError(self._message())
            for event in self.script:
                yield event
            finished = True
            yield DoneEvent(ID, "stop", eval_count=2)
        finally:
            self.active -= 1
            self._slots.release()
            if not finished and self.alive:
                self.cancelled += 1

    async def embed(self, inputs: list[str], *, truncate: bool) -> EmbedResult:
        if not self.alive:
            raise RunnerCrashedError(self._message())
        return EmbedResult(ID, [[0.5, 0.5] for _ in inputs], len(inputs), 1)

    async def rank(self, query: str, documents: list[str]) -> RankResult:
        if not self.alive:
            raise RunnerCrashedError(self._message())
        return RankResult(ID, [float(len(d)) for d in documents], len(documents), 1)

    async def count_tokens(self, job: GenerateJob) -> TokenCount:
        if not self.alive:
            raise RunnerCrashedError(self._message())
        self.counted.append(job)
        return TokenCount(ID, COUNTED)

    async def tokenize(self, job: TokenizeJob) -> Tokens:
        """A text's UTF-8 bytes as its ids (ids in a mixed list kept)."""
        if not self.alive:
            raise RunnerCrashedError(self._message())
        parts = [job.content] if isinstance(job.content, str) else job.content
        ids = [i for p in parts for i in ([p] if isinstance(p, int) else list(p.encode()))]
        pieces: list[str | list[int]] | None = [[i] for i in ids] if job.with_pieces else None
        return Tokens(ID, ids, pieces)

    async def detokenize(self, job: DetokenizeJob) -> Detokenized:
        if not self.alive:
            raise RunnerCrashedError(self._message())
        return Detokenized(ID, bytes(job.tokens).decode("utf-8", "replace"))

    async def render(self, job: GenerateJob) -> RenderedPrompt:
        """Each message as ``role: content`` on a line of its own."""
        if not self.alive:
            raise RunnerCrashedError(self._message())
        self.counted.append(job)
        lines = [f"{m.get('role')}: {m.get('content')}" for m in job.messages or ()]
        return RenderedPrompt(ID, "\n".join(lines))

    async def stats(self) -> RunnerStats:
        if not self.alive:
            raise RunnerCrashedError(self._message())
        return RunnerStats(ID, slots_total=self.options.num_parallel, slots_busy=self.active)

    async def close(self, timeout: float = 5.0, *, reason: str = "the model was unloaded") -> None:
        self.close_reasons.append(reason)
        self._closing = reason
        self.exit_reason = reason
        self._stopped.set()
        await asyncio.sleep(0)


def fake_info(pid: int, paths: Sequence[Path], options: LoadOptions) -> RunnerInfo:
    """The ready reply of a CPU-only load of ``paths`` with ``options``."""
    size = sum(p.stat().st_size for p in paths if p.exists())
    return RunnerInfo(
        pid=pid,
        load_duration=1_000_000,
        num_ctx=options.num_ctx,
        num_parallel=options.num_parallel,
        n_ctx_train=options.num_ctx,
        n_vocab=256,
        n_embd=2,
        n_threads=options.num_thread or 1,
        has_template=True,
        capabilities=("completion",),
        gpu_offload=False,
        plan=f"0/1 layers on GPU, 100% CPU, total {size} bytes",
        gpu_layers=0,
        n_layers=1,
        size=size,
        size_vram=0,
        adapters=0,
    )


class FakeFactory:
    """The ``runner_factory``: records every load; loads can be held or made to fail."""

    def __init__(self) -> None:
        self.loads: list[LoadRequest] = []
        self.runners: list[FakeRunner] = []
        self.hold = False  # each load waits for its own event in ``held``
        self.held: list[asyncio.Event] = []
        self.failures = 0  # this many next loads raise EngineError
        self.loading = 0
        self.max_loading = 0
        self.script: Sequence[Event] | None = None  # given to every runner (FakeRunner.script)

    async def __call__(self, load: LoadRequest) -> FakeRunner:
        self.loads.append(load)
        self.loading += 1
        self.max_loading = max(self.max_loading, self.loading)
        try:
            if self.hold:
                gate = asyncio.Event()
                self.held.append(gate)
                await gate.wait()
            else:
                await asyncio.sleep(0.001)  # a load takes time
            if self.failures:
                self.failures -= 1
                raise EngineError("the model failed to load: out of memory")
        finally:
            self.loading -= 1
        runner = FakeRunner(load.paths, load.options, self.script)
        self.runners.append(runner)
        return runner

    @property
    def options(self) -> list[LoadOptions]:
        return [load.options for load in self.loads]


OPTIONS = LoadOptions(num_ctx=2048, num_parallel=2)

TICK = 0.05  # the expiry loop's interval in these tests


def add_model(store: ModelStore, name: str, data: bytes) -> Manifest:
    digest = hashlib.sha256(data).hexdigest()
    staged = store.partial_dir / "staged"
    staged.write_bytes(data)
    store.commit_blob(staged, digest)
    ref = parse_ref(name)
    manifest = Manifest(
        name=str(ref),
        files=(BlobEntry(digest=digest, size=len(data), filename="model.gguf"),),
        source=HubSource(repo="o/r", revision="c" * 40),
        quantization="Q4_K_M",
    )
    store.write_manifest(ref, manifest)
    return manifest


def scheduler_for(
    store: ModelStore,
    factory: FakeFactory,
    *,
    keep_alive: float = 60.0,
    max_loaded: int = 3,
    max_queue: int = 16,
    options: LoadOptions = OPTIONS,
) -> Scheduler:
    return Scheduler(
        store,
        default_options=options,
        keep_alive=keep_alive,
        max_loaded=max_loaded,
        max_queue=max_queue,
        runner_factory=factory,
        expire_interval=TICK,
    )


def run(main: Callable[[], Coroutine[Any, Any, T]], timeout: float = 120.0) -> T:
    return asyncio.run(asyncio.wait_for(main(), timeout))


async def until(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.002)


def req(name: str, keep_alive: float | None = None, **load: int) -> ModelRequest:
    options = LoadOptions(**{**OPTIONS.to_dict(), **load})
    return ModelRequest(name, options, keep_alive)
