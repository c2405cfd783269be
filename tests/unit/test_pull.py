"""pull against a fake Hugging Face Hub on 127.0.0.1: choice of file, resume, verification, faults."""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from localserve.errors import (
    DigestMismatchError,
    DiskFullError,
    DownloadInterruptedError,
    GatedRepoError,
    HubUnavailableError,
    InvalidGGUFError,
    InvalidReferenceError,
    NoSuchFileError,
    RepoNotFoundError,
)
from localserve.schemas.ollama import ProgressResponse
from localserve.store import download as download_module
from localserve.store.download import DownloadOptions
from localserve.store.progress import Progress
from localserve.store.pull import pull_model
from localserve.store.store import ModelStore
from tests.support.fakehub import FakeHub
from tests.support.tiny_gguf import write_tiny_gguf

# Small chunks so that a few-MB model spans many ranges; quick retries.
FAST = DownloadOptions(connections=4, chunk_size=256 * 1024, retries=2, backoff=0.01, timeout=5)
REPO = "tester/tiny-GGUF"


@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two real (tiny) GGUF quantizations, a few MB each so they span many chunks."""
    root = tmp_path_factory.mktemp("hub-files")
    return {
        "tiny-Q4_K_M.gguf": write_tiny_gguf(
            root / "tiny-Q4_K_M.gguf", n_embd=256, n_ff=512, seed=1
        ),
        "tiny-Q8_0.gguf": write_tiny_gguf(root / "tiny-Q8_0.gguf", n_embd=256, n_ff=512, seed=2),
    }


@pytest.fixture
def hub(fake_hub: FakeHub, model_files: dict[str, Path]) -> FakeHub:
    fake_hub.add_repo(REPO, {**model_files, "README.md": b"# tiny\n"})
    return fake_hub


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pull(store: ModelStore, name: str, options: DownloadOptions = FAST) -> list[Progress]:
    return list(pull_model(store, name, options=options))


def file_gets(hub: FakeHub) -> list[str]:
    """Range headers of the GETs that fetched file bytes."""
    return [
        r.headers.get("Range", "")
        for r in hub.requests
        if r.method == "GET" and "/api/" not in r.path and r.status in (200, 206)
    ]


def test_pull_default_quant(hub: FakeHub, store: ModelStore, model_files: dict[str, Path]) -> None:
    events = pull(store, f"hf.co/{REPO}")
    statuses = [e.status for e in events]
    expected_digest = sha(model_files["tiny-Q4_K_M.gguf"])
    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    progress = [e for e in events if e.status == f"pulling {expected_digest[:12]}"]
    assert (
        progress[-1].completed
        == progress[-1].total
        == model_files["tiny-Q4_K_M.gguf"].stat().st_size
    )
    assert [p.completed for p in progress] == sorted(
        p.completed or 0 for p in progress
    )  # never goes back
    last = progress[-1]
    wire = ProgressResponse.of(last.status, last.digest, last.total, last.completed)
    assert wire.model_dump() == {
        "status": f"pulling {expected_digest[:12]}",
        "digest": f"sha256:{expected_digest}",
        "total": progress[-1].total,
        "completed": progress[-1].total,
    }

    [model] = store.list_models()
    assert model.name == f"hf.co/{REPO}:latest"
    assert model.manifest.digest == expected_digest
    assert model.manifest.quantization == "Q4_K_M"
    assert model.manifest.source.type == "huggingface"
    assert (
        store.blob_path(expected_digest).read_bytes()
        == model_files["tiny-Q4_K_M.gguf"].read_bytes()
    )
    assert list(store.partial_dir.glob("*.partial")) == []
    assert list(store.partial_dir.glob("*.json")) == []
    # Big enough to have gone out in parallel ranges.
    assert len([r for r in file_gets(hub) if r.startswith("bytes=")]) > 4


def test_quant_tag_is_case_insensitive_and_stored_canonically(
    hub: FakeHub, store: ModelStore, model_files: dict[str, Path]
) -> None:
    pull(store, f"{REPO}:q8_0")
    [model] = store.list_models()
    assert model.name == f"hf.co/{REPO}:Q8_0"
    assert model.manifest.digest == sha(model_files["tiny-Q8_0.gguf"])
    assert store.get(f"hf.co/{REPO}:q8_0")[0].tag == "Q8_0"


def test_exact_file_name_tag(hub: FakeHub, store: ModelStore) -> None:
    pull(store, f"hf.co/{REPO}:tiny-Q8_0.gguf")
    assert [m.name for m in store.list_models()] == [f"hf.co/{REPO}:tiny-Q8_0.gguf"]


def test_second_pull_downloads_nothing(hub: FakeHub, store: ModelStore) -> None:
    pull(store, f"hf.co/{REPO}")
    before = len(file_gets(hub))
    events = pull(store, f"hf.co/{REPO}")
    assert len(file_gets(hub)) == before
    assert events[-1].status == "success"


def test_two_names_share_one_blob(hub: FakeHub, store: ModelStore) -> None:
    pull(store, f"hf.co/{REPO}")
    gets = len(file_gets(hub))
    pull(store, f"hf.co/{REPO}:Q4_K_M")
    assert len(file_gets(hub)) == gets
    assert len(store.list_models()) == 2
    assert len(list(store.blobs_dir.iterdir())) == 1


def test_unknown_quant_lists_what_exists(hub: FakeHub, store: ModelStore) -> None:
    with pytest.raises(NoSuchFileError) as info:
        pull(store, f"hf.co/{REPO}:IQ2_XS")
    assert info.value.available == ["Q4_K_M", "Q8_0"]
    assert store.list_models() == []


def test_local_name_is_not_pullable(store: ModelStore) -> None:
    with pytest.raises(InvalidReferenceError, match="local name"):
        pull(store, "llama3")


def test_missing_repo(hub: FakeHub, store: ModelStore) -> None:
    with pytest.raises(RepoNotFoundError, match="tester/nothing"):
        pull(store, "hf.co/tester/nothing")


def test_gated_repo_needs_a_token(
    hub: FakeHub, store: ModelStore, model_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    hub.add_repo("corp/gated-GGUF", {"m-Q4_K_M.gguf": model_files["tiny-Q4_K_M.gguf"]}, gated=True)
    with pytest.raises(GatedRepoError) as info:
        pull(store, "hf.co/corp/gated-GGUF")
    assert info.value.hint
    assert "HF_TOKEN" in info.value.hint
    assert store.list_models() == []
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    pull(store, "hf.co/corp/gated-GGUF")
    assert [m.name for m in store.list_models()] == ["hf.co/corp/gated-GGUF:latest"]
    assert any(r.headers.get("Authorization") == "Bearer hf_test_token" for r in hub.requests)


def test_rate_limits_and_unavailability_are_retried(hub: FakeHub, store: ModelStore) -> None:
    hub.faults.retry_after = 0
    hub.faults.fail_status = [429, 503, 503]
    events = pull(store, f"hf.co/{REPO}")
    assert events[-1].status == "success"


def test_hub_down_for_good_is_a_clear_error(hub: FakeHub, store: ModelStore) -> None:
    hub.faults.retry_after = 0
    hub.faults.fail_status = [503] * 50
    with pytest.raises(HubUnavailableError, match="503"):
        pull(store, f"hf.co/{REPO}")
    assert store.list_models() == []


def test_unreachable_hub(store: ModelStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    with pytest.raises(HubUnavailableError, match="cannot reach"):
        pull(store, f"hf.co/{REPO}")


def test_cut_connection_is_retried_within_the_pull(hub: FakeHub, store: ModelStore) -> None:
    hub.faults.cut_after = 100_000
    hub.faults.cut_times = 2
    pull(store, f"hf.co/{REPO}")
    assert len(store.list_models()) == 1


def test_hub_gone_mid_download_leaves_a_resumable_partial(
    hub: FakeHub, store: ModelStore, model_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    size = model_files["tiny-Q4_K_M.gguf"].stat().st_size
    hub.faults.bytes_per_second = 4_000_000
    one = DownloadOptions(connections=1, chunk_size=256 * 1024, retries=1, backoff=0.01, timeout=5)
    with pytest.raises(DownloadInterruptedError) as info:  # noqa: PT012 - the hub dies part way
        for event in pull_model(store, f"hf.co/{REPO}", options=one):
            if event.completed and event.completed > 1_000_000:
                hub.stop()  # the network goes away
    assert "stopped at" in str(info.value)
    assert store.list_models() == []
    [partial] = store.partial_dir.glob("*.partial")
    assert partial.stat().st_size == size  # pre-sized, written in place

    with FakeHub() as second:  # the network comes back: resume, not restart
        second.add_repo(REPO, model_files)
        monkeypatch.setenv("HF_ENDPOINT", second.url)
        pull(store, f"hf.co/{REPO}", one)
        first_range = file_gets(second)[0]
    assert first_range.startswith("bytes=")
    assert not first_range.startswith("bytes=0-")
    blob = store.blob_path(sha(model_files["tiny-Q4_K_M.gguf"]))
    assert blob.read_bytes() == model_files["tiny-Q4_K_M.gguf"].read_bytes()


def test_server_ignoring_range_still_gives_the_right_bytes(
    hub: FakeHub, store: ModelStore, model_files: dict[str, Path]
) -> None:
    hub.faults.ignore_range = True
    pull(store, f"hf.co/{REPO}")
    [model] = store.list_models()
    assert (
        store.blob_path(model.manifest.digest).read_bytes()
        == model_files["tiny-Q4_K_M.gguf"].read_bytes()
    )


def test_wrong_bytes_are_caught_and_discarded(hub: FakeHub, store: ModelStore) -> None:
    hub.faults.wrong_bytes = True
    with pytest.raises(DigestMismatchError) as info:
        pull(store, f"hf.co/{REPO}")
    assert "deleted" in (info.value.hint or "")
    assert store.list_models() == []
    assert list(store.blobs_dir.iterdir()) == []
    assert list(store.partial_dir.glob("*.partial")) == []


def test_not_a_gguf_on_the_hub(fake_hub: FakeHub, store: ModelStore) -> None:
    fake_hub.add_repo("tester/fake-GGUF", {"model-Q4_K_M.gguf": b"this is not a gguf file" * 100})
    with pytest.raises(InvalidGGUFError, match=r"model-Q4_K_M\.gguf"):
        pull(store, "hf.co/tester/fake-GGUF")
    assert store.list_models() == []
    assert list(store.blobs_dir.iterdir()) == []


def test_split_model_is_one_model(fake_hub: FakeHub, store: ModelStore, tmp_path: Path) -> None:
    from tests.support.tiny_gguf import write_split_gguf

    parts = write_split_gguf(tmp_path / "split", "tiny-Q8_0", n_parts=2)
    fake_hub.add_repo("tester/split-GGUF", {p.name: p for p in parts})
    pull(store, "hf.co/tester/split-GGUF:Q8_0")
    [model] = store.list_models()
    assert [f.filename for f in model.manifest.files] == [p.name for p in parts]
    assert [f.digest for f in model.manifest.files] == [sha(p) for p in parts]


def test_disk_full_before_starting(
    hub: FakeHub, store: ModelStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = download_module.shutil.disk_usage

    def tiny_disk(path: str | os.PathLike[str]) -> object:
        usage = real(path)
        return type(usage)(usage.total, usage.total - 1000, 1000)

    monkeypatch.setattr(download_module.shutil, "disk_usage", tiny_disk)
    with pytest.raises(DiskFullError, match="free"):
        pull(store, f"hf.co/{REPO}")
    assert store.list_models() == []


def test_disk_full_while_writing_keeps_the_partial(
    hub: FakeHub, store: ModelStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_pwrite = os.pwrite
    budget = {"bytes": 1_000_000}

    def filling_pwrite(fd: int, data: bytes | memoryview, offset: int) -> int:
        if budget["bytes"] <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        budget["bytes"] -= len(data)
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(download_module.os, "pwrite", filling_pwrite)
    with pytest.raises(DiskFullError) as info:
        pull(store, f"hf.co/{REPO}")
    assert "partial download is kept" in (info.value.hint or "")
    assert store.list_models() == []
    assert len(list(store.partial_dir.glob("*.partial"))) == 1

    monkeypatch.setattr(download_module.os, "pwrite", real_pwrite)
    pull(store, f"hf.co/{REPO}")
    assert len(store.list_models()) == 1


def test_progress_iterator_can_be_abandoned(hub: FakeHub, store: ModelStore) -> None:
    """What Ctrl+C does to a pull: the generator is closed part way; state is kept."""
    hub.faults.bytes_per_second = 2_000_000
    events: Iterator[Progress] = pull_model(store, f"hf.co/{REPO}", options=FAST)
    for event in events:
        if event.completed and event.completed > 500_000:
            break
    events.close()  # type: ignore[attr-defined]
    assert store.list_models() == []
    [state] = store.partial_dir.glob("*.json")
    assert '"done": [' in state.read_text()
    hub.faults.bytes_per_second = None
    pull(store, f"hf.co/{REPO}")
    assert len(store.list_models()) == 1
