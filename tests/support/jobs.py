"""Running a job on a runner process (engine/client.py) given in its wire form."""

from __future__ import annotations

from typing import Any

from localserve.engine.client import RunnerClient
from localserve.engine.protocol import DoneEvent, GenerateJob, TextEvent, event_to_wire


async def collect(runner: RunnerClient, request: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The answer's text and the done event's fields."""
    text, done = "", {}
    async for event in runner.generate(GenerateJob.from_wire(request)):
        if isinstance(event, TextEvent):
            text += event.text
        elif isinstance(event, DoneEvent):
            done = event_to_wire(event)
    return text, done
