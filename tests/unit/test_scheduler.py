"""The scheduler's rules, driven by a scripted fake runner.

No process and no model: ``FakeRunner`` implements the scheduler's ``Runner``
protocol, and each test decides when a generation ends (an asyncio.Event it holds),
when a runner dies, how long a load takes and whether it fails. The store is a real
``ModelStore`` in tmp_path whose blobs are a few bytes (the fake never reads them).
Waits are on conditions (``until``); the only real sleeps are for keep_alive expiry
and for "nothing happens" checks.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from localserve.errors import (
    EngineError,
    ModelNotFoundError,
    RunnerCrashedError,
    ServerBusyError,
)
from localserve.runtime.options import LoadOptions, SamplingOptions
from localserve.runtime.protocol import DoneEvent, Event, TextEvent
from localserve.scheduler.scheduler import ModelRequest, Resident, Scheduler
from localserve.store.store import ModelStore
from tests.support.fake_runner import (
    OPTIONS,
    TICK,
    FakeFactory,
    GatedJob,
    add_model,
    req,
    run,
    scheduler_for,
    until,
)

# ------------------------------------------------------------------ the fake


# ----------------------------------------------------------------- helpers


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    s = ModelStore(tmp_path / "models")
    s.ensure_dirs()
    for name in ("alpha", "beta", "gamma"):
        add_model(s, name, f"weights of {name}".encode())
    return s


@pytest.fixture
def factory() -> FakeFactory:
    return FakeFactory()


async def settle() -> None:
    """Give every task a chance to run (for "nothing happens" checks)."""
    await asyncio.sleep(0.05)


class Stream:
    """One generation consumed by a task; it blocks after its first token until ``finish()``."""

    def __init__(
        self,
        scheduler: Scheduler,
        model: ModelRequest,
        *,
        gated: bool = True,
        options: SamplingOptions | None = None,
    ) -> None:
        self.gate = asyncio.Event()
        if not gated:
            self.gate.set()
        self.request = GatedJob(prompt="hi", options=options or SamplingOptions(), gate=self.gate)
        self.events: list[Event] = []
        self.task = asyncio.create_task(self._consume(scheduler, model))

    async def _consume(self, scheduler: Scheduler, model: ModelRequest) -> list[Event]:
        async for event in scheduler.generate(model, self.request):
            self.events.append(event)
        return self.events

    @property
    def streaming(self) -> bool:
        return bool(self.events)

    def finish(self) -> None:
        self.gate.set()

    async def result(self) -> DoneEvent:
        """The done event, after checking the stream's shape."""
        events = await self.task
        assert [e.type for e in events] == ["text", "text", "done"]
        assert "".join(e.text for e in events[:-1] if isinstance(e, TextEvent)) == "Hello world"
        assert isinstance(events[-1], DoneEvent)
        return events[-1]


async def generate_once(scheduler: Scheduler, model: ModelRequest) -> DoneEvent:
    return await Stream(scheduler, model, gated=False).result()


def names(scheduler: Scheduler) -> list[str]:
    return [r.name for r in scheduler.running()]


def key(store: ModelStore, name: str) -> str:
    return str(store.get(name)[0])


def resident(scheduler: Scheduler, store: ModelStore, name: str) -> Resident:
    return scheduler.resident[key(store, name)]


# -------------------------------------------------------------- 1. loading


