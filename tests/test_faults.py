"""Faults around the model store and pulls, end to end where it matters.

- A blob that changed on disk after it was verified (a byte flipped in place, the
  file truncated) is found before the model loads, refused with an error that names
  the model and the repair, and `pull` repairs it; the stamp logic behind the cheap
  check (store/verify.py) is unit-tested first.
- Deleting a loaded model (DELETE /api/delete, `localserve rm`, or by hand) unloads
  it: no runner keeps the deleted files, in-flight requests end with an error, and
  files shared with a copy stay.
- A daemon SIGKILLed mid-/api/pull: the next pull resumes the partial, and the model
  is never listed while incomplete.
- Many different models pulled at once, through the daemon and the CLI: all arrive
  verified, and the store holds no partials and no lock files afterwards.

Real daemons on loopback ports, the real CLI, the fake Hugging Face server.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from localserve.errors import DamagedModelError, InvalidReferenceError, ModelNotFoundError
from localserve.store import download, verify
from localserve.store.importing import import_gguf
from localserve.store.pull import hub_ref, pull_model
from localserve.store.store import ModelStore, Stamp
from localserve.store.verify import blob_problem, check_model
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
from tests.support.tiny_gguf import write_tiny_gguf
from tests.test_scheduler import FakeFactory, add_model, req, scheduler_for, until
from tests.test_scheduler import run as sched_run

REPO = "tester/faults-GGUF"
HUB_NAME = f"hf.co/{REPO}:latest"
NEVER_ENDS = {"num_predict": 1_000_000, "ignore_eos": True}


# ------------------------------------------------------------------ helpers


def sha256_of(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def flip_a_byte(path: Path) -> None:
    """Change one byte in the middle of the file, in place: same size, same inode."""
    middle = path.stat().st_size // 2
    with path.open("r+b") as handle:
        handle.seek(middle)
        byte = handle.read(1)
        handle.seek(middle)
        handle.write(bytes([byte[0] ^ 0xFF]))


def truncate_half(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


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


def leftovers(store: ModelStore) -> list[str]:
    """Anything a finished pull must not leave: partials, their state, lock and temp files."""
    found = list(store.partial_dir.iterdir()) if store.partial_dir.is_dir() else []
    found += [p for p in store.root.rglob("*.lock") if p != store.root / "store.lock"]
    found += list(store.root.rglob(".*.tmp"))
    return sorted(str(p.relative_to(store.root)) for p in set(found))


@pytest.fixture(autouse=True)
def _no_stray_daemon(isolated_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI runs here must never reach a daemon outside the test: by default they
    point at a free port (a test that means a daemon names its port)."""
    monkeypatch.setenv("LOCALSERVE_HOST", f"127.0.0.1:{free_port()}")


@pytest.fixture
def store(isolated_home: Path) -> ModelStore:
    return ModelStore(isolated_home / "models")


@pytest.fixture
def tiny_copy(tmp_path: Path, tiny_gguf_path: Path) -> Path:
    """The tiny model in a file of this test's own: import hard-links it, so damaging the
    blob damages this file too, never the session's shared one."""
    copy = tmp_path / "source" / "tiny.gguf"
    copy.parent.mkdir()
    shutil.copyfile(tiny_gguf_path, copy)
    return copy


@pytest.fixture
def hub_model(fake_hub: FakeHub, tmp_path: Path) -> Path:
    model = write_tiny_gguf(tmp_path / "hub" / "faults-Q4_K_M.gguf", seed=11)
    fake_hub.add_repo(REPO, {model.name: model})
    return model


def imported(store: ModelStore, source: Path, name: str = "tiny") -> str:
    for _ in import_gguf(store, source, name):
        pass
    return store.get(name)[1].digest


