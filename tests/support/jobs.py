"""Running a job on a runner process (scheduler/runner_client.py) given in its wire form."""

from __future__ import annotations

from typing import Any

from localserve.runtime.protocol import DoneEvent, GenerateJob, TextEvent, event_to_wire
from localserve.scheduler.runner_client import RunnerClient


async def collect(runner: RunnerClient, request: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The answer's text and the done event's fields."""
    text, done = "", {}
    async for event in runner.generate(GenerateJob.from_wire(request)):
        if isinstance(event, TextEvent):
            text += event.text
        elif isinstance(event, DoneEvent):
            done = event_to_wire(event)
    return text, done
