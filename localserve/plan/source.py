"""Where a plan's GGUF header comes from: the model store, or the Hub before any download.

A stored model's header is read from its blobs. A Hub reference that is not in the
store is resolved to its file(s) as a pull would resolve it, and only the header of each
file is fetched, with HTTP Range requests through the same URL and headers a download
uses: the reader asks for 256 KiB, then doubling chunks, so a multi-GB file costs the
few MB of its header (Gemma 3 270M: 8 MB requested for a 6.5 MB header). A Hub model's
multimodal projector is the one pull would fetch with it (quants.choose_projector, through
hub.resolve), its header read the same way, so the plan holds its weights and buffers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from localserve.errors import (
    GatedRepoError,
    HubError,
    HubUnavailableError,
    InvalidGGUFError,
    ModelNotFoundError,
)
from localserve.store.adapter import AdapterInfo, read_adapter
from localserve.store.gguf import (
    GGUFInfo,
    ProjectorInfo,
    TensorInfo,
    projector_of,
    read_gguf_from,
    read_gguf_model,
    read_projector,
)
from localserve.store.refs import ModelRef, parse_ref

if TYPE_CHECKING:
    import httpx

    from localserve.store.hub import HubFile
    from localserve.store.store import ModelStore

__all__ = ["ModelHeader", "RangeReader", "load_header", "read_hub_header"]

_RETRY_STATUSES = (429, 500, 502, 503, 504)


@dataclass(frozen=True)
class ModelHeader:
    """A model's parsed header and how it was obtained."""

    name: str
    info: GGUFInfo
    source: Literal["store", "hub"]
    files: tuple[str, ...]
    size: int  # bytes of the model file(s)
    bytes_read: int  # bytes fetched over HTTP to read the headers (0 for the store)
    requests: int  # HTTP requests made for them
    projector: ProjectorInfo | None = None  # the model's multimodal projector
    projector_file: str | None = None  # its file name (store) or path in the repository
    adapters: tuple[AdapterInfo, ...] = ()  # a created model's LoRA adapters


class RangeReader:
    """``read_at(offset, length)`` over HTTP Range requests, counting what it fetches.

    A server that ignores Range (answers 200 with the whole body) is read only as far as
    needed, then the connection is dropped, so the cost stays bounded by the header.
    """

    def __init__(self, client: httpx.Client, url: str, label: str, *, retries: int = 3) -> None:
        self.client = client
        self.url = url
        self.label = label
        self.retries = retries
        self.bytes_read = 0
        self.requests = 0

    def __call__(self, offset: int, length: int) -> bytes:
        import httpx

        if length <= 0:
            return b""
        headers = {"Range": f"bytes={offset}-{offset + length - 1}", "Accept-Encoding": "identity"}
        attempt = 0
        while True:
            attempt += 1
            try:
                with self.client.stream("GET", self.url, headers=headers) as response:
                    self.requests += 1
                    status = response.status_code
                    if status == 206:
                        return self._body(response, 0, length)
                    if status == 200:  # Range ignored: skip to the offset, stop early
                        return self._body(response, offset, length)
                    if status == 416:
                        return b""
                    if status in (401, 403):
                        raise GatedRepoError(
                            f"access to {self.label} refused ({status})",
                            hint="set HF_TOKEN to a token that can read this repository",
                        )
                    if status not in _RETRY_STATUSES or attempt > self.retries:
                        raise HubError(
                            f"reading the header of {self.label} failed: "
                            f"the server answered {status}"
                        )
            except httpx.TransportError as exc:
                if attempt > self.retries:
                    raise HubUnavailableError(
                        f"cannot read the header of {self.label}: {exc or type(exc).__name__}",
                        hint="check the network (or HF_ENDPOINT), then try again",
                    ) from exc

    def _body(self, response: httpx.Response, skip: int, length: int) -> bytes:
        data = bytearray()
        for piece in response.iter_raw():
            self.bytes_read += len(piece)
            data += piece
            if len(data) >= skip + length:
                break
        return bytes(data[skip : skip + length])


