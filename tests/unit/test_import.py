"""import: a local GGUF into the store, validated, hard-linked or copied, never half-listed."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest

from localserve.errors import ImportSourceError, InvalidGGUFError, InvalidReferenceError
from localserve.store import importing
from localserve.store.importing import import_gguf
from localserve.store.store import ModelStore
from tests.support.tiny_gguf import write_tiny_gguf


def test_import_hard_links_on_the_same_filesystem(
    store: ModelStore, tiny_gguf_path: Path, tmp_path: Path
) -> None:
    source = tmp_path / "mine.gguf"
    source.write_bytes(tiny_gguf_path.read_bytes())
    events = list(import_gguf(store, source, "mine:v1"))
    assert events[-1].status == "success"
    _ref, manifest = store.get("mine:v1")
    blob = store.blob_path(manifest.digest)
    assert manifest.digest == hashlib.sha256(source.read_bytes()).hexdigest()
    assert os.stat(blob).st_ino == os.stat(source).st_ino  # no copy of the bytes
    assert manifest.source.type == "import"
    assert list(store.partial_dir.iterdir()) == []


def test_import_copies_across_filesystems(
    store: ModelStore, tiny_gguf_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.root.parent.mkdir(parents=True, exist_ok=True)
    shm = Path("/dev/shm")
    if shm.is_dir() and os.stat(shm).st_dev != os.stat(store.root.parent).st_dev:
        source = shm / f"localserve-test-{os.getpid()}.gguf"
    else:  # no second filesystem here: make os.link fail the way it does across devices

        def cross_device(*_: object) -> None:
            raise OSError(errno.EXDEV, "Invalid cross-device link")

        monkeypatch.setattr(importing.os, "link", cross_device)
        source = store.root.parent / "elsewhere" / "model.gguf"
        source.parent.mkdir(parents=True)
    source.write_bytes(tiny_gguf_path.read_bytes())
    try:
        events = list(import_gguf(store, source, "copied"))
        _, manifest = store.get("copied")
        blob = store.blob_path(manifest.digest)
        assert blob.read_bytes() == source.read_bytes()
        assert os.stat(blob).st_ino != os.stat(source).st_ino
        copying = [e for e in events if e.status.startswith("importing")]
        assert copying[-1].completed == copying[-1].total == source.stat().st_size
    finally:
        source.unlink()


def test_import_split_model_brings_every_part(store: ModelStore, tmp_path: Path) -> None:
    from tests.support.tiny_gguf import write_split_gguf

    parts = write_split_gguf(tmp_path, "big", n_parts=3)
    list(import_gguf(store, parts[0], "big"))
    _, manifest = store.get("big")
    assert [f.filename for f in manifest.files] == [p.name for p in parts]


def test_import_of_a_later_part_points_at_the_first(store: ModelStore, tmp_path: Path) -> None:
    from tests.support.tiny_gguf import write_split_gguf

    parts = write_split_gguf(tmp_path, "big", n_parts=2)
    with pytest.raises(ImportSourceError, match="part 2"):
        list(import_gguf(store, parts[1], "big"))


def test_not_a_gguf(store: ModelStore, tmp_path: Path) -> None:
    junk = tmp_path / "notes.gguf"
    junk.write_text("definitely not a model\n" * 50)
    with pytest.raises(InvalidGGUFError):
        list(import_gguf(store, junk, "junk"))
    assert store.list_models() == []
    assert not store.blobs_dir.exists() or list(store.blobs_dir.iterdir()) == []


@pytest.mark.parametrize("make", ["missing", "directory", "fifo"])
def test_unreadable_sources(store: ModelStore, tmp_path: Path, make: str) -> None:
    path = tmp_path / "thing.gguf"
    if make == "directory":
        path.mkdir()
    elif make == "fifo":
        os.mkfifo(path)
    with pytest.raises(ImportSourceError):
        list(import_gguf(store, path, "thing"))
    assert store.list_models() == []


def test_bad_name_fails_before_any_work(store: ModelStore, tiny_gguf_path: Path) -> None:
    with pytest.raises(InvalidReferenceError):
        list(import_gguf(store, tiny_gguf_path, "../escape"))
    assert not store.root.exists()


def test_import_same_file_twice_keeps_one_blob(store: ModelStore, tmp_path: Path) -> None:
    a = write_tiny_gguf(tmp_path / "a.gguf", seed=5)
    list(import_gguf(store, a, "one"))
    list(import_gguf(store, a, "two"))
    assert len(list(store.blobs_dir.iterdir())) == 1
    assert len(store.list_models()) == 2
