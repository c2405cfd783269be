"""A prompt with media is prepared (decoded, preprocessed, tokenized) on the runner's
preparing thread while other streams keep generating; its jobs join the batch when it
is ready. In-process, on real llama.cpp with the tiny model and the tiny audio
projector. The preparation is held back by the test (an Event), not timed, so the
checks do not depend on how fast the machine is."""

from __future__ import annotations

import base64
import concurrent.futures
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localserve.engine.loading import Loader
from localserve.engine.runner import Runner
from localserve.plan.devices import Devices
from localserve.runtime.options import LoadOptions, SamplingOptions
from localserve.runtime.protocol import DoneEvent, ErrorEvent, ErrorKind, GenerateJob, LoadRequest
from tests.support.media import AUDIO_TOKENS, sound
from tests.support.tiny_gguf import write_tiny_gguf
from tests.support.tiny_projector import write_tiny_audio_projector

LONG = SamplingOptions(temperature=0.0, num_predict=400, ignore_eos=True)
SHORT = SamplingOptions(temperature=0.0, num_predict=2, ignore_eos=True)


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[Runner]:
    model = write_tiny_gguf(tmp_path / "tiny.gguf")
    projector = write_tiny_audio_projector(tmp_path / "audio.gguf", text_embd=64)
    loader = Loader(probe=lambda **_: Devices.cpu_only(64 << 30))
    options = LoadOptions(num_ctx=512, num_parallel=2, num_gpu=0, speculative="off")
    loaded = Runner(-1, loader.load(LoadRequest((model,), options, projector=projector)))
    yield loaded
    loaded.close()


def generate(
    request_id: str, options: SamplingOptions, audio: bytes | None = None
) -> dict[str, Any]:
    job = GenerateJob(
        prompt="listen: " if audio else "one two three",
        raw=True,
        images=[base64.b64encode(audio).decode()] if audio else [],
        options=options,
    )
    return {"op": "generate", "id": request_id, "job": job.to_wire()}


def held_back(runner: Runner, monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Make every preparation wait for the returned event before it starts."""
    release = threading.Event()
    build = runner.jobs.build

    def slow(*args: Any) -> Any:
        assert release.wait(60), "the test never released the preparation"
        return build(*args)

    monkeypatch.setattr(runner.jobs, "build", slow)
    return release


def wait_prepared(runner: Runner) -> list[Any]:
    concurrent.futures.wait(list(runner.preparing.values()), timeout=60)
    return runner.prepared()


def steps(runner: Runner, count: int) -> list[Any]:
    events = []
    for _ in range(count):
        events.extend(runner.engine.step())
    return events


def test_streams_keep_going_while_a_sound_is_prepared(
    runner: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert runner.handle(generate("text", LONG)) == []
    steps(runner, 2)
    release = held_back(runner, monkeypatch)
    assert runner.handle(generate("audio", SHORT, sound(440))) == []
    assert "audio" in runner.preparing  # aside: the stream is generating
    before = runner.engine.jobs["text"].generated
    steps(runner, 5)
    # Five steps, five tokens for the stream, while the sound was still waiting.
    assert runner.engine.jobs["text"].generated == before + 5
    assert not runner.preparing["audio"].done()
    release.set()
    assert wait_prepared(runner) == []
    assert "audio" in runner.engine.jobs and not runner.preparing
    done: dict[str, DoneEvent] = {}
    while "audio" not in done:
        done.update({e.id: e for e in runner.engine.step() if isinstance(e, DoneEvent)})
    # The sound's placeholder tokens are in its prompt: it was really tokenized aside.
    assert done["audio"].prompt_eval_count > AUDIO_TOKENS
    assert runner.engine.stats.media_encoded == 1


def test_cancelled_while_prepared_ends_as_cancelled(
    runner: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner.handle(generate("text", LONG))
    steps(runner, 1)
    release = held_back(runner, monkeypatch)
    runner.handle(generate("audio", SHORT, sound(440)))
    runner.handle({"op": "cancel", "id": "audio"})
    release.set()
    assert wait_prepared(runner) == []
    reasons = {e.id: e.done_reason for e in steps(runner, 2) if isinstance(e, DoneEvent)}
    assert reasons.get("audio") == "cancel"
    assert runner.engine.stats.media_encoded == 0


def test_a_bad_sound_prepared_aside_is_an_error_for_its_request_only(
    runner: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner.handle(generate("text", LONG))
    steps(runner, 1)
    release = held_back(runner, monkeypatch)
    one_sample = sound(440, seconds=1 / 16_000)
    runner.handle(generate("bad", SHORT, one_sample))
    release.set()
    [error] = wait_prepared(runner)
    assert isinstance(error, ErrorEvent)
    assert error.id == "bad" and "too short" in error.message
    assert error.kind is ErrorKind.INVALID
    assert "text" in runner.engine.jobs  # the stream goes on
