"""Faults around the model store and pulls, through real daemons on loopback ports, the
real CLI and the fake Hugging Face server:

- a blob that changed on disk after it was verified is refused before the model loads,
  with an error that names the model and the repair, and `pull` repairs it;
- deleting a loaded model unloads it: no runner keeps the deleted files, in-flight
  requests end with an error, and files shared with a copy stay;
- a daemon SIGKILLed mid-/api/pull: the next pull resumes the partial, and the model is
  never listed while incomplete;
- many different models pulled at once, through the daemon and the CLI: all arrive
  verified, and the store holds no partials and no lock files afterwards.

(tests/unit/test_faults.py: the stamp logic and the scheduler's side, in process.)"""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from localserve.store.store import ModelStore, Stamp
from tests.support.cli import cli
from tests.support.daemon import (
    Daemon,
    alive,
    free_port,
    running_daemon,
    start_daemon,
    stop_daemon,
    wait_until,
)
from tests.support.fakehub import FakeHub
from tests.support.stores import (
    DAMAGED_REPO,
    HUB_NAME,
    flip_a_byte,
    leftovers,
    sha256_of,
    truncate_half,
)
from tests.support.tiny_gguf import write_tiny_gguf

NEVER_ENDS = {"num_predict": 1_000_000, "ignore_eos": True}


def generate(daemon: Daemon, model: str, **extra: Any) -> httpx.Response:
    body = {
        "model": model,
        "prompt": "hello",
        "stream": False,
        "options": {"num_predict": 3},
        "keep_alive": 0,  # unloaded after each request: the next one loads (and checks) again
        **extra,
    }
    return httpx.post(daemon.url + "/api/generate", json=body, timeout=120)


def tag_names(daemon: Daemon) -> list[str]:
    response = httpx.get(daemon.url + "/api/tags", timeout=30)
    assert response.status_code == 200, response.text
    return sorted(m["name"] for m in response.json()["models"])


def ps_names(daemon: Daemon) -> list[str]:
    response = httpx.get(daemon.url + "/api/ps", timeout=30)
    assert response.status_code == 200, response.text
    return sorted(m["name"] for m in response.json()["models"])


