"""Multimodal projectors (mmproj) in the store, in process: import --mmproj, pull of a
repository's projector from the fake Hugging Face server, show and capabilities
(the daemon's app in-process), rm/cp keeping a shared projector blob, and the refusals."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import gguf
import httpx
import numpy as np
import pytest

from localserve.config import load_settings
from localserve.errors import DamagedModelError, WrongGGUFKindError
from localserve.server.app import create_app
from localserve.store.download import DownloadOptions
from localserve.store.gguf import read_projector
from localserve.store.importing import import_gguf
from localserve.store.pull import pull_model
from localserve.store.quants import RepoFile, choose_projector, quant_bits
from localserve.store.store import ModelStore
from localserve.store.verify import check_model
from tests.support.fakehub import FakeHub
from tests.support.tiny_gguf import finish_gguf
from tests.support.vision import FAST, REPO, blob_names, events_of, file_gets, manifest_files, sha

CHUNK = 256 * 1024


def test_read_projector(vision_files: dict[str, Path]) -> None:
    info = read_projector(vision_files["projector"])
    assert info.projector_type == "gemma3"
    assert (info.has_vision, info.has_audio) == (True, False)
    assert info.n_embd_out == 64  # ne[0] of mm.input_projection.weight: the model's width
    assert info.size == vision_files["projector"].stat().st_size
    assert info.modalities == ("vision",)
    kv = info.projector_info()
    assert kv["general.architecture"] == "clip"
    assert kv["clip.projector_type"] == "gemma3"
    assert kv["clip.has_vision_encoder"] is True
    assert kv["clip.vision.image_size"] == 32
    assert kv["general.parameter_count"] > 0


def _clip_without_encoder(path: Path) -> Path:
    writer = gguf.GGUFWriter(path, "clip")
    writer.add_string("clip.projector_type", "gemma3")
    writer.add_bool("clip.has_vision_encoder", False)
    finish_gguf(writer, [("mm.input_projection.weight", np.zeros((4, 64), dtype=np.float32))])
    return path


@pytest.mark.parametrize("kind", ["model", "junk", "no encoder", "empty"])
def test_what_is_not_a_projector_is_refused(
    kind: str, vision_files: dict[str, Path], tmp_path: Path
) -> None:
    path = tmp_path / "x.gguf"
    if kind == "model":
        path = vision_files["model"]
    elif kind == "junk":
        path.write_bytes(b"definitely not a projector\n" * 100)
    elif kind == "no encoder":
        _clip_without_encoder(path)
    else:
        path.write_bytes(b"")
    with pytest.raises(WrongGGUFKindError, match=r"not a multimodal projector \(mmproj\)") as info:
        read_projector(path)
    assert info.value.path == str(path)
    if kind == "model":
        assert "general.architecture is 'llama', not 'clip'" in str(info.value)
    if kind == "no encoder":
        assert "neither a vision nor an audio encoder" in str(info.value)


def test_import_with_mmproj(
    store: ModelStore, vision_files: dict[str, Path], tmp_path: Path
) -> None:
    events = events_of(
        import_gguf(store, vision_files["model"], "seer", projector=vision_files["projector"])
    )
    assert events[-1].status == "success"
    assert any(e.status == f"importing {vision_files['projector'].name}" for e in events)

    _, manifest = store.get("seer")
    assert manifest.projector is not None
    assert manifest.projector.digest == sha(vision_files["projector"])
    assert manifest.projector.filename == vision_files["projector"].name
    assert manifest.files[0].digest == sha(vision_files["model"])
    path = store.projector_path(manifest)
    assert path is not None
    assert path.read_bytes() == vision_files["projector"].read_bytes()
    assert store.blob_paths(manifest) == [store.blob_path(manifest.digest)]  # the model only
    assert manifest.size == vision_files["model"].stat().st_size
    assert manifest.total_size == manifest.size + vision_files["projector"].stat().st_size
    assert list(store.partial_dir.iterdir()) == []
    check_model(store, manifest)  # both blobs verified


@pytest.mark.parametrize("kind", ["model", "junk"])
def test_import_with_a_bad_mmproj_leaves_nothing(
    kind: str, store: ModelStore, vision_files: dict[str, Path], tmp_path: Path
) -> None:
    bad = vision_files["other"]
    if kind == "junk":
        bad = tmp_path / "mmproj-junk.gguf"
        bad.write_text("not a projector\n" * 100)
    with pytest.raises(WrongGGUFKindError, match="not a multimodal projector"):
        events_of(import_gguf(store, vision_files["model"], "seer", projector=bad))
    assert blob_names(store) == set()
    assert manifest_files(store) == []
    assert store.list_models() == []


def test_missing_mmproj_file(
    store: ModelStore, vision_files: dict[str, Path], tmp_path: Path
) -> None:
    from localserve.errors import ImportSourceError

    with pytest.raises(ImportSourceError, match="no such file"):
        events_of(
            import_gguf(store, vision_files["model"], "seer", projector=tmp_path / "nope.gguf")
        )
    assert blob_names(store) == set()


def test_a_projector_imported_as_the_model_says_use_mmproj(
    store: ModelStore, vision_files: dict[str, Path]
) -> None:
    with pytest.raises(WrongGGUFKindError) as info:
        events_of(import_gguf(store, vision_files["projector"], "seer"))
    assert "this is a multimodal projector (mmproj)" in str(info.value)
    assert "pass it with --mmproj" in str(info.value)
    assert info.value.hint is not None
    assert f"--mmproj {vision_files['projector'].name}" in info.value.hint
    assert blob_names(store) == set()


def test_import_stopped_after_the_model_blob_leaves_nothing(
    store: ModelStore, vision_files: dict[str, Path]
) -> None:
    """Ctrl+C while the projector is being stored: the model's blob, already in blobs/,
    goes again, and no manifest is written."""
    events = import_gguf(store, vision_files["model"], "seer", projector=vision_files["projector"])
    for event in events:
        if event.status == f"importing {vision_files['projector'].name}":
            break
    assert len(blob_names(store)) == 1  # the model's blob went in first
    events.close()
    assert blob_names(store) == set()
    assert manifest_files(store) == []
    assert list(store.partial_dir.iterdir()) == []


def test_import_again_without_mmproj_drops_the_unused_projector(
    store: ModelStore, vision_files: dict[str, Path]
) -> None:
    events_of(
        import_gguf(store, vision_files["model"], "seer", projector=vision_files["projector"])
    )
    events_of(import_gguf(store, vision_files["model"], "seer"))
    _, manifest = store.get("seer")
    assert manifest.projector is None
    assert blob_names(store) == {f"sha256-{sha(vision_files['model'])}"}


def test_rm_keeps_a_shared_projector_and_deletes_an_unshared_one(
    store: ModelStore, vision_files: dict[str, Path]
) -> None:
    projector = f"sha256-{sha(vision_files['projector'])}"
    events_of(import_gguf(store, vision_files["model"], "one", projector=vision_files["projector"]))
    events_of(import_gguf(store, vision_files["other"], "two", projector=vision_files["projector"]))
    assert len(blob_names(store)) == 3  # two models, one projector

    _, removed = store.remove("one")
    assert removed == [sha(vision_files["model"])]  # the projector is still used by "two"
    assert projector in blob_names(store)

    _, removed = store.remove("two")
    assert removed == [sha(vision_files["other"]), sha(vision_files["projector"])]
    assert blob_names(store) == set()
    assert not store.stamp_path(sha(vision_files["projector"])).exists()


def test_cp_keeps_the_projector(store: ModelStore, vision_files: dict[str, Path]) -> None:
    events_of(
        import_gguf(store, vision_files["model"], "seer", projector=vision_files["projector"])
    )
    store.copy("seer", "alias")
    _, copied = store.get("alias")
    assert copied.projector is not None
    assert copied.projector.digest == sha(vision_files["projector"])
    store.remove("seer")
    assert f"sha256-{sha(vision_files['projector'])}" in blob_names(store)  # "alias" still uses it
    store.remove("alias")
    assert blob_names(store) == set()


def test_a_damaged_projector_is_caught_with_its_repair(
    store: ModelStore, vision_files: dict[str, Path]
) -> None:
    events_of(
        import_gguf(store, vision_files["model"], "seer", projector=vision_files["projector"])
    )
    _, manifest = store.get("seer")
    path = store.projector_path(manifest)
    assert path is not None
    path.unlink()
    with pytest.raises(DamagedModelError) as info:
        check_model(store, manifest)
    message = str(info.value)
    assert f"its projector {vision_files['projector'].name}" in message
    assert f"--mmproj PATH/{vision_files['projector'].name}" in message


def test_a_manifest_from_before_projectors_still_loads(store: ModelStore) -> None:
    store.ensure_dirs()
    data = b"weights"
    digest = hashlib.sha256(data).hexdigest()
    staged = store.partial_dir / "staged"
    staged.write_bytes(data)
    store.commit_blob(staged, digest)
    path = store.manifests_dir / "local" / "old" / "latest.json"
    path.parent.mkdir(parents=True)
    path.write_text(
        json.dumps(
            {
                "schema_version": 1,
                "name": "old:latest",
                "files": [{"digest": digest, "size": len(data), "filename": "old.gguf"}],
                "source": {"type": "import", "filename": "old.gguf"},
            }
        )
    )
    _, manifest = store.get("old")
    assert manifest.projector is None
    assert store.projector_path(manifest) is None
    assert manifest.total_size == manifest.size == len(data)


async def _show_and_tags(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    app = create_app(load_settings())
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            show = await client.post("/api/show", json={"model": name})
            tags = await client.get("/api/tags")
    assert show.status_code == 200, show.text
    return show.json(), tags.json()


def test_api_show_has_projector_info_and_vision(
    store: ModelStore, vision_files: dict[str, Path]
) -> None:
    events_of(
        import_gguf(store, vision_files["model"], "seer", projector=vision_files["projector"])
    )
    events_of(import_gguf(store, vision_files["other"], "blind"))
    show, tags = asyncio.run(_show_and_tags("seer"))
    assert "vision" in show["capabilities"]
    assert show["capabilities"][-1] == "embedding"
    info = show["projector_info"]
    assert info["general.architecture"] == "clip"
    assert info["clip.projector_type"] == "gemma3"
    assert info["clip.has_vision_encoder"] is True
    assert info["clip.vision.projection_dim"] == 64
    sizes = {m["name"]: m["size"] for m in tags["models"]}
    assert sizes["seer:latest"] == sum(
        vision_files[k].stat().st_size for k in ("model", "projector")
    )

    blind, _ = asyncio.run(_show_and_tags("blind"))
    assert "projector_info" not in blind
    assert "vision" not in blind["capabilities"]


def test_pull_fetches_model_and_projector(
    vision_hub: FakeHub, store: ModelStore, vision_files: dict[str, Path]
) -> None:
    events = events_of(pull_model(store, f"hf.co/{REPO}", options=FAST))
    model, projector = sha(vision_files["model"]), sha(vision_files["projector"])
    statuses = [e.status for e in events]
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    done = [e for e in events if e.status == f"pulling {projector[:12]}"]
    assert done[-1].completed == done[-1].total == vision_files["projector"].stat().st_size
    assert done[-1].filename == "mmproj-tiny-F16.gguf"
    # The model first, then its projector.
    assert statuses.index(f"pulling {model[:12]}") < statuses.index(f"pulling {projector[:12]}")

    [stored] = store.list_models()
    assert stored.manifest.digest == model
    assert stored.manifest.projector is not None
    assert stored.manifest.projector.digest == projector
    assert stored.manifest.projector.filename == "mmproj-tiny-F16.gguf"
    path = store.projector_path(stored.manifest)
    assert path is not None
    assert path.read_bytes() == vision_files["projector"].read_bytes()
    assert file_gets(vision_hub, sha(vision_files["f32_projector"])) == []  # never fetched
    assert list(store.partial_dir.iterdir()) == []

    # A second pull downloads nothing and keeps the same manifest.
    before = len(vision_hub.requests_for("/cdn-lfs/"))
    events = events_of(pull_model(store, f"hf.co/{REPO}", options=FAST))
    assert events[-1].status == "success"
    assert len(vision_hub.requests_for("/cdn-lfs/")) == before
    assert store.get(f"hf.co/{REPO}")[1].projector == stored.manifest.projector


def test_pull_without_mmproj_then_with_it(
    vision_hub: FakeHub, store: ModelStore, vision_files: dict[str, Path]
) -> None:
    events_of(pull_model(store, f"hf.co/{REPO}", options=FAST, projector=False))
    _, manifest = store.get(f"hf.co/{REPO}")
    assert manifest.projector is None
    assert file_gets(vision_hub, sha(vision_files["projector"])) == []
    assert blob_names(store) == {f"sha256-{sha(vision_files['model'])}"}

    events_of(pull_model(store, f"hf.co/{REPO}", options=FAST))  # adds the projector
    _, manifest = store.get(f"hf.co/{REPO}")
    assert manifest.projector is not None
    assert len(blob_names(store)) == 2

    events_of(pull_model(store, f"hf.co/{REPO}", options=FAST, projector=False))
    assert store.get(f"hf.co/{REPO}")[1].projector is None
    assert blob_names(store) == {f"sha256-{sha(vision_files['model'])}"}  # no orphan left


def test_repo_without_mmproj_pulls_as_before(
    fake_hub: FakeHub, store: ModelStore, vision_files: dict[str, Path]
) -> None:
    fake_hub.add_repo("tester/text-GGUF", {"text-Q4_K_M.gguf": vision_files["model"]})
    events = events_of(pull_model(store, "hf.co/tester/text-GGUF", options=FAST))
    assert events[-1].status == "success"
    [stored] = store.list_models()
    assert stored.manifest.projector is None
    assert store.projector_path(stored.manifest) is None
    assert blob_names(store) == {f"sha256-{sha(vision_files['model'])}"}


def test_plan_of_a_hub_model_without_a_projector(
    fake_hub: FakeHub, vision_files: dict[str, Path]
) -> None:
    from localserve.plan.source import read_hub_header
    from localserve.store.refs import parse_ref

    fake_hub.add_repo("tester/text-GGUF", {"text-Q4_K_M.gguf": vision_files["model"]})
    remote = read_hub_header(parse_ref("hf.co/tester/text-GGUF"))
    assert (remote.projector, remote.projector_file) == (None, None)


def test_a_bad_projector_in_the_repo_fails_the_pull_cleanly(
    fake_hub: FakeHub, store: ModelStore, vision_files: dict[str, Path]
) -> None:
    fake_hub.add_repo(
        "tester/odd-GGUF",
        {"odd-Q4_K_M.gguf": vision_files["model"], "mmproj-odd-F16.gguf": vision_files["other"]},
    )
    with pytest.raises(WrongGGUFKindError, match="not a multimodal projector") as info:
        events_of(pull_model(store, "hf.co/tester/odd-GGUF", options=FAST))
    assert "mmproj-odd-F16.gguf" in str(info.value)
    assert "--no-mmproj" in (info.value.hint or "")
    assert store.list_models() == []
    assert blob_names(store) == set()  # nothing unusable lingers

    events_of(pull_model(store, "hf.co/tester/odd-GGUF", options=FAST, projector=False))
    assert store.get("hf.co/tester/odd-GGUF")[1].projector is None


def test_an_interrupted_projector_download_resumes(
    fake_hub: FakeHub,
    store: ModelStore,
    vision_files: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    repo_files = {
        "tiny-Q4_K_M.gguf": vision_files["model"],
        "mmproj-F16.gguf": vision_files["big_projector"],
    }
    fake_hub.add_repo(REPO, repo_files)
    model, projector = sha(vision_files["model"]), sha(vision_files["big_projector"])
    size = vision_files["big_projector"].stat().st_size
    # Only the projector is slow, so that the pull is still on it when it is stopped.
    fake_hub.faults.only_file = projector
    fake_hub.faults.bytes_per_second = 1_000_000
    one = DownloadOptions(connections=1, chunk_size=CHUNK, retries=1, backoff=0.01, timeout=5)
    events = pull_model(store, f"hf.co/{REPO}", options=one)
    for event in events:  # Ctrl+C once three chunks of the projector are in
        if event.digest == projector and (event.completed or 0) > 3 * CHUNK:
            break
    events.close()
    assert store.list_models() == []
    assert blob_names(store) == {f"sha256-{model}"}  # the model's blob is complete
    partial = store.partial_path(projector, ".partial")
    assert partial.stat().st_size == size
    state = json.loads(store.partial_path(projector, ".json").read_text())
    assert len(state["done"]) >= 3

    with FakeHub() as second:  # another run, another server: resume, not restart
        second.add_repo(REPO, repo_files)
        monkeypatch.setenv("HF_ENDPOINT", second.url)
        events_of(pull_model(store, f"hf.co/{REPO}", options=one))
        assert file_gets(second, model) == []  # the model is not fetched again
        ranges = file_gets(second, projector)
    assert ranges
    assert all(r.startswith("bytes=") and not r.startswith("bytes=0-") for r in ranges)
    assert len(ranges) == -(-size // CHUNK) - len(state["done"])
    _, manifest = store.get(f"hf.co/{REPO}")
    assert manifest.projector is not None
    path = store.projector_path(manifest)
    assert path is not None
    assert path.read_bytes() == vision_files["big_projector"].read_bytes()
    assert list(store.partial_dir.iterdir()) == []


def repo(*paths: str) -> list[RepoFile]:
    return [RepoFile(p, 1, "0" * 64) for p in paths]


def test_quant_bits() -> None:
    assert quant_bits("m-Q4_K_M.gguf") == 4
    assert quant_bits("mmproj-model-f16.gguf") == 16
    assert quant_bits("mmproj-BF16.gguf") == 16
    assert quant_bits("Q8/m-Q8_0-00001-of-00002.gguf") == 8
    assert quant_bits("m.Q5_K_S.gguf") == 5
    assert quant_bits("mmproj.gguf") == 0


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        # Closest in bits: Q4 -> 16 (F16 and BF16 tie: the first by path), F32 -> F32.
        ("m-Q4_K_M.gguf", "mmproj-BF16.gguf"),
        ("m-F32.gguf", "mmproj-F32.gguf"),
        # The deepest folder that holds the model wins over bits.
        ("Q8_0/m-Q8_0.gguf", "Q8_0/mmproj-Q8_0.gguf"),
        ("F32/m-F32.gguf", "F32/mmproj-F16.gguf"),
        # A model in a folder without one gets the root's; a sibling folder's never.
        ("IQ2/m-IQ2_XS.gguf", "mmproj-BF16.gguf"),
    ],
)
def test_choose_projector_follows_llama_cpp(model: str, expected: str) -> None:
    vision_files = repo(
        "m-Q4_K_M.gguf",
        "mmproj-F32.gguf",
        "mmproj-F16.gguf",
        "mmproj-BF16.gguf",
        "Q8_0/mmproj-Q8_0.gguf",
        "F32/mmproj-F16.gguf",
        "imatrix.gguf",
        "README.md",
    )
    chosen = choose_projector(vision_files, model)
    assert chosen is not None
    assert chosen.path == expected


def test_choose_projector_without_one() -> None:
    assert choose_projector(repo("m-Q4_K_M.gguf", "m-Q8_0.gguf"), "m-Q4_K_M.gguf") is None
    # One only in a sibling folder does not belong to this model.
    assert choose_projector(repo("a/m-Q4_K_M.gguf", "b/mmproj-F16.gguf"), "a/m-Q4_K_M.gguf") is None