def test_first_request_loads_and_concurrent_requests_share_one_load(
    store: ModelStore, factory: FakeFactory
) -> None:
    async def main() -> None:
        scheduler = scheduler_for(store, factory)
        await scheduler.start()
        factory.hold = True
        alpha = [Stream(scheduler, req("alpha"), gated=False) for _ in range(3)]
        beta = Stream(scheduler, req("beta"), gated=False)
        await until(lambda: len(factory.held) == 1)
        await settle()
        assert len(factory.loads) == 1  # one load at a time: the others wait
        assert scheduler.loading
        assert scheduler.waiting() == 4
        assert scheduler.busy_slots() == 0
        assert scheduler.running() == []
        factory.held[0].set()
        await until(lambda: len(factory.held) == 2)  # beta's load starts after alpha's
        factory.held[1].set()
        for stream in [*alpha, beta]:
            await stream.result()
        assert factory.max_loading == 1
        assert [list(load.paths) for load in factory.loads] == [
            store.blob_paths(store.get("alpha")[1]),
            store.blob_paths(store.get("beta")[1]),
        ]
        assert factory.options == [OPTIONS, OPTIONS]
        assert len(factory.runners[0].requests) == 3  # all three alpha requests, one runner
        assert len(factory.runners[1].requests) == 1
        assert sorted(names(scheduler)) == [key(store, "alpha"), key(store, "beta")]
        assert not scheduler.loading
        assert len(scheduler.load_durations) == 2
        await scheduler.close()

    run(main)


# --------------------------------------------------------------- 2. reuse


def test_resident_runner_is_reused_and_only_the_loader_reports_load_duration(
    store: ModelStore, factory: FakeFactory
) -> None:
    async def main() -> None:
        scheduler = scheduler_for(store, factory)
        await scheduler.start()
        factory.hold = True
        loader = Stream(scheduler, req("alpha"), gated=False)
        await until(lambda: len(factory.held) == 1)
        waiter = Stream(scheduler, req("alpha"), gated=False)
        await settle()
        factory.held[0].set()
        first = await loader.result()
        assert first.load_duration >= 50_000_000  # it waited for the load (settle: 50 ms)
        assert first.eval_count == 2  # the runner's own fields pass through
        assert (await waiter.result()).load_duration == 0  # waited, but did not load
        again = await generate_once(scheduler, req("alpha"))
        assert again.load_duration == 0
        assert len(factory.loads) == 1
        assert len(factory.runners[0].requests) == 3
        embedded = await scheduler.embed(req("alpha"), ["a", "b"], truncate=True)
        assert embedded.embeddings == [[0.5, 0.5], [0.5, 0.5]]
        assert embedded.load_duration == 0
        assert len(factory.loads) == 1
        await scheduler.close()

    run(main)


# ---------------------------------------------------------- 3. keep_alive


def test_default_keep_alive_unloads_an_idle_model(store: ModelStore, factory: FakeFactory) -> None:
    async def main() -> None:
        scheduler = scheduler_for(store, factory, keep_alive=0.3)
        await scheduler.start()
        before = time.time()
        await generate_once(scheduler, req("alpha"))
        after = time.time()
        expires_at = resident(scheduler, store, "alpha").expires_at
        assert expires_at is not None
        # Set when the request ended: 0.3 s after some moment inside the call. Bounded
        # by clock readings on both sides, so a slow machine cannot break it.
        assert before + 0.3 <= expires_at <= after + 0.3
        assert names(scheduler) == [key(store, "alpha")]
        await until(lambda: not scheduler.resident)
        assert time.time() >= expires_at - 0.01  # not before its time (until() bounds late)
        assert factory.runners[0].close_reasons == ["the model was unloaded"]
        await scheduler.close()

    run(main)


def test_keep_alive_zero_unloads_right_after_the_request(
    store: ModelStore, factory: FakeFactory
) -> None:
    async def main() -> None:
        scheduler = scheduler_for(store, factory, keep_alive=60)
        await scheduler.start()
        await generate_once(scheduler, req("alpha", keep_alive=0))
        assert scheduler.resident == {}  # no expiry tick needed
        assert factory.runners[0].close_reasons == ["the model was unloaded"]
        # load() with keep_alive 0: loaded, then unloaded as soon as it is idle
        await scheduler.load(req("beta", keep_alive=0))
        assert scheduler.resident == {}
        assert len(factory.loads) == 2
        await scheduler.close()

    run(main)


