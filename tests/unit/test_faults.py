"""Faults around the model store, in process: the stamp logic behind the cheap check that a
blob is still what was verified (store/verify.py: a byte flipped in place, a truncated
file, a replaced one, a missing one, a store without stamps), repair by import and
pull, locks, and the scheduler facing damaged or deleted models (over the fake runner).
(tests/e2e/test_faults.py: the same faults through real daemons.)"""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
from pathlib import Path

import pytest

from localserve.errors import DamagedModelError, InvalidReferenceError, ModelNotFoundError
from localserve.store import download, verify
from localserve.store.importing import import_gguf
from localserve.store.pull import hub_ref, pull_model
from localserve.store.store import ModelStore, Stamp
from localserve.store.verify import blob_problem, check_model
from tests.support.daemon import (
    free_port,
)
from tests.support.fake_runner import FakeFactory, add_model, req, scheduler_for, until
from tests.support.fake_runner import run as sched_run
from tests.support.fakehub import FakeHub
from tests.support.stores import (
    DAMAGED_REPO,
    HUB_NAME,
    flip_a_byte,
    leftovers,
    sha256_of,
    truncate_half,
)


@pytest.fixture(autouse=True)
def _no_stray_daemon(isolated_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI runs here must never reach a daemon outside the test: by default they
    point at a free port (a test that means a daemon names its port)."""
    monkeypatch.setenv("LOCALSERVE_HOST", f"127.0.0.1:{free_port()}")


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
    advice = f"run `localserve pull hf.co/{DAMAGED_REPO}:faults-Q4_K_M.gguf`"
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
