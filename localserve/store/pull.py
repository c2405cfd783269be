"""``pull``: from a Hugging Face reference to a verified, named model in the store.

Steps, each reported as a Progress event (the statuses Ollama's /api/pull uses):
resolve the reference with the Hub ("pulling manifest"), download each missing blob
("pulling <digest12>", resumable and verified as it goes: the model's file(s), then
its multimodal projector when the repository has one), check the GGUF headers
("verifying sha256 digest"), write the manifest ("writing manifest"), "success".

The manifest is written last, under the store lock, so a name never points at
something half-downloaded. Pulling a model that is already stored downloads only
the files that are missing or changed on disk since they were verified (verify.py),
so `pull` is also how a damaged model is repaired.
"""

from __future__ import annotations

from collections.abc import Generator

from localserve.errors import InvalidGGUFError, InvalidReferenceError, WrongGGUFKindError
from localserve.store.download import DownloadOptions, download_blob
from localserve.store.hub import HubFile, resolve
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
    projector: bool = True,
) -> Generator[Progress]:
    """Pull ``name`` into ``store``, yielding progress. Raises LocalserveError subclasses.

    The repository's multimodal projector for the model (quants.choose_projector), if
    it has one and ``projector`` is true, comes along as a second blob of the manifest,
    downloaded and verified the same way.
    """
    ref = hub_ref(name, store)
    yield Progress("pulling manifest")
    options = options or DownloadOptions()
    resolved = resolve(
        ref, endpoint=endpoint, token=token, backoff=options.backoff, projector=projector
    )
    wanted = (*resolved.files, *(() if resolved.projector is None else (resolved.projector,)))
    for file in wanted:
        yield from _download(store, file, resolved.headers, options)

    yield Progress("verifying sha256 digest")
    entries = tuple(_entry(f) for f in resolved.files)
    projector_entry = None if resolved.projector is None else _entry(resolved.projector)
    header_quant = _check_gguf(store, entries, projector_entry)
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
        projector=projector_entry,
    )
    store.replace_manifest(stored_ref, manifest)
    yield Progress("success")


def _entry(file: HubFile) -> BlobEntry:
    return BlobEntry(digest=file.sha256, size=file.size, filename=file.path)


def _download(
    store: ModelStore, file: HubFile, headers: dict[str, str], options: DownloadOptions
) -> Generator[Progress]:
    """One blob (resumable, verified), as ``pulling <digest12>`` events."""
    label = file.path.rsplit("/", 1)[-1]
    status = f"pulling {file.sha256[:12]}"
    yield Progress(status, file.sha256, file.size, 0, label)
    last = -1
    for completed in download_blob(
        store,
        url=file.url,
        size=file.size,
        sha256=file.sha256,
        headers=headers,
        options=options,
        label=label,
    ):
        if completed != last:
            last = completed
            yield Progress(status, file.sha256, file.size, completed, label)
    if last != file.size:
        yield Progress(status, file.sha256, file.size, file.size, label)


def _check_gguf(
    store: ModelStore, entries: tuple[BlobEntry, ...], projector: BlobEntry | None
) -> str:
    """Validate the downloaded header(s); returns the model's quantization name.

    The bytes are exactly what the Hub holds (sha256 checked), but that does not make
    them a GGUF llama.cpp can open safely, nor the projector a projector. On failure the
    pull's blobs are removed unless another model uses them, so nothing unusable lingers.
    """
    from localserve.store.gguf import read_gguf_model, read_projector

    digests = [e.digest for e in (*entries, *(() if projector is None else (projector,)))]
    try:
        info = read_gguf_model([store.blob_path(e.digest) for e in entries])
    except WrongGGUFKindError as exc:
        store.delete_unused(digests)
        raise WrongGGUFKindError(entries[0].filename, exc.reason) from exc
    except InvalidGGUFError as exc:
        store.delete_unused(digests)
        raise InvalidGGUFError(entries[0].filename, exc.reason) from exc
    if projector is not None:
        try:
            read_projector(store.blob_path(projector.digest))
        except InvalidGGUFError as exc:
            store.delete_unused(digests)
            raise WrongGGUFKindError(
                projector.filename,
                exc.reason,
                hint="the repository's projector is unusable; pull the model without it "
                "with --no-mmproj",
            ) from exc
    return info.quantization