def load_header(name: str, store: ModelStore | None = None) -> ModelHeader:
    """The header of a stored model, else of a Hub reference read over the network.

    Raises ModelNotFoundError for a local name that is not stored, and the Hub's errors
    (RepoNotFoundError, NoSuchFileError...) for a reference the Hub cannot resolve.
    """
    if store is None:
        from localserve.store.store import ModelStore

        store = ModelStore.from_settings()
    ref = parse_ref(name)
    found = store.find(ref)
    if found is not None:
        stored, manifest = store.get(found)
        paths = store.blob_paths(manifest)
        projector = store.projector_path(manifest)
        return ModelHeader(
            name=str(stored),
            info=read_gguf_model(paths),
            source="store",
            files=tuple(entry.filename for entry in manifest.files),
            size=manifest.size,
            bytes_read=0,
            requests=0,
            projector=read_projector(projector) if projector else None,
            projector_file=manifest.projector.filename if manifest.projector else None,
            adapters=tuple(read_adapter(store.blob_path(a.digest)) for a in manifest.adapters),
        )
    if not ref.is_hub:
        raise ModelNotFoundError(
            str(ref), hint="a local name must be imported first; a Hub name is hf.co/OWNER/REPO"
        )
    return read_hub_header(ref)


def read_hub_header(
    ref: ModelRef,
    *,
    endpoint: str | None = None,
    token: str | None = None,
    client: httpx.Client | None = None,
) -> ModelHeader:
    """Resolve a Hub reference as `pull` would and read only its files' headers (the
    model's, and its projector's when the repository has one for it)."""
    import httpx

    from localserve.store.hub import resolve

    resolved = resolve(ref, endpoint=endpoint, token=token)
    own = client is None
    http = client or httpx.Client(
        follow_redirects=True,
        timeout=httpx.Timeout(30.0, connect=10.0),
        headers=resolved.headers,
    )
    readers: list[RangeReader] = []
    try:
        infos = []
        for file in resolved.files:
            label = f"{resolved.repo_id}/{file.path}"
            reader = RangeReader(http, file.url, label)
            readers.append(reader)
            infos.append(read_gguf_from(reader, file.size, label))
        projector = None
        if resolved.projector is not None:
            file = resolved.projector
            label = f"{resolved.repo_id}/{file.path}"
            reader = RangeReader(http, file.url, label)
            readers.append(reader)
            projector = projector_of(read_gguf_from(reader, file.size, label), label)
    finally:
        if own:
            http.close()
    tag = resolved.quant or ref.tag
    return ModelHeader(
        name=f"{ref.base}:{tag}",
        info=_combine(infos, resolved.files),
        source="hub",
        files=tuple(f.path for f in resolved.files),
        size=resolved.size,
        bytes_read=sum(r.bytes_read for r in readers),
        requests=sum(r.requests for r in readers),
        projector=projector,
        projector_file=resolved.projector.path if resolved.projector else None,
    )


def _combine(infos: Sequence[GGUFInfo], files: Sequence[HubFile]) -> GGUFInfo:
    """One model from the parts of a split GGUF, as read_gguf_model joins local parts."""
    first = infos[0]
    label = files[0].path
    if first.architecture is None:
        raise InvalidGGUFError(label, "general.architecture is missing")
    if len(infos) == 1:
        return first
    if first.split_count != len(infos):
        reason = f"split model has {first.split_count} parts but {len(infos)} were found"
        raise InvalidGGUFError(label, reason)
    tensors: list[TensorInfo] = []
    for index, info in enumerate(infos):
        tensors += [dataclasses.replace(t, part=index) for t in info.tensors]
    return dataclasses.replace(
        first, file_size=sum(info.file_size for info in infos), tensors=tuple(tensors)
    )
