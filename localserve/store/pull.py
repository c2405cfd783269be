"""``pull``: from a Hugging Face reference to a verified, named model in the store.

Steps, each reported as a Progress event (the statuses Ollama's /api/pull uses):
resolve the reference with the Hub ("pulling manifest"), download each missing blob
("pulling <digest12>", resumable and verified as it goes), check the GGUF header
("verifying sha256 digest"), write the manifest ("writing manifest"), "success".

The manifest is written last, under the store lock, so a name never points at
something half-downloaded.
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator

from localserve.errors import InvalidGGUFError, InvalidReferenceError
from localserve.store.download import DownloadOptions, download_blob
from localserve.store.hub import resolve
from localserve.store.manifest import BlobEntry, HubSource, Manifest
from localserve.store.progress import Progress
from localserve.store.refs import ModelRef, parse_ref
from localserve.store.store import ModelStore


def hub_ref(name: str) -> ModelRef:
    """Parse a name that must point at Hugging Face."""
    ref = parse_ref(name)
    if not ref.is_hub:
        raise InvalidReferenceError(
            f"{name!r} is a local name; pull fetches from Hugging Face",
            hint="use hf.co/OWNER/REPO[:QUANT], e.g. localserve pull hf.co/unsloth/gemma-3-270m-it-GGUF:Q4_K_M",
        )
    return ref


def pull_model(
    store: ModelStore,
    name: str,
    *,
    endpoint: str | None = None,
    token: str | None = None,
    options: DownloadOptions | None = None,
) -> Generator[Progress]:
    """Pull ``name`` into ``store``, yielding progress. Raises LocalserveError subclasses."""
    ref = hub_ref(name)
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
                    with contextlib.suppress(FileNotFoundError):
                        store.blob_path(entry.digest).unlink()
        raise InvalidGGUFError(entries[0].filename, exc.reason) from exc
    return info.quantization
