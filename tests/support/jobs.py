"""Running jobs to the end: on an engine in process, or on a runner process
(scheduler/runner_client.py) given in its wire form."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from localserve.runtime.protocol import DoneEvent, GenerateJob, TextEvent, event_to_wire
from localserve.scheduler.runner_client import RunnerClient

if TYPE_CHECKING:
    from localserve.engine.engine import Engine


def run_engine(engine: Engine) -> tuple[dict[str, str], dict[str, DoneEvent]]:
    """Step ``engine`` until it is idle: each job's text and its done event."""
    texts: dict[str, str] = {}
    done: dict[str, DoneEvent] = {}
    for _ in range(10_000):
        if not engine.has_work():
            break
        for event in engine.step():
            if isinstance(event, TextEvent):
                texts[event.id] = texts.get(event.id, "") + event.text
            elif isinstance(event, DoneEvent):
                done[event.id] = event
    assert not engine.has_work()
    return texts, done


async def collect(runner: RunnerClient, request: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The answer's text and the done event's fields."""
    text, done = "", {}
    async for event in runner.generate(GenerateJob.from_wire(request)):
        if isinstance(event, TextEvent):
            text += event.text
        elif isinstance(event, DoneEvent):
            done = event_to_wire(event)
    return text, done
