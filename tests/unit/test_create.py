"""`create` in the store, in process: derived models that share their base's blobs, `rm`
around shared blobs, import through symlinks, and nothing left in the store after a
failed create. (tests/e2e/test_create.py: through the daemon.)"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from localserve.errors import ImportSourceError, LocalserveError, ModelNotFoundError
from localserve.store.create import create_model, read_config
from localserve.store.importing import import_gguf
from localserve.store.modelfile import parse_modelfile
from localserve.store.store import ModelStore
from tests.support.tiny_gguf import write_tiny_gguf


def blobs(store: ModelStore) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in store.blobs_dir.iterdir()}


def create(store: ModelStore, name: str, text: str, folder: Path) -> None:
    for _ in create_model(store, name, parse_modelfile(text), folder=folder):
        pass


@pytest.fixture
def store(isolated_home: Path, tiny_gguf_path: Path) -> ModelStore:
    models = ModelStore(isolated_home / "models")
    for _ in import_gguf(models, tiny_gguf_path, "tiny"):
        pass
    return models


def test_a_derived_model_shares_its_base(store: ModelStore, tmp_path: Path) -> None:
    before = blobs(store)
    create(store, "terse", "FROM tiny\nPARAMETER num_predict 3\nSYSTEM Be terse.\n", tmp_path)
    after = blobs(store)
    added = {name: size for name, size in after.items() if name not in before}
    assert sum(added.values()) < 200  # two small settings, no copy of the GGUF
    assert len(added) == 2
    _, base = store.get("tiny")
    _, derived = store.get("terse")
    assert derived.files == base.files and derived.base == "tiny:latest"
    config = read_config(store, derived)
    assert config.parameters == {"num_predict": 3} and config.system == "Be terse."
    # A model created from it inherits, and overrides key by key.
    create(store, "terser", "FROM terse\nPARAMETER temperature 0.5\n", tmp_path)
    _, grandchild = store.get("terser")
    inherited = read_config(store, grandchild)
    assert inherited.parameters == {"num_predict": 3, "temperature": 0.5}
    assert inherited.system == "Be terse."


def test_rm_of_a_base_keeps_what_a_derived_model_uses(store: ModelStore, tmp_path: Path) -> None:
    create(store, "terse", "FROM tiny\nSYSTEM Be terse.\n", tmp_path)
    _, base = store.get("tiny")
    store.remove("tiny")
    assert store.has_blob(base.digest)
    store.remove("terse")
    assert not store.has_blob(base.digest)
    assert blobs(store) == {}


def test_from_a_gguf_path_and_through_symlinks(store: ModelStore, tmp_path: Path) -> None:
    other = write_tiny_gguf(tmp_path / "real" / "other.gguf", seed=3)
    link = tmp_path / "link.gguf"
    link.symlink_to(other)
    chain = tmp_path / "chain.gguf"
    chain.symlink_to(link)
    create(store, "from-path", "FROM ./chain.gguf\nSYSTEM hi\n", tmp_path)
    _, manifest = store.get("from-path")
    digest = hashlib.sha256(other.read_bytes()).hexdigest()
    assert manifest.digest == digest
    blob = store.blob_path(digest)
    assert not blob.is_symlink() and blob.read_bytes() == other.read_bytes()


@pytest.mark.parametrize("hops", [1, 3])
def test_import_follows_a_symlink_chain(store: ModelStore, tmp_path: Path, hops: int) -> None:
    """As in the Hugging Face cache: snapshots/<rev>/x.gguf -> ../../blobs/<hash>."""
    real = write_tiny_gguf(tmp_path / "hub" / "blobs" / "0a1b2c", seed=5)
    target: Path = real
    for hop in range(hops):
        link = tmp_path / "hub" / f"hop{hop}" / "model.gguf"
        link.parent.mkdir(parents=True)
        link.symlink_to(target)
        target = link
    for _ in import_gguf(store, target, f"linked{hops}"):
        pass
    _, manifest = store.get(f"linked{hops}")
    blob = store.blob_path(manifest.digest)
    assert not blob.is_symlink() and blob.read_bytes() == real.read_bytes()
    assert manifest.files[0].filename == "model.gguf"
    assert not list(store.partial_dir.iterdir())


def test_a_dangling_symlink_is_refused_and_leaves_nothing(
    store: ModelStore, tmp_path: Path
) -> None:
    link = tmp_path / "gone.gguf"
    link.symlink_to(tmp_path / "nothing-here.gguf")
    before = blobs(store)
    with pytest.raises(ImportSourceError, match="no such file"):
        for _ in import_gguf(store, link, "dangling"):
            pass
    assert blobs(store) == before and not list(store.partial_dir.iterdir())


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("FROM nothing-stored\n", ModelNotFoundError),
        ("FROM ./missing.gguf\n", ImportSourceError),
        ("FROM tiny\nADAPTER ./missing-lora.gguf\n", ImportSourceError),
        ("FROM tiny\nADAPTER ./not-a-lora.gguf\n", LocalserveError),
    ],
)
def test_a_failed_create_leaves_nothing(
    store: ModelStore, tmp_path: Path, text: str, error: type[Exception]
) -> None:
    (tmp_path / "not-a-lora.gguf").write_bytes(b"GGUF but not really")
    before = blobs(store)
    names = [m.name for m in store.list_models()]
    with pytest.raises(error):
        create(store, "broken", text, tmp_path)
    assert blobs(store) == before
    assert [m.name for m in store.list_models()] == names
    assert not list(store.partial_dir.iterdir())
