"""/api/pull through a real daemon: a client that leaves mid-pull leaves a partial the next
pull resumes. (tests/unit/test_api_pull.py has the in-process pulls.)"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from localserve.store.store import ModelStore
from tests.support.fakehub import FakeHub
from tests.support.tiny_gguf import write_tiny_gguf

REPO = "tester/api-GGUF"


@pytest.fixture
def hub(fake_hub: FakeHub, tmp_path: Path) -> FakeHub:
    model = write_tiny_gguf(tmp_path / "api-Q4_K_M.gguf", n_embd=256, n_ff=512, seed=7)
    fake_hub.add_repo(REPO, {model.name: model})
    return fake_hub


def test_client_leaving_mid_pull_keeps_a_resumable_partial(
    hub: FakeHub, isolated_home: Path
) -> None:
    """A real daemon: the client disconnects part way, the download stops, the partial
    stays and no model is listed; the next pull resumes and finishes."""
    from tests.support.daemon import running_daemon

    hub.faults.bytes_per_second = 1_000_000
    env = {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0"}
    store = ModelStore(isolated_home / "models")
    with running_daemon(isolated_home, env=env) as daemon:
        with httpx.stream(
            "POST", daemon.url + "/api/pull", json={"model": f"hf.co/{REPO}"}, timeout=30
        ) as response:
            for count, _ in enumerate(response.iter_lines()):
                if count >= 4:
                    break
        partials = list(store.partial_dir.glob("*.partial"))
        assert partials
        state = partials[0].with_suffix(".json")
        before = state.read_text()
        time.sleep(1.5)  # the download has stopped: its state no longer changes
        assert state.read_text() == before
        assert store.list_models() == []
        hub.faults.bytes_per_second = None
        final = httpx.post(
            daemon.url + "/api/pull", json={"model": f"hf.co/{REPO}", "stream": False}, timeout=60
        )
        assert final.json() == {"status": "success"}
    assert [m.name for m in store.list_models()] == [f"hf.co/{REPO}:latest"]