def test_negative_keep_alive_keeps_the_model_forever(
    store: ModelStore, factory: FakeFactory
) -> None:
    async def main() -> None:
        scheduler = scheduler_for(store, factory, keep_alive=-1)
        await scheduler.start()
        await generate_once(scheduler, req("alpha"))
        await generate_once(scheduler, req("beta", keep_alive=-5))
        assert resident(scheduler, store, "alpha").expires_at is None
        await asyncio.sleep(10 * TICK)
        assert sorted(names(scheduler)) == [key(store, "alpha"), key(store, "beta")]
        assert all(not r.close_reasons for r in factory.runners)
        await scheduler.close()

    run(main)


def test_request_keep_alive_overrides_the_default(store: ModelStore, factory: FakeFactory) -> None:
    async def main() -> None:
        scheduler = scheduler_for(store, factory, keep_alive=0.2)
        await scheduler.start()
        await generate_once(scheduler, req("alpha", keep_alive=-1))  # forever, not 0.2 s
        await generate_once(scheduler, req("beta", keep_alive=60))  # longer
        await generate_once(scheduler, req("gamma"))  # the default
        await until(lambda: key(store, "gamma") not in scheduler.resident)
        await asyncio.sleep(4 * TICK)
        assert sorted(names(scheduler)) == [key(store, "alpha"), key(store, "beta")]
        beta = resident(scheduler, store, "beta")
        assert beta.expires_at is not None
        assert beta.expires_at > time.time() + 50
        await scheduler.close()

    run(main)


def test_request_without_keep_alive_gets_the_default_again(
    store: ModelStore, factory: FakeFactory
) -> None:
    """The last request's value sets the expiry, and None means the daemon's default
    (as in Ollama): one request with keep_alive -1 does not pin the model for good."""

    async def main() -> None:
        scheduler = scheduler_for(store, factory, keep_alive=0.2)
        await scheduler.start()
        await generate_once(scheduler, req("alpha", keep_alive=-1))
        assert resident(scheduler, store, "alpha").expires_at is None
        await generate_once(scheduler, req("alpha"))
        assert resident(scheduler, store, "alpha").keep_alive == 0.2
        await until(lambda: not scheduler.resident)
        assert len(factory.loads) == 1
        await scheduler.close()

    run(main)


def test_busy_model_never_expires_mid_request(store: ModelStore, factory: FakeFactory) -> None:
    async def main() -> None:
        scheduler = scheduler_for(store, factory, keep_alive=0.2)
        await scheduler.start()
        await generate_once(scheduler, req("alpha"))  # sets an expiry 0.2 s from now
        stream = Stream(scheduler, req("alpha"))
        await until(lambda: stream.streaming)
        assert resident(scheduler, store, "alpha").expires_at is None
        await asyncio.sleep(0.2 + 6 * TICK)  # well past the old expiry
        assert names(scheduler) == [key(store, "alpha")]
        assert factory.runners[0].close_reasons == []
        stream.finish()
        await stream.result()
        finished = time.monotonic()
        await until(lambda: not scheduler.resident)
        assert time.monotonic() - finished >= 0.18  # the expiry restarts from the end
        assert len(factory.loads) == 1
        await scheduler.close()

    run(main)


# ------------------------------------------------------------ 4. eviction


def test_max_loaded_evicts_the_least_recently_used_idle_model(
    store: ModelStore, factory: FakeFactory
) -> None:
    async def main() -> None:
        scheduler = scheduler_for(store, factory, max_loaded=2)
        await scheduler.start()
        await generate_once(scheduler, req("alpha"))
        await generate_once(scheduler, req("beta"))
        await generate_once(scheduler, req("alpha"))  # alpha is now the most recent
        assert names(scheduler) == [key(store, "alpha"), key(store, "beta")]
        await generate_once(scheduler, req("gamma"))
        alpha, beta, _gamma = factory.runners
        assert beta.close_reasons == ["the model was unloaded"]
        assert alpha.close_reasons == [] and alpha.alive
        assert names(scheduler) == [key(store, "gamma"), key(store, "alpha")]
        assert len(factory.loads) == 3
        await scheduler.close()

    run(main)


