"""Which models are resident, and every rule about when they load and unload.

All concurrency rules of the daemon live here; routes take no locks.

- One runner (child process) per resident model, started on the model's first
  request. One load at a time: other requests wait for it.
- ``keep_alive`` per request (seconds; negative: forever; 0: unload when idle),
  default ``LOCALSERVE_KEEP_ALIVE``. The last request's value sets the expiry.
- At most ``LOCALSERVE_MAX_LOADED_MODELS`` resident; loading one more unloads the
  least recently used idle model, never a busy one (the load waits instead).
- A request whose load options (``num_ctx``, ``num_gpu``, ``num_batch``...) differ
  from the resident runner's waits for it to go idle, then reloads it; sampling
  options never reload anything.
- Requests beyond the slots wait; once ``LOCALSERVE_MAX_QUEUE`` are waiting, the
  next gets ServerBusyError at once (the server answers 503).
- A runner that dies fails its in-flight requests (the client raises
  RunnerCrashedError); the next request finds it dead and starts a fresh one.
- Before a load, every file of the model is checked against its verification
  stamp (store/verify.py): a file changed on disk refuses the load with
  DamagedModelError, before any other model is unloaded to make room.
- A model deleted from the store (DELETE /api/delete, `localserve rm`, by hand)
  is unloaded at once; its in-flight requests end with an error saying so, and
  new requests get ModelNotFoundError.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

from localserve.errors import InvalidOptionError, ModelNotFoundError, ServerBusyError
from localserve.runtime.options import SPECULATIVE, LoadOptions
from localserve.runtime.protocol import (
    DoneEvent,
    EmbedResult,
    Event,
    GenerateJob,
    LoadRequest,
    RankResult,
    RunnerInfo,
    RunnerStats,
    TokenCount,
)
from localserve.runtime.tokens import (
    Detokenized,
    DetokenizeJob,
    RenderedPrompt,
    TokenizeJob,
    Tokens,
)
from localserve.store.manifest import Manifest
from localserve.store.refs import ModelRef
from localserve.store.store import ModelStore
from localserve.store.verify import check_model

log = logging.getLogger("localserve.scheduler")
T = TypeVar("T")


class Runner(Protocol):
    """What the scheduler needs of a runner (scheduler/runner_client.py's RunnerClient; a fake in tests)."""

    info: RunnerInfo

    @property
    def alive(self) -> bool: ...

    @property
    def pid(self) -> int: ...

    def generate(self, job: GenerateJob) -> AsyncIterator[Event]: ...

    async def embed(self, inputs: list[str], *, truncate: bool) -> EmbedResult: ...

    async def rank(self, query: str, documents: list[str]) -> RankResult: ...

    async def count_tokens(self, job: GenerateJob) -> TokenCount: ...

    async def tokenize(self, job: TokenizeJob) -> Tokens: ...

    async def detokenize(self, job: DetokenizeJob) -> Detokenized: ...

    async def render(self, job: GenerateJob) -> RenderedPrompt: ...

    async def stats(self) -> RunnerStats: ...

    async def close(self, timeout: float = 5.0, *, reason: str = ...) -> None: ...


class RunnerFactory(Protocol):
    """Starts a runner that loads a model's files."""

    def __call__(self, load: LoadRequest) -> Awaitable[Runner]: ...


async def start_runner(load: LoadRequest) -> Runner:
    from localserve.scheduler.runner_client import RunnerClient

    return await RunnerClient.start(load)


@dataclass(frozen=True)
class ModelRequest:
    """What a route asks the scheduler to run on."""

    name: str
    load: LoadOptions
    keep_alive: float | None = None  # seconds; None: the daemon's default


@dataclass
class Resident:
    """A loaded model."""

    ref: ModelRef
    manifest: Manifest
    options: LoadOptions
    runner: Runner
    loaded_at: float
    load_duration_ns: int
    keep_alive: float
    busy: int = 0
    draining: bool = False  # being waited on to go idle for an unload or reload
    last_used: float = field(default_factory=time.monotonic)
    expires_at: float | None = None  # wall-clock seconds; None while busy or kept forever
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def name(self) -> str:
        return str(self.ref)

    @property
    def slots(self) -> int:
        return self.runner.info.num_parallel


class Scheduler:
    def __init__(
        self,
        store: ModelStore,
        *,
        default_options: LoadOptions,
        keep_alive: float,
        max_loaded: int,
        max_queue: int,
        runner_factory: RunnerFactory = start_runner,
        expire_interval: float = 0.5,
    ) -> None:
        self.store = store
        self.default_options = default_options
        self.default_keep_alive = keep_alive
        self.max_loaded = max_loaded
        self.max_queue = max_queue
        self.runner_factory = runner_factory
        self.expire_interval = expire_interval  # seconds between keep_alive checks
        self.resident: dict[str, Resident] = {}
        self._load_lock = asyncio.Lock()
        self._changed = asyncio.Condition()  # notified whenever a model goes idle or unloads
        self._expiry: asyncio.Task[None] | None = None
        self.in_flight = 0
        self.closing: str | None = None
        self.load_durations: list[float] = []  # seconds, for /metrics

    # -------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        self._expiry = asyncio.create_task(self._expire_loop())

    async def close(self, reason: str = "localserve is shutting down") -> None:
        """Refuse new requests, end in-flight ones with ``reason``, stop every runner."""
        self.closing = reason
        if self._expiry is not None:
            self._expiry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._expiry
        for resident in list(self.resident.values()):
            await self._unload(resident, reason)

    # ------------------------------------------------------------------ views

    @property
    def loading(self) -> bool:
        return self._load_lock.locked()

    def total_slots(self) -> int:
        return sum(r.slots for r in self.resident.values() if r.runner.alive)

    def waiting(self) -> int:
        """Requests admitted by the daemon but not yet holding a slot."""
        return max(0, self.in_flight - sum(min(r.busy, r.slots) for r in self.resident.values()))

    def busy_slots(self) -> int:
        return sum(min(r.busy, r.slots) for r in self.resident.values())

    def running(self) -> list[Resident]:
        return sorted(
            (r for r in self.resident.values() if r.runner.alive), key=lambda r: -r.last_used
        )

    # --------------------------------------------------------------- requests

    async def generate(self, model: ModelRequest, job: GenerateJob) -> AsyncIterator[Event]:
        """Stream a generation on ``model``, loading it first if needed.

        The done event gains ``load_duration`` (ns this request waited for a load).
        """
        async with self._admitted():
            resident, load_ns = await self._acquire(model)
            events = resident.runner.generate(job)
            try:
                async for event in events:
                    yield event.with_load(load_ns) if isinstance(event, DoneEvent) else event
            finally:
                try:
                    # Stopped early (the client went away): close the runner's stream
                    # now, so it cancels the request before the slot counts as free.
                    if isinstance(events, AsyncGenerator):
                        await events.aclose()
                finally:
                    await self._release(resident, model.keep_alive)

    async def embed(self, model: ModelRequest, inputs: list[str], *, truncate: bool) -> EmbedResult:
        """Embed ``inputs`` on ``model``; the result's ``load_duration`` is how long this
        request waited for a load (ns)."""
        async with self._admitted():
            resident, load_ns = await self._acquire(model)
            try:
                result = await resident.runner.embed(inputs, truncate=truncate)
            finally:
                await self._release(resident, model.keep_alive)
        return result.with_load(load_ns)

    async def rank(self, model: ModelRequest, query: str, documents: list[str]) -> RankResult:
        """Score ``documents`` for ``query`` on ``model``; the result's ``load_duration``
        is how long this request waited for a load (ns)."""
        async with self._admitted():
            resident, load_ns = await self._acquire(model)
            try:
                result = await resident.runner.rank(query, documents)
            finally:
                await self._release(resident, model.keep_alive)
        return result.with_load(load_ns)

    async def count_tokens(self, model: ModelRequest, job: GenerateJob) -> int:
        """How many tokens ``job``'s prompt is on ``model`` (loaded first if needed),
        rendered as its generation would be; the runner answers between engine steps,
        without a generation slot."""
        async with self._admitted():
            resident, _ = await self._acquire(model)
            try:
                result = await resident.runner.count_tokens(job)
            finally:
                await self._release(resident, model.keep_alive)
        return result.tokens

    # Tokens and templates (server/routes/tokens.py): the runner answers between engine
    # steps, without a generation slot. Neither depends on load options, so a resident
    # runner serves them whatever its options are; no reload for them.

    async def tokenize(self, model: ModelRequest, job: TokenizeJob) -> Tokens:
        return await self._between_steps(model, lambda runner: runner.tokenize(job))

    async def detokenize(self, model: ModelRequest, job: DetokenizeJob) -> Detokenized:
        return await self._between_steps(model, lambda runner: runner.detokenize(job))

    async def render(self, model: ModelRequest, job: GenerateJob) -> str:
        """``job``'s prompt as text, rendered as its generation would render it."""
        result = await self._between_steps(model, lambda runner: runner.render(job))
        return result.prompt

    def only_loaded(self) -> str | None:
        """The name of the one model loaded, if exactly one is (llama-server's routes
        name no model: with one loaded, they may name none here too)."""
        running = self.running()
        return running[0].name if len(running) == 1 else None

    async def _between_steps(self, model: ModelRequest, ask: Callable[[Runner], Awaitable[T]]) -> T:
        async with self._admitted():
            resident = self._resident_as_is(model.name)
            if resident is None:
                resident, _ = await self._acquire(model)
            try:
                return await ask(resident.runner)
            finally:
                await self._release(resident, model.keep_alive)

    def _resident_as_is(self, name: str) -> Resident | None:
        """The model's runner marked busy, if one is up whatever its load options."""
        ref, manifest = self.store.get(name)
        resident = self.resident.get(str(ref))
        if (
            resident is None
            or not resident.runner.alive
            or resident.draining
            or resident.manifest.identity != manifest.identity
        ):
            return None
        self._use(resident)
        return resident

    async def load(self, model: ModelRequest) -> tuple[Resident, int]:
        """Make sure ``model`` is resident (an empty prompt); returns it and the load time in ns."""
        async with self._admitted():
            resident, load_ns = await self._acquire(model)
            await self._release(resident, model.keep_alive)
        return resident, load_ns

    async def unload(self, name: str) -> bool:
        """Unload a model now (waits for its requests to finish). False if it was not loaded."""
        ref, _ = self.store.get(name)
        resident = self.resident.get(str(ref))
        if resident is None:
            return False
        await self._wait_idle(resident)
        await self._unload(resident)
        return True

    async def forget(self, ref: ModelRef) -> bool:
        """Unload a model that was just deleted from the store, now: its in-flight
        requests end with an error. False if it was not loaded."""
        resident = self.resident.get(str(ref))
        if resident is None:
            return False
        reason = f"model '{ref}' was deleted"
        await self._unload(resident, reason)
        # The expiry loop may have begun this unload first; either way, return only
        # once no runner holds the deleted files.
        await resident.runner.close(reason=reason)
        return True

    async def stats(self, name: str) -> RunnerStats | None:
        ref, _ = self.store.get(name)
        resident = self.resident.get(str(ref))
        if resident is None or not resident.runner.alive:
            return None
        return await resident.runner.stats()

    # -------------------------------------------------------------- internals

    def _check_open(self) -> None:
        if self.closing:
            raise ServerBusyError(self.closing)

    @contextlib.asynccontextmanager
    async def _admitted(self) -> AsyncIterator[None]:
        self._check_open()
        if self.waiting() >= self.max_queue:
            raise ServerBusyError(
                "server busy, please try again",
                hint=f"{self.max_queue} requests are already waiting",
            )
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    async def _acquire(self, model: ModelRequest) -> tuple[Resident, int]:
        """The resident model for this request, marked busy; loads or reloads as needed."""
        ref, manifest = self.store.get(model.name)
        key = str(ref)
        started = time.perf_counter_ns()
        loaded_now = False
        while True:
            self._check_open()  # close() may have run while this request waited
            resident = self.resident.get(key)
            if resident is not None and not resident.runner.alive:
                log.warning(
                    "runner of %s (pid %s) is gone; starting a new one", key, resident.runner.pid
                )
                await self._unload(resident)
                continue
            if (
                resident is not None
                and not resident.draining
                and resident.manifest.identity == manifest.identity
                and self._same_load(resident.options, model.load)
            ):
                self._use(resident)
                return resident, (time.perf_counter_ns() - started) if loaded_now else 0
            async with self._load_lock:
                resident = self.resident.get(key)
                if (
                    resident is not None
                    and resident.runner.alive
                    and not resident.draining
                    and resident.manifest.identity == manifest.identity
                    and self._same_load(resident.options, model.load)
                ):
                    continue  # someone loaded it while we waited for the lock
                # Read again: while this request waited, the model may have been deleted
                # or pulled anew. Then check its files before anything is unloaded for it.
                ref, manifest = self.store.get(ref)
                await asyncio.to_thread(check_model, self.store, manifest)
                if resident is not None:
                    # Different load options (or a re-pulled file): reload once it is idle.
                    await self._wait_idle(resident)
                    await self._unload(resident)
                await self._make_room()
                await self._load(ref, manifest, model)
                loaded_now = True

    def _use(self, resident: Resident) -> None:
        resident.busy += 1
        resident.last_used = time.monotonic()
        resident.expires_at = None
        resident.idle.clear()

    async def _release(self, resident: Resident, keep_alive: float | None) -> None:
        resident.busy -= 1
        resident.last_used = time.monotonic()
        # The last request's value sets the expiry; None is the daemon's default.
        resident.keep_alive = self.default_keep_alive if keep_alive is None else keep_alive
        if resident.busy == 0:
            resident.idle.set()
            if resident.keep_alive == 0:
                await self._unload(resident)
            elif resident.keep_alive > 0:
                resident.expires_at = time.time() + resident.keep_alive
        async with self._changed:
            self._changed.notify_all()

    def _same_load(self, current: LoadOptions, wanted: LoadOptions) -> bool:
        return current == wanted

    async def _wait_idle(self, resident: Resident) -> None:
        """Wait until ``resident`` has no requests; new ones queue behind this wait
        (``draining``) instead of keeping it busy forever."""
        resident.draining = True
        if resident.busy:
            async with self._changed:
                await self._changed.wait_for(lambda: resident.busy == 0)

    async def _make_room(self) -> None:
        """Unload least recently used idle models until one more fits; wait if all are busy."""
        while len([r for r in self.resident.values() if r.runner.alive]) >= self.max_loaded:
            idle = sorted(
                (r for r in self.resident.values() if r.busy == 0), key=lambda r: r.last_used
            )
            if idle:
                log.info("unloading %s to make room", idle[0].name)
                await self._unload(idle[0])
                continue
            async with self._changed:
                await self._changed.wait()

    def _load_request(self, ref: ModelRef, manifest: Manifest, load: LoadOptions) -> LoadRequest:
        """What the runner loads: the model's files, its Modelfile's template, a draft."""
        from localserve.store.create import read_config

        template = read_config(self.store, manifest).template if manifest.layers else None
        draft, draft_name = self._draft_model(ref, load.speculative)
        return LoadRequest(
            paths=tuple(self.store.blob_paths(manifest)),
            options=load,
            projector=self.store.projector_path(manifest),
            adapters=tuple((self.store.blob_path(a.digest), a.scale) for a in manifest.adapters),
            template=template,
            draft=draft,
            draft_name=draft_name,
        )

    def _draft_model(self, ref: ModelRef, speculative: str) -> tuple[tuple[Path, ...], str]:
        """The files of the draft model that ``speculative`` names, if it names one. A
        model is not its own draft: loading it twice would only double the work."""
        if speculative in SPECULATIVE:
            return (), ""
        try:
            draft_ref, draft = self.store.get(speculative)
        except ModelNotFoundError:
            raise InvalidOptionError(
                f"the draft model '{speculative}' is not in the store",
                hint="pull it, or set LOCALSERVE_SPECULATIVE to ngram or off",
            ) from None
        if draft_ref == ref:
            return (), ""
        return tuple(self.store.blob_paths(draft)), str(draft_ref)

    async def _load(self, ref: ModelRef, manifest: Manifest, model: ModelRequest) -> Resident:
        self._check_open()  # close() may have run while this load waited for room or idle
        started = time.perf_counter()
        log.info(
            "loading %s (num_ctx %d, parallel %d)", ref, model.load.num_ctx, model.load.num_parallel
        )
        runner = await self.runner_factory(self._load_request(ref, manifest, model.load))
        if self.closing:  # close() ran during the load: this runner must not outlive it
            await runner.close(reason=self.closing)
            raise ServerBusyError(self.closing)
        if self.store.find(ref) is None:  # deleted during the load
            await runner.close(reason=f"model '{ref}' was deleted")
            raise ModelNotFoundError(str(ref))
        elapsed = time.perf_counter() - started
        self.load_durations.append(elapsed)
        keep = self.default_keep_alive if model.keep_alive is None else model.keep_alive
        resident = Resident(
            ref=ref,
            manifest=manifest,
            options=model.load,
            runner=runner,
            loaded_at=time.time(),
            load_duration_ns=int(elapsed * 1e9),
            keep_alive=keep,
        )
        resident.idle.set()
        self.resident[str(ref)] = resident
        log.info(
            "loaded %s in %.2fs (runner pid %d): %s",
            ref,
            elapsed,
            runner.pid,
            runner.info.plan,
        )
        return resident

    async def _unload(self, resident: Resident, reason: str = "the model was unloaded") -> None:
        if self.resident.get(resident.name) is not resident:
            return  # already unloaded by someone else (expiry, keep_alive 0, close)
        del self.resident[resident.name]
        await resident.runner.close(reason=reason)
        log.info("unloaded %s", resident.name)
        async with self._changed:
            self._changed.notify_all()

    async def _expire_loop(self) -> None:
        while True:
            await asyncio.sleep(self.expire_interval)
            now = time.time()
            for resident in list(self.resident.values()):
                expired = resident.expires_at is not None and resident.expires_at <= now
                try:
                    # Deleted from the store by anyone (another process, by hand): no
                    # runner may go on holding its files.
                    if self.store.find(resident.ref) is None:
                        await self._unload(resident, f"model '{resident.name}' was deleted")
                    # A runner that died while idle is forgotten too.
                    elif resident.busy == 0 and (expired or not resident.runner.alive):
                        await self._unload(resident)
                except Exception:  # one bad runner must not stop expiry for the rest
                    log.exception("unloading %s failed", resident.name)