class HashCounter:
    """Counts the re-hashes verify.py does (the expensive path)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = verify._hash

        def counting(path: Path) -> tuple[str, Stamp | None]:
            self.calls += 1
            return real(path)

        monkeypatch.setattr(verify, "_hash", counting)


# --------------------------------------------------------- stamps (no daemon)


def test_import_and_pull_stamp_what_they_verified(
    store: ModelStore, tiny_copy: Path, hub_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    digest = imported(store, tiny_copy)
    for _ in pull_model(store, HUB_NAME):
        pass
    for blob_digest in (digest, sha256_of(hub_model)):
        blob = store.blob_path(blob_digest)
        assert store.read_stamp(blob_digest) == Stamp.of(blob.stat())
    hashes = HashCounter(monkeypatch)
    for name in ("tiny", HUB_NAME):
        check_model(store, store.get(name)[1])
    assert hashes.calls == 0  # the cheap path: a stat, no hashing


def test_a_store_without_stamps_hashes_once_then_stamps(
    store: ModelStore, tiny_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    digest = imported(store, tiny_copy)
    shutil.rmtree(store.verified_dir)  # a store written before stamps existed
    hashes = HashCounter(monkeypatch)
    manifest = store.get("tiny")[1]
    check_model(store, manifest)
    assert hashes.calls == 1
    assert store.read_stamp(digest) == Stamp.of(store.blob_path(digest).stat())
    check_model(store, manifest)
    assert hashes.calls == 1


def test_an_unreadable_stamp_means_hash_again(
    store: ModelStore, tiny_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    digest = imported(store, tiny_copy)
    store.stamp_path(digest).write_text("{not json")
    hashes = HashCounter(monkeypatch)
    assert blob_problem(store, digest, tiny_copy.stat().st_size) is None
    assert hashes.calls == 1
    assert store.read_stamp(digest) is not None


def test_a_metadata_change_costs_one_hash_and_passes(
    store: ModelStore, tiny_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    digest = imported(store, tiny_copy)
    os.chmod(store.blob_path(digest), 0o600)  # changes ctime, not the bytes
    hashes = HashCounter(monkeypatch)
    manifest = store.get("tiny")[1]
    check_model(store, manifest)
    check_model(store, manifest)
    assert hashes.calls == 1


@pytest.mark.parametrize("restore_mtime", [False, True])
def test_a_byte_changed_in_place_is_found(
    store: ModelStore, tiny_copy: Path, restore_mtime: bool
) -> None:
    digest = imported(store, tiny_copy)
    blob = store.blob_path(digest)
    before = blob.stat()
    flip_a_byte(blob)
    if restore_mtime:  # touch can put mtime back; ctime still tells
        os.utime(blob, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert blob.stat().st_size == before.st_size
    with pytest.raises(DamagedModelError) as info:
        check_model(store, store.get("tiny")[1])
    message = str(info.value)
    assert "model 'tiny:latest' is damaged" in message
    assert "no longer matches its sha256" in message
    assert "localserve import PATH/tiny.gguf tiny:latest" in message  # no remote: re-import
    # Still damaged the next time: a failed check writes no stamp.
    assert blob_problem(store, digest, before.st_size) is not None


def test_a_truncated_blob_is_found_without_hashing(
    store: ModelStore, tiny_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    digest = imported(store, tiny_copy)
    size = store.blob_path(digest).stat().st_size
    truncate_half(store.blob_path(digest))
    hashes = HashCounter(monkeypatch)
    assert blob_problem(store, digest, size) == f"is {size // 2} bytes instead of {size}"
    assert hashes.calls == 0


def test_a_blob_replaced_by_other_bytes_of_the_same_size_and_mtime_is_found(
    store: ModelStore, tiny_copy: Path, tmp_path: Path
) -> None:
    digest = imported(store, tiny_copy)
    blob = store.blob_path(digest)
    other = tmp_path / "other.gguf"
    shutil.copy2(blob, other)  # copy2 keeps the mtime
    flip_a_byte(other)
    os.utime(other, ns=(blob.stat().st_atime_ns, blob.stat().st_mtime_ns))
    os.replace(other, blob)  # a new inode under the blob's name
    assert blob_problem(store, digest, blob.stat().st_size) is not None


def test_a_missing_blob_is_named(store: ModelStore, tiny_copy: Path) -> None:
    digest = imported(store, tiny_copy)
    store.blob_path(digest).unlink()
    with pytest.raises(DamagedModelError, match="is missing from the store"):
        check_model(store, store.get("tiny")[1])


def test_importing_again_repairs_an_imported_model(
    store: ModelStore, tiny_copy: Path, tiny_gguf_path: Path, tmp_path: Path
) -> None:
    digest = imported(store, tiny_copy)
    flip_a_byte(store.blob_path(digest))  # the linked source is damaged with it
    pristine = tmp_path / "pristine.gguf"
    shutil.copyfile(tiny_gguf_path, pristine)
    assert imported(store, pristine) == digest
    check_model(store, store.get("tiny")[1])
    assert sha256_of(store.blob_path(digest)) == digest


def test_repair_advice_names_the_way_back(
    store: ModelStore, tiny_copy: Path, hub_model: Path
) -> None:
    for _ in pull_model(store, HUB_NAME):
        pass
    store.copy(HUB_NAME, "mine")
    flip_a_byte(store.blob_path(sha256_of(hub_model)))
    with pytest.raises(DamagedModelError, match=f"run `localserve pull {HUB_NAME}`"):
        check_model(store, store.get(HUB_NAME)[1])
    # A copy is repaired by pulling the file it names from its repository.
    advice = f"run `localserve pull hf.co/{REPO}:faults-Q4_K_M.gguf`"
    with pytest.raises(DamagedModelError, match=advice):
        check_model(store, store.get("mine")[1])
    with pytest.raises(DamagedModelError, match="model 'mine:latest' is damaged"):
        hub_ref("mine", store)  # `localserve pull mine` says the same


def test_pulling_a_local_name_says_why_not(store: ModelStore, tiny_copy: Path) -> None:
    imported(store, tiny_copy)
    with pytest.raises(InvalidReferenceError, match="imported from a local file"):
        hub_ref("tiny", store)
    with pytest.raises(InvalidReferenceError, match="is a local name"):
        hub_ref("nothing-here", store)


def test_pull_checks_a_stored_model_cheaply_and_repairs_it(
    store: ModelStore, fake_hub: FakeHub, hub_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for _ in pull_model(store, HUB_NAME):
        pass
    blob = store.blob_path(sha256_of(hub_model))
    hashes = HashCounter(monkeypatch)
    fake_hub.clear_requests()
    for _ in pull_model(store, HUB_NAME):
        pass
    assert fake_hub.requests_for("/cdn-lfs/") == []  # nothing downloaded
    assert hashes.calls == 0  # and nothing hashed: the stamp matched

    flip_a_byte(blob)
    for _ in pull_model(store, HUB_NAME):
        pass
    assert fake_hub.requests_for("/cdn-lfs/")  # downloaded again
    assert blob.read_bytes() == hub_model.read_bytes()
    assert store.read_stamp(sha256_of(hub_model)) == Stamp.of(blob.stat())
    assert leftovers(store) == []


def test_a_lock_deleted_under_a_waiter_is_not_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The download lock file goes when released; a waiter that opened it before that
    and then wins the flock on the deleted file must not count as holding the lock."""
    path = tmp_path / "sha256-x.lock"
    holder, waiter = download._BlobLock(path), download._BlobLock(path)
    assert holder.try_acquire()
    assert not waiter.try_acquire()  # held
    real_flock = fcntl.flock

    def holder_finishes_first(fd: int, operation: int) -> None:
        holder.release()  # between the waiter's open and its flock: the file is deleted
        real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", holder_finishes_first)
    assert not waiter.try_acquire()
    monkeypatch.setattr(fcntl, "flock", real_flock)
    assert waiter.try_acquire()  # on a new file
    assert path.exists()
    waiter.release()
    assert not path.exists()