def hub_env(hub: FakeHub) -> dict[str, str]:
    """What a daemon needs to pull from the fake Hub (tests run it offline otherwise)."""
    return {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0"}


@pytest.fixture(autouse=True)
def _no_stray_daemon(isolated_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI runs here must never reach a daemon outside the test: by default they
    point at a free port (a test that means a daemon names its port)."""
    monkeypatch.setenv("LOCALSERVE_HOST", f"127.0.0.1:{free_port()}")


def test_damaged_blobs_are_refused_and_pull_repairs_them(
    fake_hub: FakeHub, hub_model: Path, tiny_copy: Path, isolated_home: Path
) -> None:
    store = ModelStore(isolated_home / "models")
    blob = store.blob_path(sha256_of(hub_model))
    with running_daemon(isolated_home, tiny_copy, env=hub_env(fake_hub)) as daemon:
        pulled = httpx.post(
            daemon.url + "/api/pull", json={"model": HUB_NAME, "stream": False}, timeout=120
        )
        assert pulled.json() == {"status": "success"}

        # 1. A byte flipped in place: refused over both APIs, the daemon serves on.
        flip_a_byte(blob)
        refused = generate(daemon, HUB_NAME)
        assert refused.status_code == 409
        message = refused.json()["error"]
        assert f"model '{HUB_NAME}' is damaged" in message
        assert f"run `localserve pull {HUB_NAME}` to download it again" in message
        openai = httpx.post(
            daemon.url + "/v1/chat/completions",
            json={"model": HUB_NAME, "messages": [{"role": "user", "content": "hi"}]},
            timeout=120,
        )
        assert openai.status_code == 409
        assert "is damaged" in openai.json()["error"]["message"]
        assert generate(daemon, "tiny").status_code == 200
        assert tag_names(daemon) == sorted([HUB_NAME, "tiny:latest"])
        assert ps_names(daemon) == []  # nothing was loaded from the damaged file

        # `localserve pull` repairs it: downloaded again, verified, and it works.
        repaired = cli("pull", HUB_NAME, env=hub_env(fake_hub))
        assert repaired.returncode == 0, repaired.stderr
        assert sha256_of(blob) == sha256_of(hub_model)
        answer = generate(daemon, HUB_NAME)
        assert answer.status_code == 200, answer.text
        assert answer.json()["done"] is True

        # 2. Truncated: refused without hashing; /api/tags still lists it; /api/pull repairs.
        truncate_half(blob)
        refused = generate(daemon, HUB_NAME)
        assert refused.status_code == 409
        assert "bytes instead of" in refused.json()["error"]
        assert tag_names(daemon) == sorted([HUB_NAME, "tiny:latest"])
        again = httpx.post(
            daemon.url + "/api/pull", json={"model": HUB_NAME, "stream": False}, timeout=120
        )
        assert again.json() == {"status": "success"}
        assert generate(daemon, HUB_NAME).status_code == 200

        # 3. An imported model has nowhere to pull from: the error says to import again.
        flip_a_byte(store.blob_path(store.get("tiny")[1].digest))
        refused = generate(daemon, "tiny")
        assert refused.status_code == 409
        assert "import that file again with `localserve import" in refused.json()["error"]
        result = cli("pull", "tiny")
        assert result.returncode == 5  # the store-integrity exit code
        first, *rest = result.stderr.strip().splitlines()
        assert first.startswith("Error: model 'tiny:latest' is damaged")
        assert rest == []
        assert "Traceback" not in result.stderr
        assert generate(daemon, HUB_NAME).status_code == 200
    assert "is damaged" in daemon.log.read_text()  # the daemon's log records it too


def test_deleting_a_loaded_model_unloads_it(tiny_copy: Path, isolated_home: Path) -> None:
    store = ModelStore(isolated_home / "models")
    with running_daemon(isolated_home, tiny_copy) as daemon:
        digest = store.get("tiny")[1].digest
        for copy in ("copy1", "copy2"):
            made = httpx.post(
                daemon.url + "/api/copy", json={"source": "tiny", "destination": copy}, timeout=30
            )
            assert made.status_code == 200

        # 1. DELETE while a stream runs on it: the stream ends with an error line, the
        # runner is gone when DELETE answers, and the next request is a 404.
        lines: list[dict[str, Any]] = []
        body = {"model": "tiny", "prompt": "Once", "raw": True, "options": NEVER_ENDS}
        give_up = time.monotonic() + 120  # the stream must end once the model is deleted
        with httpx.stream("POST", daemon.url + "/api/generate", json=body, timeout=60) as stream:
            for line in stream.iter_lines():
                lines.append(json.loads(line))
                assert time.monotonic() < give_up, "the stream went on after the delete"
                if len(lines) == 3:
                    runners = daemon.children()
                    assert len(runners) == 1
                    deleted = httpx.request(
                        "DELETE", daemon.url + "/api/delete", json={"model": "tiny"}, timeout=60
                    )
                    assert deleted.status_code == 200
                    assert not alive(runners[0])
        assert lines[-1].get("error") == "model 'tiny:latest' was deleted", lines[-3:]
        missing = generate(daemon, "tiny")
        assert missing.status_code == 404
        assert "not found" in missing.json()["error"]
        # The blob is shared with the copies: it stays, and they work.
        assert store.blob_path(digest).is_file()
        assert generate(daemon, "copy1", keep_alive=-1).status_code == 200

        # 2. `localserve rm` with the daemon running: it asks the daemon, which unloads.
        runners = daemon.children()
        assert ps_names(daemon) == ["copy1:latest"] and len(runners) == 1
        result = cli("rm", "copy1", env={"LOCALSERVE_HOST": f"127.0.0.1:{daemon.port}"})
        assert result.returncode == 0, result.stderr
        assert "deleted 'copy1:latest'" in result.stderr
        assert ps_names(daemon) == []
        assert not alive(runners[0])
        assert generate(daemon, "copy1").status_code == 404

        # 3. Deleted behind the daemon's back (another process, no daemon asked): the
        # daemon notices and lets go of the files.
        assert generate(daemon, "copy2", keep_alive=-1).status_code == 200
        runners = daemon.children()
        assert len(runners) == 1
        store.remove("copy2")
        assert wait_until(lambda: ps_names(daemon) == [], timeout=30)
        assert wait_until(lambda: not alive(runners[0]), timeout=30)
        assert generate(daemon, "copy2").status_code == 404
        # The last name is gone, and the blob and its stamp with it.
        assert not store.blob_path(digest).exists()
        assert not store.stamp_path(digest).exists()


def test_daemon_killed_mid_pull_resumes_and_never_lists_a_partial(
    fake_hub: FakeHub, tmp_path: Path, isolated_home: Path
) -> None:
    # Seven 1 MiB chunks, four connections at 250 kB/s each: the first four chunks take
    # about four seconds, and the daemon is killed as soon as one is recorded done.
    model = write_tiny_gguf(tmp_path / "hub" / "slow-Q4_K_M.gguf", n_embd=256, n_ff=512, seed=7)
    size, digest = model.stat().st_size, sha256_of(model)
    fake_hub.add_repo(DAMAGED_REPO, {model.name: model})
    fake_hub.faults.bytes_per_second = 250_000
    store = ModelStore(isolated_home / "models")
    state = store.partial_path(digest, ".json")

    def chunks_done() -> int:
        try:
            return len(json.loads(state.read_text())["done"])
        except (OSError, ValueError, KeyError):
            return 0

    daemon = start_daemon(isolated_home, env=hub_env(fake_hub))
    try:
        with httpx.stream(
            "POST", daemon.url + "/api/pull", json={"model": HUB_NAME}, timeout=60
        ) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            assert json.loads(next(lines))["status"] == "pulling manifest"
            deadline = time.monotonic() + 60
            while chunks_done() == 0 and time.monotonic() < deadline:
                assert tag_names(daemon) == []  # never listed while incomplete
                assert store.list_models() == []
                time.sleep(0.05)
            assert 0 < chunks_done() < 7
            daemon.process.kill()
            daemon.process.wait(30)
    finally:
        stop_daemon(daemon, check=False)

    assert store.partial_path(digest, ".partial").stat().st_size == size
    assert store.list_models() == []
    listed = cli("list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == []

    fake_hub.faults.bytes_per_second = None
    fake_hub.clear_requests()
    with running_daemon(isolated_home, env=hub_env(fake_hub)) as daemon:
        assert tag_names(daemon) == []
        resumed = httpx.post(
            daemon.url + "/api/pull", json={"model": HUB_NAME, "stream": False}, timeout=120
        )
        assert resumed.json() == {"status": "success"}
        ranges = [r.range for r in fake_hub.requests_for("/cdn-lfs/", "GET")]
        assert ranges and all(r is not None and r.startswith("bytes=") for r in ranges)
        requested = 0
        for header in ranges:
            assert header is not None
            first, last = header.removeprefix("bytes=").split("-")
            requested += int(last) - int(first) + 1
        assert requested < size  # the chunks done before the kill were not fetched again
        assert sha256_of(store.blob_path(digest)) == digest
        assert tag_names(daemon) == [HUB_NAME]
        assert generate(daemon, HUB_NAME).status_code == 200
    assert leftovers(store) == []


def test_many_different_pulls_at_once(
    fake_hub: FakeHub, tmp_path: Path, isolated_home: Path
) -> None:
    models: dict[str, Path] = {}
    for i in range(6):
        repo = f"tester/many{i}-GGUF"
        path = write_tiny_gguf(tmp_path / "hub" / repo / f"many{i}-Q4_K_M.gguf", seed=100 + i)
        fake_hub.add_repo(repo, {path.name: path})
        models[f"hf.co/{repo}:latest"] = path
    fake_hub.faults.bytes_per_second = 400_000  # about two seconds each: they overlap
    names = sorted(models)
    store = ModelStore(isolated_home / "models")

    with running_daemon(isolated_home, env=hub_env(fake_hub)) as daemon:

        def api_pull(name: str) -> dict[str, Any]:
            response = httpx.post(
                daemon.url + "/api/pull", json={"model": name, "stream": False}, timeout=120
            )
            result: dict[str, Any] = response.json()
            return result

        env = {**os.environ, "COLUMNS": "200"}
        processes = [
            subprocess.Popen(
                [sys.executable, "-m", "localserve", "pull", name],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for name in names[3:]
        ]
        try:
            with concurrent.futures.ThreadPoolExecutor(3) as pool:
                answers = list(pool.map(api_pull, names[:3]))
            outcomes = [(p.wait(120), p.communicate()[1]) for p in processes]
        finally:
            for process in processes:
                if process.poll() is None:
                    process.kill()
                    process.wait()
        assert answers == [{"status": "success"}] * 3
        assert [code for code, _ in outcomes] == [0] * 3, outcomes
        assert tag_names(daemon) == names

    listed = cli("list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert sorted(m["name"] for m in json.loads(listed.stdout)) == names
    for name, source in models.items():
        manifest = store.get(name)[1]
        blob = store.blob_path(manifest.digest)
        assert manifest.digest == sha256_of(source) == sha256_of(blob)
        assert store.read_stamp(manifest.digest) == Stamp.of(blob.stat())
    assert leftovers(store) == []
