"""Checks shared by the bad-input battery and the fuzz tests: the shape of an error
answer, the store's files, and what the daemon logged meanwhile."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.support.daemon import Daemon

__all__ = ["error_message", "store_listing", "untouched"]


def error_message(path: str, response: httpx.Response) -> str:
    """The message of a JSON error answer, checking its shape: ``{"error": "..."}`` on
    Ollama's routes, OpenAI's ``{"error": {"message", "type", "param", "code"}}`` on /v1,
    Anthropic's ``{"type": "error", "error": {"type", "message"}}`` on /v1/messages."""
    shown = f"{response.request.method} {path} -> {response.status_code} {response.text[:300]!r}"
    assert response.headers.get("content-type", "").startswith("application/json"), shown
    assert "Traceback" not in response.text, shown
    answer = response.json()
    error = answer["error"]
    if path == "/v1/messages" or path.startswith("/v1/messages/"):
        assert set(answer) == {"type", "error"} and answer["type"] == "error", shown
        assert set(error) == {"type", "message"}, shown
        assert isinstance(error["type"], str) and error["type"], shown
        message = error["message"]
    elif path.startswith("/v1"):
        assert set(error) == {"message", "type", "param", "code"}, shown
        assert isinstance(error["type"], str) and error["type"], shown
        message = error["message"]
    else:
        message = error
    assert isinstance(message, str) and message, shown
    assert "\n" not in message, shown
    return message


def store_listing(home: Path) -> dict[str, tuple[int, int]]:
    """Every file of the store with its size and mtime, but the lock files and the cache
    of verified digests (reading a model may write those)."""
    root = home / "models"
    return {
        str(path.relative_to(root)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.suffix != ".lock" and "verified" not in path.parts
    }


@contextlib.contextmanager
def untouched(daemon: Daemon) -> Iterator[None]:
    """Checks on leaving: the store's files are as they were, the daemon still answers,
    and it logged no traceback and no error meanwhile."""
    before = store_listing(daemon.home)
    log_start = daemon.log.stat().st_size
    yield
    assert store_listing(daemon.home) == before, "the store changed"
    version = httpx.get(f"{daemon.url}/api/version", timeout=30, trust_env=False)
    assert version.status_code == 200, "the daemon stopped answering"
    with daemon.log.open("rb") as log:
        log.seek(log_start)
        logged = log.read().decode(errors="replace")
    assert "Traceback" not in logged and " ERROR " not in logged, logged[-3000:]