def test_busy_models_are_never_evicted_the_load_waits(
    store: ModelStore, factory: FakeFactory
) -> None:
    async def main() -> None:
        scheduler = scheduler_for(store, factory, max_loaded=2)
        await scheduler.start()
        alpha = Stream(scheduler, req("alpha"))
        await until(lambda: alpha.streaming)
        beta = Stream(scheduler, req("beta"))
        await until(lambda: beta.streaming)
        gamma = Stream(scheduler, req("gamma"), gated=False)
        await settle()
        assert len(factory.loads) == 2  # gamma waits for room
        assert all(r.alive and not r.close_reasons for r in factory.runners)
        assert scheduler.waiting() == 1
        assert scheduler.busy_slots() == 2
        assert not gamma.task.done()
        alpha.finish()  # alpha goes idle first: it is the one evicted
        await alpha.result()
        await gamma.result()
        alpha_runner, beta_runner, _ = factory.runners
        assert alpha_runner.close_reasons == ["the model was unloaded"]
        assert beta_runner.alive and beta_runner.close_reasons == []
        assert sorted(names(scheduler)) == [key(store, "beta"), key(store, "gamma")]
        beta.finish()
        await beta.result()  # the busy model's stream was never disturbed
        assert len(factory.loads) == 3
        await scheduler.close()

    run(main)


# --------------------------------------------------------------- 5. queue


def test_bounded_queue_refuses_at_once_and_admitted_requests_complete(
    store: ModelStore, factory: FakeFactory
) -> None:
    async def main() -> None:
        scheduler = scheduler_for(store, factory, max_queue=3)
        await scheduler.start()
        holders = [Stream(scheduler, req("alpha")) for _ in range(2)]  # 2 slots
        await until(lambda: all(s.streaming for s in holders))
        queued = [Stream(scheduler, req("alpha")) for _ in range(3)]
        await until(lambda: scheduler.waiting() == 3)
        await settle()
        runner = factory.runners[0]
        assert runner.active == 2
        assert scheduler.busy_slots() == 2
        assert not any(s.streaming for s in queued)
        # The holders never finish on their own, so a request that queued instead of
        # being refused would wait forever: the timeout only catches that bug.
        with pytest.raises(ServerBusyError) as refused:
            await asyncio.wait_for(Stream(scheduler, req("alpha")).task, timeout=30)
        assert refused.value.hint == "3 requests are already waiting"
        with pytest.raises(ServerBusyError):  # other models and embed share the one queue
            await scheduler.embed(req("beta"), ["x"], truncate=False)
        assert scheduler.waiting() == 3  # the refused ones left no trace
        for stream in [*holders, *queued]:
            stream.finish()
        for stream in [*holders, *queued]:
            assert (await stream.result()).done_reason == "stop"
        assert len(runner.requests) == 5
        assert scheduler.waiting() == 0
        assert scheduler.busy_slots() == 0
        assert scheduler.in_flight == 0
        assert len(factory.loads) == 1
        await scheduler.close()

    run(main)


# -------------------------------------------------------- 6. load options


def test_different_load_options_reload_after_in_flight_requests_finish(
    store: ModelStore, factory: FakeFactory
) -> None:
    async def main() -> None:
        scheduler = scheduler_for(store, factory)
        await scheduler.start()
        old = Stream(scheduler, req("alpha"))
        await until(lambda: old.streaming)
        bigger = Stream(scheduler, req("alpha", num_ctx=8192), gated=False)
        await settle()
        assert len(factory.loads) == 1  # waits for the in-flight request
        first = factory.runners[0]
        assert first.alive and first.close_reasons == []
        assert not bigger.task.done()
        old.finish()
        assert (await old.result()).done_reason == "stop"  # finished, not cut off
        done = await bigger.result()
        assert done.load_duration > 0
        assert first.close_reasons == ["the model was unloaded"]
        assert len(factory.loads) == 2
        assert factory.options[1] == LoadOptions(num_ctx=8192, num_parallel=2)
        assert factory.runners[1].requests == [bigger.request]
        assert resident(scheduler, store, "alpha").options.num_ctx == 8192
        assert names(scheduler) == [key(store, "alpha")]
        await scheduler.close()

    run(main)


