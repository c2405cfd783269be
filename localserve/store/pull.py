"""``pull``: from a Hugging Face reference to a verified, named model in the store.

Steps, each reported as a Progress event (the statuses Ollama's /api/pull uses):
resolve the reference with the Hub ("pulling manifest"), download each missing blob
("pulling <digest12>", resumable and verified as it goes), check the GGUF header
("verifying sha256 digest"), write the manifest ("writing manifest"), "success".

The manifest is written last, under the store lock, so a name never points at
something half-downloaded. Pulling a model that is already stored downloads only
the files that are missing or changed on disk since they were verified (verify.py),
so `pull` is also how a damaged model is repaired.
"""

from __future__ import annotations

from collections.abc import Generator

from localserve.errors import InvalidGGUFError, InvalidReferenceError
from localserve.store.download import DownloadOptions, download_blob
from localserve.store.hub import resolve
from localserve.store.manifest import BlobEntry, HubSource, Manifest
from localserve.store.progress import Progress
from localserve.store.refs import ModelRef, parse_ref
from localserve.store.store import ModelStore
from localserve.store.verify import check_model, pull_name

_HUB_FORM = (
    "hf.co/OWNER/REPO[:QUANT], e.g. localserve pull hf.co/unsloth/gemma-3-270m-it-GGUF:Q4_K_M"
)


def hub_ref(name: str, store: ModelStore | None = None) -> ModelRef:
    """Parse a name that must point at Hugging Face.

    Given the ``store``, a local name that is stored (imported, or a copy) gets a
    precise answer: DamagedModelError saying how to repair it if its file changed on
    disk (this may hash it), else why there is nothing to pull under that name.
    """
    ref = parse_ref(name)
    if ref.is_hub:
        return ref
    found = store.find(ref) if store is not None else None
    if store is None or found is None:
        raise InvalidReferenceError(
            f"{name!r} is a local name; pull fetches from Hugging Face", hint=f"use {_HUB_FORM}"
        )
    _, manifest = store.get(found)
    check_model(store, manifest)
    source = manifest.source
    if source.type == "huggingface":
        raise InvalidReferenceError(
            f"'{found}' is a local name for a model from hf.co/{source.repo}",
            hint=f"to pull its file again: localserve pull {pull_name(manifest, source.repo)}",
        )
    raise InvalidReferenceError(
        f"'{found}' was imported from a local file; there is nothing to pull",
        hint=f"pull fetches from Hugging Face: use {_HUB_FORM}",
    )


def pull_model(
    store: ModelStore,
    name: str,
    *,
    endpoint: str | None = None,
    token: str | None = None,
    options: DownloadOptions | None = None,
) -> Generator[Progress]:
    """Pull ``name`` into ``store``, yielding progress. Raises LocalserveError subclasses."""
    ref = hub_ref(name, store)
    yield Progress("pulling manifest")
    options = options or DownloadOptions()
    resolved = resolve(ref, endpoint=endpoint, token=token, backoff=options.backoff)

    for file in resolved.files:
        label = file.path.rsplit("/", 1)[-1]
        status = f"pulling {file.sha256[:12]}"
        yield Progress(status, file.sha256, file.size, 0, label)
        last = -1
        for completed in download_blob(
            store,
            url=file.url,
            size=file.size,
            sha256=file.sha256,
            headers=resolved.headers,
            options=options,
            label=label,
        ):
            if completed != last:
                last = completed
                yield Progress(status, file.sha256, file.size, completed, label)
        if last != file.size:
            yield Progress(status, file.sha256, file.size, file.size, label)

    yield Progress("verifying sha256 digest")
    entries = tuple(
        BlobEntry(digest=f.sha256, size=f.size, filename=f.path) for f in resolved.files
    )
    header_quant = _check_gguf(store, entries)
    quantization = resolved.quant or header_quant

    # Store a quant tag in its canonical spelling (q4_k_m -> Q4_K_M).
    stored_ref = ref
    if resolved.quant and ref.tag.lower() == resolved.quant.lower():
        stored_ref = ref.with_tag(resolved.quant)

    yield Progress("writing manifest")
    manifest = Manifest(
        name=str(stored_ref),
        files=entries,
        source=HubSource(repo=resolved.repo_id, revision=resolved.revision),
        quantization=quantization,
    )
    with store.lock():
        store.write_manifest(stored_ref, manifest)
    yield Progress("success")


def _check_gguf(store: ModelStore, entries: tuple[BlobEntry, ...]) -> str:
    """Validate the downloaded header(s); returns the file's quantization name.

    The bytes are exactly what the Hub holds (sha256 checked), but that does not make
    them a GGUF llama.cpp can open safely. Blobs that fail are removed unless another
    model uses them, so nothing unusable lingers.
    """
    from localserve.store.gguf import read_gguf_model

    paths = [store.blob_path(e.digest) for e in entries]
    try:
        info = read_gguf_model(paths)
    except InvalidGGUFError as exc:
        with store.lock():
            used = {e.digest for m in store.list_models() for e in m.manifest.files}
            for entry in entries:
                if entry.digest not in used:
                    store.delete_blob(entry.digest)
        raise InvalidGGUFError(entries[0].filename, exc.reason) from exc
    return info.quantization
