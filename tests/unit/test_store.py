"""The store on disk: manifests, shared blobs, copy and remove, containment of paths."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from localserve.errors import InvalidReferenceError, ModelNotFoundError, StoreError
from localserve.store.manifest import BlobEntry, HubSource, Manifest
from localserve.store.refs import ModelRef, parse_ref
from localserve.store.store import ModelStore


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    s = ModelStore(tmp_path / "models")
    s.ensure_dirs()
    return s


def add_blob(store: ModelStore, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    staged = store.partial_dir / "staged"
    staged.write_bytes(data)
    store.commit_blob(staged, digest)
    return digest


def add_model(store: ModelStore, name: str, *blobs: bytes) -> Manifest:
    ref = parse_ref(name)
    entries = tuple(
        BlobEntry(digest=add_blob(store, b), size=len(b), filename=f"f{i}.gguf")
        for i, b in enumerate(blobs)
    )
    manifest = Manifest(
        name=str(ref),
        files=entries,
        source=HubSource(repo="o/r", revision="c" * 40),
        quantization="Q4_K_M",
    )
    store.write_manifest(ref, manifest)
    return manifest


def test_layout_on_disk(store: ModelStore) -> None:
    manifest = add_model(store, "hf.co/owner/repo:Q4_K_M", b"weights")
    assert (store.root / "manifests" / "hf.co" / "owner" / "repo" / "Q4_K_M.json").is_file()
    assert (store.root / "blobs" / f"sha256-{manifest.digest}").read_bytes() == b"weights"
    add_model(store, "mine:v1", b"other")
    assert (store.root / "manifests" / "local" / "mine" / "v1.json").is_file()


def test_get_and_list(store: ModelStore) -> None:
    add_model(store, "hf.co/o/r:Q4_K_M", b"a")
    add_model(store, "alias", b"b")
    ref, manifest = store.get("hf.co/o/r:Q4_K_M")
    assert ref == ModelRef("hf.co", ("o", "r"), "Q4_K_M")
    assert manifest.size == 1
    assert manifest.short_id == manifest.digest[:12]
    assert [m.name for m in store.list_models()] == ["hf.co/o/r:Q4_K_M", "alias:latest"]


def test_tag_lookup_is_case_insensitive(store: ModelStore) -> None:
    add_model(store, "o/r:Q4_K_M", b"a")
    ref, _ = store.get("hf.co/o/r:q4_k_m")
    assert ref.tag == "Q4_K_M"


def test_missing_model(store: ModelStore) -> None:
    with pytest.raises(ModelNotFoundError) as info:
        store.get("hf.co/o/r:Q8_0")
    assert info.value.hint == "pull it first: localserve pull hf.co/o/r:Q8_0"


def test_manifest_requires_its_blobs(store: ModelStore) -> None:
    ref = parse_ref("x")
    manifest = Manifest(
        name="x:latest",
        files=(BlobEntry(digest="0" * 64, size=1, filename="f"),),
        source=HubSource(repo="o/r", revision="main"),
    )
    with pytest.raises(StoreError, match="missing"):
        store.write_manifest(ref, manifest)
    assert store.list_models() == []


def test_copy_shares_blobs(store: ModelStore) -> None:
    original = add_model(store, "hf.co/o/r:Q4_K_M", b"weights")
    store.copy("hf.co/o/r:Q4_K_M", "short")
    _, copied = store.get("short")
    assert copied.digest == original.digest
    assert copied.source == original.source  # provenance survives the copy
    assert len(list(store.blobs_dir.iterdir())) == 1


def test_copy_of_missing_model(store: ModelStore) -> None:
    with pytest.raises(ModelNotFoundError):
        store.copy("nope", "other")
    assert store.list_models() == []


def test_remove_keeps_shared_blobs(store: ModelStore) -> None:
    manifest = add_model(store, "hf.co/o/r:Q4_K_M", b"shared", b"part2")
    store.copy("hf.co/o/r:Q4_K_M", "alias")
    add_model(store, "other", b"part2")
    _ref, removed = store.remove("hf.co/o/r:Q4_K_M")
    assert removed == []  # both blobs still used
    assert store.has_blob(manifest.files[0].digest)
    _, removed = store.remove("alias")
    assert removed == [manifest.files[0].digest]  # part2 is still used by "other"
    assert not store.has_blob(manifest.files[0].digest)
    assert store.has_blob(manifest.files[1].digest)
    assert not (store.manifests_dir / "hf.co").exists()  # empty dirs pruned


def test_remove_missing(store: ModelStore) -> None:
    with pytest.raises(ModelNotFoundError):
        store.remove("nope")


def test_damaged_manifest_is_reported_not_trusted(store: ModelStore) -> None:
    add_model(store, "good", b"x")
    bad = store.manifests_dir / "local" / "bad" / "latest.json"
    bad.parent.mkdir(parents=True)
    bad.write_text(
        json.dumps(
            {
                "name": "bad",
                "files": [{"digest": "../../etc/passwd", "size": 1, "filename": "x"}],
                "source": {"type": "import", "filename": "x"},
            }
        )
    )
    assert [m.name for m in store.list_models()] == ["good:latest"]
    with pytest.raises(StoreError, match="damaged manifest"):
        store.get("bad")


def test_paths_stay_inside_the_store(store: ModelStore) -> None:
    with pytest.raises(InvalidReferenceError):
        store.blob_path("../" + "0" * 64)
    with pytest.raises(InvalidReferenceError):
        store.manifest_path(ModelRef("local", ("..", ".."), "x"))
    # A symlink planted inside the store that points out of it is refused too.
    (store.manifests_dir / "local").mkdir()
    (store.manifests_dir / "local" / "evil").symlink_to(store.root.parent)
    with pytest.raises(InvalidReferenceError):
        store.manifest_path(ModelRef("local", ("evil",), "latest"))


def test_partials_are_never_listed(store: ModelStore) -> None:
    (store.partial_dir / f"sha256-{'1' * 64}.partial").write_bytes(b"half")
    (store.partial_dir / f"sha256-{'1' * 64}.json").write_text("{}")
    assert store.list_models() == []