def test_a_pending_reload_is_not_starved_by_newer_requests(
    store: ModelStore, factory: FakeFactory
) -> None:
    async def main() -> None:
        scheduler = scheduler_for(store, factory)
        await scheduler.start()
        old = Stream(scheduler, req("alpha"))
        await until(lambda: old.streaming)
        bigger = Stream(scheduler, req("alpha", num_ctx=8192), gated=False)
        await settle()
        # Arrives after the reload was asked for, with the old options: it must queue
        # behind the reload, not keep the old runner busy.
        late = Stream(scheduler, req("alpha"), gated=False)
        await settle()
        assert factory.runners[0].requests == [old.request]
        old.finish()
        await old.result()
        await bigger.result()
        await late.result()
        assert factory.runners[1].requests[0] is bigger.request
        assert len(factory.loads) == 3  # old, bigger, then old options again
        await scheduler.close()

    run(main)


def test_same_options_and_sampling_options_never_reload(
    store: ModelStore, factory: FakeFactory
) -> None:
    async def main() -> None:
        scheduler = scheduler_for(store, factory)
        await scheduler.start()
        await generate_once(scheduler, req("alpha"))
        streams = [
            Stream(
                scheduler,
                req("alpha"),
                gated=False,
                options=SamplingOptions(temperature=t, seed=s),
            )
            for t, s in ((0.0, 1), (0.7, 2), (1.5, 3))
        ]
        for stream in streams:
            assert (await stream.result()).load_duration == 0
        await generate_once(scheduler, ModelRequest("alpha", LoadOptions(**OPTIONS.to_dict())))
        assert len(factory.loads) == 1
        assert [
            (r.options.temperature, r.options.seed) for r in factory.runners[0].requests[1:4]
        ] == [(0.0, 1), (0.7, 2), (1.5, 3)]
        await scheduler.close()

    run(main)


# ---------------------------------------------------------------- 7. crash


def test_runner_crash_fails_in_flight_and_next_request_starts_a_fresh_runner(
    store: ModelStore, factory: FakeFactory
) -> None:
    async def main() -> None:
        scheduler = scheduler_for(store, factory)
        await scheduler.start()
        streams = [Stream(scheduler, req("alpha")) for _ in range(2)]
        await until(lambda: all(s.streaming for s in streams))
        dead = factory.runners[0]
        dead.kill()
        for stream in streams:
            with pytest.raises(RunnerCrashedError, match="killed by SIGKILL"):
                await stream.task
            assert [e.type for e in stream.events] == ["text"]
        assert scheduler.running() == []
        assert scheduler.busy_slots() == 0
        done = await generate_once(scheduler, req("alpha"))
        assert done.load_duration > 0
        assert len(factory.loads) == 2
        assert factory.runners[1].alive
        assert dead.close_reasons  # the dead runner was reaped, not leaked
        assert names(scheduler) == [key(store, "alpha")]
        await scheduler.close()

    run(main)


def test_runner_that_dies_while_idle_is_forgotten(store: ModelStore, factory: FakeFactory) -> None:
    async def main() -> None:
        scheduler = scheduler_for(store, factory, keep_alive=-1)
        await scheduler.start()
        await generate_once(scheduler, req("alpha"))
        factory.runners[0].kill()
        assert scheduler.running() == []
        await until(lambda: not scheduler.resident)
        assert factory.runners[0].close_reasons == ["the model was unloaded"]
        await generate_once(scheduler, req("alpha"))
        assert len(factory.loads) == 2
        await scheduler.close()

    run(main)


