"""/api/pull through the daemon's app (in-process) from the fake Hugging Face server."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from localserve.config import load_settings
from localserve.server.app import create_app
from localserve.store.store import ModelStore
from tests.support.fakehub import FakeHub
from tests.support.tiny_gguf import write_tiny_gguf

REPO = "tester/api-GGUF"


@pytest.fixture
def hub(fake_hub: FakeHub, tmp_path: Path) -> FakeHub:
    model = write_tiny_gguf(tmp_path / "api-Q4_K_M.gguf", n_embd=256, n_ff=512, seed=7)
    fake_hub.add_repo(REPO, {model.name: model})
    return fake_hub


async def pull_lines(body: dict[str, Any]) -> tuple[int, list[dict[str, Any]]]:
    app = create_app(load_settings())
    lines: list[dict[str, Any]] = []
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with (
            httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client,
            client.stream("POST", "/api/pull", json=body) as response,
        ):
            async for line in response.aiter_lines():
                lines.append(json.loads(line))
            status = response.status_code
    return status, lines


def test_pull_streams_ollama_progress(hub: FakeHub, isolated_home: Path) -> None:
    status, lines = asyncio.run(pull_lines({"model": f"hf.co/{REPO}"}))
    assert status == 200
    statuses = [line["status"] for line in lines]
    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    progress = [line for line in lines if line["status"].startswith("pulling ") and "total" in line]
    assert progress[-1]["completed"] == progress[-1]["total"]
    assert progress[-1]["digest"].startswith("sha256:")
    names = [m.name for m in ModelStore(isolated_home / "models").list_models()]
    assert names == [f"hf.co/{REPO}:latest"]


def test_pull_without_streaming(hub: FakeHub) -> None:
    status, lines = asyncio.run(pull_lines({"model": f"{REPO}:Q4_K_M", "stream": False}))
    assert status == 200
    assert lines == [{"status": "success"}]


def test_pull_errors_have_a_status(hub: FakeHub) -> None:
    status, lines = asyncio.run(pull_lines({"model": "hf.co/tester/missing"}))
    assert status == 404
    assert "not found" in lines[0]["error"]
    status, lines = asyncio.run(pull_lines({"model": f"hf.co/{REPO}:Q8_0"}))
    assert status == 404
    assert "Q4_K_M" in lines[0]["error"]  # lists what exists
