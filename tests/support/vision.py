"""A tiny vision model: the tiny model with projectors of its width, on the fake Hub and
in the store. Shared by tests/unit/test_projector_store.py and the CLI's side of it in
tests/e2e/test_projector_store.py; registered in tests/conftest.py."""

from __future__ import annotations

import hashlib
from collections.abc import Generator
from pathlib import Path

import pytest

from localserve.store.download import DownloadOptions
from localserve.store.progress import Progress
from localserve.store.store import ModelStore
from tests.support.fakehub import FakeHub
from tests.support.tiny_gguf import write_tiny_gguf
from tests.support.tiny_projector import write_tiny_projector

FAST = DownloadOptions(connections=4, chunk_size=256 * 1024, retries=2, backoff=0.01, timeout=5)

REPO = "tester/vision-GGUF"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def blob_names(store: ModelStore) -> set[str]:
    return {p.name for p in store.blobs_dir.iterdir()} if store.blobs_dir.is_dir() else set()


def manifest_files(store: ModelStore) -> list[Path]:
    if not store.manifests_dir.is_dir():
        return []
    return [p for p in store.manifests_dir.rglob("*") if p.is_file()]


@pytest.fixture(scope="module")
def vision_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny model (width 64), a second model, and projectors for that width: a small
    one, and a 3.7 MB one that spans many download chunks."""
    root = tmp_path_factory.mktemp("vision-files")
    return {
        "model": write_tiny_gguf(root / "tiny-Q4_K_M.gguf"),
        "other": write_tiny_gguf(root / "other-Q4_K_M.gguf", seed=1),
        "projector": write_tiny_projector(root / "mmproj-tiny-F16.gguf", text_embd=64),
        "big_projector": write_tiny_projector(
            root / "big" / "mmproj-tiny-F16.gguf", text_embd=64, width=256, ffn=320, blocks=2
        ),
        "f32_projector": write_tiny_projector(root / "mmproj-tiny-F32.gguf", seed=3),
    }


def events_of(generator: Generator[Progress]) -> list[Progress]:
    return list(generator)


def file_gets(vision_hub: FakeHub, sha256: str) -> list[str]:
    """Range headers of the GETs that fetched bytes of the file with this sha256."""
    return [
        r.headers.get("Range", "")
        for r in vision_hub.requests
        if r.method == "GET" and r.path == f"/cdn-lfs/{sha256}" and r.status in (200, 206)
    ]


@pytest.fixture
def vision_hub(fake_hub: FakeHub, vision_files: dict[str, Path]) -> FakeHub:
    fake_hub.add_repo(
        REPO,
        {
            "tiny-Q4_K_M.gguf": vision_files["model"],
            # Both widths of float: a Q4 model gets the F16 one (closer in bits).
            "mmproj-tiny-F16.gguf": vision_files["projector"],
            "mmproj-tiny-F32.gguf": vision_files["f32_projector"],
            "README.md": b"# tiny vision\n",
        },
    )
    return fake_hub
