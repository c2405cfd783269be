"""A store in the test's home, and ways to damage one: the fixtures and helpers the fault
tests (tests/unit/test_faults.py in process, tests/e2e/test_faults.py through daemons) and
the projector tests share. Registered in tests/conftest.py; a module's own fixture of the
same name wins."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from localserve.store.store import ModelStore
from tests.support.fakehub import FakeHub
from tests.support.tiny_gguf import write_tiny_gguf


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


DAMAGED_REPO = "tester/faults-GGUF"

HUB_NAME = f"hf.co/{DAMAGED_REPO}:latest"


@pytest.fixture
def hub_model(fake_hub: FakeHub, tmp_path: Path) -> Path:
    model = write_tiny_gguf(tmp_path / "hub" / "faults-Q4_K_M.gguf", seed=11)
    fake_hub.add_repo(DAMAGED_REPO, {model.name: model})
    return model


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


def leftovers(store: ModelStore) -> list[str]:
    """Anything a finished pull must not leave: partials, their state, lock and temp files."""
    found = list(store.partial_dir.iterdir()) if store.partial_dir.is_dir() else []
    found += [p for p in store.root.rglob("*.lock") if p != store.root / "store.lock"]
    found += list(store.root.rglob(".*.tmp"))
    return sorted(str(p.relative_to(store.root)) for p in set(found))
