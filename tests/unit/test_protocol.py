"""The runner's pipe (runtime/protocol.py, runtime/framing.py): every frame goes through
the framing and back to the same typed value, and one table maps exceptions to error
kinds both ways. In-process, no model."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from localserve.errors import (
    EngineError,
    InvalidGGUFError,
    InvalidOptionError,
    LocalserveError,
    ModelTooLargeError,
    PromptTooLongError,
    RunnerCrashedError,
    TemplateError,
)
from localserve.runtime.framing import HEADER, FrameReader, ProtocolError, encode
from localserve.runtime.options import LoadOptions, SamplingOptions
from localserve.runtime.protocol import (
    ERROR_TYPES,
    DeviceShare,
    DoneEvent,
    EmbedJob,
    EmbedResult,
    ErrorEvent,
    ErrorKind,
    GenerateJob,
    LoadFailure,
    LoadRequest,
    Op,
    Request,
    RunnerInfo,
    RunnerStats,
    TextEvent,
    error_kind,
    event_from_wire,
    event_to_wire,
    load_reply_from_wire,
    reply_to_wire,
)


def through_pipe(message: dict[str, Any]) -> dict[str, Any]:
    """``message`` as the other side reads it: encoded, then fed a byte at a time."""
    reader = FrameReader()
    data = encode(message)
    received = [m for i in range(len(data)) for m in reader.feed(data[i : i + 1])]
    assert len(received) == 1
    return received[0]


@pytest.mark.parametrize(
    "request_",
    [
        Request(
            Op.GENERATE,
            "r1",
            GenerateJob(
                messages=[{"role": "user", "content": "hi", "images": ["aGk="]}],
                tools=[{"type": "function", "function": {"name": "now"}}],
                think="high",
                options=SamplingOptions(temperature=0.0, stop=("END",)),
                n=2,
            ),
        ),
        Request(Op.EMBED, "r2", EmbedJob(["a", "b"], truncate=False)),
        Request(Op.CANCEL, "r1"),
        Request(Op.STATS, "r3"),
        Request(Op.SHUTDOWN),
    ],
)
def test_every_request_comes_back_as_sent(request_: Request) -> None:
    assert Request.from_wire(through_pipe(request_.to_wire())) == request_


def test_a_load_comes_back_as_sent(tmp_path: Path) -> None:
    load = LoadRequest(
        (tmp_path / "a-00001.gguf", tmp_path / "a-00002.gguf"),
        LoadOptions(num_ctx=512, kv_cache_type="q8_0"),
        projector=tmp_path / "mmproj.gguf",
        adapters=((tmp_path / "lora.gguf", 0.5),),
        template="{{ messages }}",
        draft=(tmp_path / "draft.gguf",),
        draft_name="small:latest",
    )
    assert LoadRequest.from_wire(through_pipe(load.to_wire())) == load
    assert LoadRequest.from_wire(through_pipe(LoadRequest(()).to_wire())) == LoadRequest(())


def test_load_answers_come_back_as_sent() -> None:
    info = RunnerInfo(
        pid=4242,
        load_duration=10**9,
        num_ctx=256,
        num_parallel=2,
        n_ctx_train=2048,
        n_vocab=256,
        n_embd=64,
        n_threads=2,
        has_template=True,
        capabilities=("completion", "tools"),
        gpu_offload=False,
        plan="0/3 layers on GPU, 100% CPU",
        gpu_layers=0,
        n_layers=3,
        size=5 << 20,
        size_vram=0,
        adapters=1,
        devices=(DeviceShare("RPC0", "10.0.0.2:50052", 2, 3 << 20),),
    )
    assert load_reply_from_wire(through_pipe(info.to_wire())) == info
    failure = LoadFailure("no room", ErrorKind.ENGINE)
    assert load_reply_from_wire(through_pipe(failure.to_wire())) == failure
    with pytest.raises(ProtocolError):
        load_reply_from_wire({"events": []})
    with pytest.raises(ProtocolError):
        load_reply_from_wire({"ready": {"pid": 1}})


def test_answers_come_back_as_sent() -> None:
    embedded = EmbedResult("r2", [[0.25, -0.5], [1.0, 0.0]], 7, 1234)
    assert EmbedResult.from_wire(through_pipe(reply_to_wire(embedded))) == embedded
    stats = RunnerStats("r3", slots_total=2, slots_busy=1, generated_tokens=10, parked=1)
    assert RunnerStats.from_wire(through_pipe(reply_to_wire(stats))) == stats
    for event in (
        TextEvent("r1", "Hello", choice=1),
        DoneEvent("r1", "stop", eval_count=3, context=[1, 2, 3]),
        DoneEvent("r1", "length"),
        ErrorEvent("r1", "too long", ErrorKind.TOO_LONG),
    ):
        assert event_from_wire(through_pipe(event_to_wire(event))) == event
    error = event_from_wire(through_pipe(event_to_wire(ErrorEvent("r1", "x", ErrorKind.INVALID))))
    assert isinstance(error, ErrorEvent) and error.kind is ErrorKind.INVALID
    assert event_from_wire(reply_to_wire(stats)) is None  # not an event of a generation


def test_stats_hold_every_engine_counter() -> None:
    from localserve.engine.job import EngineStats

    counters = {f.name for f in fields(EngineStats)}
    assert counters <= {f.name for f in fields(RunnerStats)}


@pytest.mark.parametrize(
    ("exc", "kind", "raised"),
    [
        (PromptTooLongError("long"), ErrorKind.TOO_LONG, PromptTooLongError),
        (TemplateError("bad"), ErrorKind.TEMPLATE, TemplateError),
        (InvalidOptionError("bad"), ErrorKind.INVALID, InvalidOptionError),
        (InvalidGGUFError("x.gguf", "bad"), ErrorKind.INVALID, InvalidOptionError),
        (ValueError("bad"), ErrorKind.INVALID, InvalidOptionError),
        (EngineError("decode failed"), ErrorKind.ENGINE, EngineError),
        (RunnerCrashedError("gone"), ErrorKind.ENGINE, EngineError),
        (RuntimeError("?"), ErrorKind.ENGINE, EngineError),
    ],
)
def test_one_table_maps_errors_both_ways(
    exc: Exception, kind: ErrorKind, raised: type[LocalserveError]
) -> None:
    assert error_kind(exc) is kind
    event = event_from_wire(through_pipe(event_to_wire(ErrorEvent("r1", str(exc), kind))))
    assert isinstance(event, ErrorEvent)
    assert type(event.error()) is raised
    assert str(event.error()) == str(exc)
    assert set(ERROR_TYPES) == set(ErrorKind)


@pytest.mark.parametrize(
    ("exc", "raised"),
    [
        (InvalidOptionError("a q4_0 KV cache needs flash attention"), InvalidOptionError),
        (InvalidGGUFError("x.gguf", "truncated"), EngineError),
        (TemplateError("bad template"), EngineError),
        (ModelTooLargeError("too big", needed_bytes=2, available_bytes=1), EngineError),
    ],
)
def test_only_a_bad_option_fails_a_load_as_the_callers(
    exc: LocalserveError, raised: type[LocalserveError]
) -> None:
    failure = load_reply_from_wire(through_pipe(LoadFailure.of(exc).to_wire()))
    assert isinstance(failure, LoadFailure)
    assert type(failure.error()) is raised
    assert str(failure.error()) == f"the model failed to load: {exc}"


def test_malformed_requests_are_refused() -> None:
    with pytest.raises(InvalidOptionError, match="unknown op 'health'"):
        Request.from_wire({"op": "health", "id": "r1"})
    with pytest.raises(InvalidOptionError, match="inputs must be a list of strings"):
        Request.from_wire({"op": "embed", "id": "r1", "job": {"inputs": "a"}})
    with pytest.raises(InvalidOptionError, match="scale must be a number, not True"):
        LoadRequest.from_wire(
            {"op": "load", "paths": [], "adapters": [{"path": "a", "scale": True}]}
        )
    with pytest.raises(ProtocolError):
        LoadRequest.from_wire({"op": "generate", "id": "r1"})


def test_oversized_frames_are_refused() -> None:
    with pytest.raises(ProtocolError, match="over the limit"):
        FrameReader().feed(HEADER.pack(1 << 30))