# ------------------------------------------- the scheduler's rules (fake runners)


def test_a_damaged_model_evicts_nothing(tmp_path: Path) -> None:
    """With room for one model, a request for a damaged one is refused before the
    resident model is unloaded to make room for it."""
    store = ModelStore(tmp_path / "models")
    store.ensure_dirs()
    for name in ("alpha", "beta"):
        add_model(store, name, f"weights of {name}".encode())
    flip_a_byte(store.blob_path(store.get("beta")[1].digest))
    factory = FakeFactory()

    async def main() -> None:
        scheduler = scheduler_for(store, factory, max_loaded=1)
        await scheduler.start()
        try:
            await scheduler.load(req("alpha"))
            with pytest.raises(DamagedModelError, match="model 'beta:latest' is damaged"):
                await scheduler.load(req("beta"))
            assert [r.name for r in scheduler.running()] == ["alpha:latest"]
            assert len(factory.loads) == 1
        finally:
            await scheduler.close()

    sched_run(main)


def test_a_model_deleted_while_it_loads_is_not_kept(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    store.ensure_dirs()
    add_model(store, "alpha", b"weights of alpha")
    factory = FakeFactory()
    factory.hold = True

    async def main() -> None:
        scheduler = scheduler_for(store, factory)
        await scheduler.start()
        try:
            loading = asyncio.create_task(scheduler.load(req("alpha")))
            await until(lambda: len(factory.held) == 1)
            store.remove("alpha")
            factory.held[0].set()
            with pytest.raises(ModelNotFoundError):
                await loading
            assert scheduler.running() == []
            assert factory.runners[0].close_reasons == ["model 'alpha:latest' was deleted"]
        finally:
            await scheduler.close()

    sched_run(main)


# --------------------------------------------------- damaged blobs, real daemon


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


# ------------------------------------------------------- deleting a loaded model


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


# ---------------------------------------------------------- SIGKILL mid-pull


def test_daemon_killed_mid_pull_resumes_and_never_lists_a_partial(
    fake_hub: FakeHub, tmp_path: Path, isolated_home: Path
) -> None:
    # Seven 1 MiB chunks, four connections at 250 kB/s each: the first four chunks take
    # about four seconds, and the daemon is killed as soon as one is recorded done.
    model = write_tiny_gguf(tmp_path / "hub" / "slow-Q4_K_M.gguf", n_embd=256, n_ff=512, seed=7)
    size, digest = model.stat().st_size, sha256_of(model)
    fake_hub.add_repo(REPO, {model.name: model})
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


# ------------------------------------------------------ many pulls at once


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