# --------------------------------------------------------------- 8. unload


def test_unload_waits_for_in_flight_requests(store: ModelStore, factory: FakeFactory) -> None:
    async def main() -> None:
        scheduler = scheduler_for(store, factory)
        await scheduler.start()
        stream = Stream(scheduler, req("alpha"))
        await until(lambda: stream.streaming)
        unloading = asyncio.create_task(scheduler.unload("alpha"))
        await settle()
        assert not unloading.done()
        runner = factory.runners[0]
        assert runner.close_reasons == []
        stream.finish()
        assert (await stream.result()).done_reason == "stop"
        assert await unloading is True
        assert runner.close_reasons == ["the model was unloaded"]
        assert scheduler.resident == {}
        assert await scheduler.unload("alpha") is False  # no longer loaded
        assert await scheduler.unload("beta") is False  # stored, never loaded
        with pytest.raises(ModelNotFoundError):
            await scheduler.unload("nope")
        await scheduler.close()

    run(main)


# ---------------------------------------------------------------- 9. close


def test_close_ends_in_flight_streams_and_refuses_new_requests(
    store: ModelStore, factory: FakeFactory
) -> None:
    async def main() -> None:
        scheduler = scheduler_for(store, factory)
        await scheduler.start()
        streams = [Stream(scheduler, req(name)) for name in ("alpha", "alpha", "beta")]
        await until(lambda: all(s.streaming for s in streams))
        await scheduler.close()
        for stream in streams:
            with pytest.raises(RunnerCrashedError) as ended:
                await stream.task
            assert str(ended.value) == "localserve is shutting down"
        assert [r.close_reasons[0] for r in factory.runners] == ["localserve is shutting down"] * 2
        assert scheduler.resident == {}
        with pytest.raises(ServerBusyError, match="localserve is shutting down"):
            await generate_once(scheduler, req("alpha"))
        with pytest.raises(ServerBusyError):
            await scheduler.load(req("alpha"))
        assert len(factory.loads) == 2
        assert scheduler.in_flight == 0
        await scheduler.close()  # a second close is harmless

    run(main)


def test_close_during_a_load_leaves_no_runner_behind(
    store: ModelStore, factory: FakeFactory
) -> None:
    async def main() -> None:
        scheduler = scheduler_for(store, factory)
        await scheduler.start()
        factory.hold = True
        loading = Stream(scheduler, req("alpha"), gated=False)
        behind = Stream(scheduler, req("beta"), gated=False)  # waits for the load lock
        await until(lambda: len(factory.held) == 1)
        await scheduler.close()
        factory.held[0].set()
        for stream in (loading, behind):
            with pytest.raises(ServerBusyError, match="localserve is shutting down"):
                await stream.task
        assert len(factory.loads) == 1  # beta was never started
        (runner,) = factory.runners
        assert runner.close_reasons == ["localserve is shutting down"]
        assert scheduler.resident == {}
        assert scheduler.in_flight == 0

    run(main)


def test_close_while_a_load_waits_for_room_starts_nothing(
    store: ModelStore, factory: FakeFactory
) -> None:
    async def main() -> None:
        scheduler = scheduler_for(store, factory, max_loaded=1)
        await scheduler.start()
        alpha = Stream(scheduler, req("alpha"))
        await until(lambda: alpha.streaming)
        beta = Stream(scheduler, req("beta"), gated=False)
        await settle()
        await scheduler.close()
        with pytest.raises(RunnerCrashedError):
            await alpha.task
        with pytest.raises(ServerBusyError, match="localserve is shutting down"):
            await beta.task
        assert len(factory.loads) == 1
        assert scheduler.resident == {}

    run(main)


# -------------------------------------------------------- 10. load failure


