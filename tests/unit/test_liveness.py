"""Liveness of OpenAI streams (issue 28): while the runner reads a long prompt, or the
request waits for a slot or a load, the stream sends ``: ping`` comments instead of
silence; ``return_progress`` adds llama-server's ``prompt_progress`` chunks; the status
still waits for the runner to take the job, so errors before that get a real one.

In process, over a fake runner whose generation is held at a gate the test opens once it
has seen what it waits for: no test here depends on how fast the machine is.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from localserve.config import load_settings
from localserve.runtime.protocol import (
    DoneEvent,
    Event,
    GenerateJob,
    LoadRequest,
    ProgressEvent,
    TextEvent,
)
from localserve.server.app import create_app
from localserve.store.importing import import_gguf
from localserve.store.store import ModelStore
from tests.support import chat_templates
from tests.support.app_server import serving
from tests.support.fake_runner import ID, FakeFactory, FakeRunner
from tests.support.tiny_gguf import write_tiny_gguf

PINGS_WANTED = 3


class SlowReader(FakeRunner):
    """Reads a prompt slowly: the ProgressEvent of a job that asks for them (the runner
    took the job) unless ``silent``, then nothing until the test opens ``gate``."""

    gate: threading.Event
    silent = False

    async def generate(self, job: GenerateJob) -> AsyncIterator[Event]:
        self.requests.append(job)
        self.active += 1
        try:
            if job.progress and not self.silent:
                yield ProgressEvent(ID, total=900, cache=100, processed=0, time_ms=0)
            while not self.gate.is_set():  # the test's thread opens it
                await asyncio.sleep(0.001)
            if job.progress:
                yield ProgressEvent(ID, total=900, cache=100, processed=800, time_ms=42)
            yield TextEvent(ID, "Hi")
            yield DoneEvent(ID, "stop", prompt_eval_count=900, prompt_cached=100, eval_count=1)
        except BaseException:
            self.cancelled += 1
            raise
        finally:
            self.active -= 1


class SlowFactory(FakeFactory):
    def __init__(self, silent: bool = False) -> None:
        super().__init__()
        self.silent = silent
        self.gate = threading.Event()

    async def __call__(self, load: LoadRequest) -> FakeRunner:
        self.loads.append(load)
        runner = SlowReader(load.paths, load.options)
        runner.gate, runner.silent = self.gate, self.silent
        self.runners.append(runner)
        return runner


@pytest.fixture
def model(isolated_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCALSERVE_STREAM_PING", "10ms")
    path = write_tiny_gguf(tmp_path / "chat.gguf", chat_template=chat_templates.CHATML_PLAIN)
    for _ in import_gguf(ModelStore(isolated_home / "models"), path, "chat"):
        pass


def stream(
    path: str, body: dict[str, Any], factory: SlowFactory, *, leave_after_pings: bool = False
) -> tuple[int, list[str]]:
    """The status and the SSE lines; the gate opens once PINGS_WANTED pings came (or the
    client leaves then, with ``leave_after_pings``)."""
    app = create_app(load_settings(), runner_factory=factory)
    with serving(app) as url:
        lines: list[str] = []
        with httpx.stream(
            "POST", url + path, json={**body, "stream": True}, timeout=60
        ) as response:
            for line in response.iter_lines():
                if not line:
                    continue
                lines.append(line)
                if lines.count(": ping") == PINGS_WANTED:
                    if leave_after_pings:
                        break
                    factory.gate.set()
            status = response.status_code
        if leave_after_pings:  # the runner's generation is stopped, not left running
            deadline = time.monotonic() + 30
            while factory.runners[0].active and time.monotonic() < deadline:
                time.sleep(0.001)
        factory.gate.set()
    return status, lines


def data(lines: list[str]) -> list[Any]:
    return [json.loads(line[6:]) for line in lines if line.startswith("data: {")]


ASK = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}


def test_pings_while_the_prompt_is_read_then_the_answer(model: None) -> None:
    factory = SlowFactory()
    status, lines = stream("/v1/chat/completions", ASK, factory)
    assert status == 200
    first_data = next(i for i, line in enumerate(lines) if line.startswith("data: "))
    first_text = next(i for i, line in enumerate(lines) if '"content":"Hi"' in line)
    pings = [i for i, line in enumerate(lines) if line == ": ping"]
    assert len(pings) >= PINGS_WANTED
    assert all(first_data < i < first_text for i in pings)  # after the role, before the text
    assert lines[-1] == "data: [DONE]"
    assert factory.runners[0].requests[0].progress  # a streamed job asks for progress
    chunks = data(lines)
    assert not any("prompt_progress" in c for c in chunks)  # not asked for
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_return_progress_sends_prompt_progress_chunks(model: None) -> None:
    factory = SlowFactory()
    status, lines = stream(
        "/v1/completions", {**ASK, "prompt": "hi", "return_progress": True}, factory
    )
    assert status == 200
    progress = [c["prompt_progress"] for c in data(lines) if "prompt_progress" in c]
    assert progress == [
        {"total": 900, "cache": 100, "processed": 0, "time_ms": 0},
        {"total": 900, "cache": 100, "processed": 800, "time_ms": 42},
    ]
    assert all(c["choices"] == [] for c in data(lines) if "prompt_progress" in c)


def test_a_job_not_taken_in_time_still_gets_its_status_and_pings(model: None) -> None:
    """Waiting for a slot or a load sends nothing from the runner: the status goes out
    after the hold (the ping interval) and the pings keep the client."""
    factory = SlowFactory(silent=True)
    status, lines = stream("/v1/chat/completions", ASK, factory)
    assert status == 200
    assert lines.count(": ping") >= PINGS_WANTED
    assert any('"content":"Hi"' in line for line in lines)


def test_a_client_that_leaves_during_pings_stops_the_generation(model: None) -> None:
    factory = SlowFactory()
    stream("/v1/chat/completions", ASK, factory, leave_after_pings=True)
    runner = factory.runners[0]
    assert (runner.active, runner.cancelled) == (0, 1)


def test_ollama_streams_get_no_pings(model: None) -> None:
    """NDJSON has no comment line the ollama package would skip: nothing but JSON, and
    its job asks for no progress."""
    factory = SlowFactory()
    app = create_app(load_settings(), runner_factory=factory)
    opener = threading.Timer(0.1, factory.gate.set)  # ten ping intervals with the gate shut
    opener.start()
    with serving(app) as url, httpx.stream("POST", url + "/api/chat", json=ASK) as response:
        lines = [line for line in response.iter_lines() if line]
    opener.join()
    assert [json.loads(line)["done"] for line in lines] == [False, True]
    assert not factory.runners[0].requests[0].progress


def test_responses_stream_pings_and_shows_progress(model: None) -> None:
    """/v1/responses: pings while the prompt is read, then response.in_progress once a
    chunk of it was read, then the answer's events."""
    factory = SlowFactory()
    body = {"model": "chat", "input": "hi"}
    status, lines = stream("/v1/responses", body, factory)
    assert status == 200
    names = [line.removeprefix("event: ") for line in lines if line.startswith("event: ")]
    assert names[:3] == ["response.created", "response.in_progress", "response.in_progress"]
    assert names[-1] == "response.completed"
    pings = [i for i, line in enumerate(lines) if line == ": ping"]
    progressed = [i for i, line in enumerate(lines) if line == "event: response.in_progress"]
    assert len(pings) >= PINGS_WANTED
    assert all(progressed[0] < i < progressed[1] for i in pings)
    assert "[DONE]" not in lines[-1]