def test_load_failure_surfaces_and_the_next_request_tries_again(
    store: ModelStore, factory: FakeFactory
) -> None:
    async def main() -> None:
        scheduler = scheduler_for(store, factory)
        await scheduler.start()
        factory.failures = 1
        with pytest.raises(EngineError, match="out of memory"):
            await generate_once(scheduler, req("alpha"))
        assert scheduler.resident == {}
        assert scheduler.running() == []
        assert not scheduler.loading
        assert scheduler.in_flight == 0
        assert factory.runners == []
        done = await generate_once(scheduler, req("alpha"))
        assert done.load_duration > 0
        assert len(factory.loads) == 2
        assert names(scheduler) == [key(store, "alpha")]

        # a request waiting behind a failed load makes its own attempt
        factory.hold = True
        factory.failures = 1
        failing = Stream(scheduler, req("beta"), gated=False)
        await until(lambda: len(factory.held) == 1)
        waiting = Stream(scheduler, req("beta"), gated=False)
        await settle()
        factory.held[0].set()
        with pytest.raises(EngineError):
            await failing.task
        await until(lambda: len(factory.held) == 2)
        factory.held[1].set()
        await waiting.result()
        assert len(factory.loads) == 4
        await scheduler.close()

    run(main)


# ------------------------------------------------------------- 11. views


def test_waiting_busy_slots_and_running_report_the_state(
    store: ModelStore, factory: FakeFactory
) -> None:
    async def main() -> None:
        scheduler = scheduler_for(store, factory)
        await scheduler.start()
        assert (scheduler.waiting(), scheduler.busy_slots(), scheduler.running()) == (0, 0, [])
        factory.hold = True
        streams = [Stream(scheduler, req("alpha")) for _ in range(3)]
        await until(lambda: len(factory.held) == 1)
        await settle()
        assert (scheduler.waiting(), scheduler.busy_slots(), len(scheduler.running())) == (3, 0, 0)
        assert scheduler.loading
        factory.held[0].set()
        await until(lambda: sum(s.streaming for s in streams) == 2)
        await settle()
        assert (scheduler.waiting(), scheduler.busy_slots()) == (1, 2)  # 2 slots, 3 requests
        assert scheduler.total_slots() == 2
        assert names(scheduler) == [key(store, "alpha")]
        assert not scheduler.loading
        streams[0].finish()
        await streams[0].result()
        await until(lambda: all(s.streaming for s in streams))
        assert (scheduler.waiting(), scheduler.busy_slots()) == (0, 2)
        for stream in streams[1:]:
            stream.finish()
            await stream.result()
        assert (scheduler.waiting(), scheduler.busy_slots()) == (0, 0)
        assert names(scheduler) == [key(store, "alpha")]
        stats = await scheduler.stats(key(store, "alpha"))
        assert stats is not None
        assert (stats.slots_total, stats.slots_busy) == (2, 0)
        factory.runners[0].kill()
        assert scheduler.running() == []
        assert scheduler.total_slots() == 0
        assert await scheduler.stats(key(store, "alpha")) is None
        await scheduler.close()

    run(main)


# ------------------------------------------------------ stopping early


def test_a_stream_stopped_early_cancels_in_the_runner_at_once(
    store: ModelStore, factory: FakeFactory
) -> None:
    """A client that goes away stops the runner's generation before its slot is
    counted free (the real client sends ``cancel`` from its generator's finally)."""

    async def main() -> None:
        scheduler = scheduler_for(store, factory)
        await scheduler.start()
        gate = asyncio.Event()
        stream = scheduler.generate(req("alpha"), GatedJob(prompt="hi", gate=gate))
        first = await anext(stream)
        assert first == TextEvent("r1", "Hello")
        runner = factory.runners[0]
        assert runner.active == 1
        await stream.aclose()
        assert runner.cancelled == 1
        assert runner.active == 0
        assert (scheduler.busy_slots(), scheduler.in_flight) == (0, 0)
        await scheduler.close()

    run(main)
