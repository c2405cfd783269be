"""Asking Hugging Face what a reference means: which files, how big, which sha256.

huggingface_hub does the talking (endpoint, token, error codes); this module turns
its answers and exceptions into ours. Downloading is download.py's job: the Hub
library's downloader cannot resume across processes or verify sha256.

``HF_ENDPOINT`` is read here at call time (huggingface_hub reads it once, at import),
so one process can be pointed at a fake Hub by its tests.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from localserve.errors import (
    GatedRepoError,
    HubError,
    HubUnavailableError,
    RepoNotFoundError,
    RevisionNotFoundError,
)
from localserve.store.quants import Candidate, RepoFile, choose, choose_projector
from localserve.store.refs import ModelRef, check_repo_filename, parse_digest

DEFAULT_ENDPOINT = "https://huggingface.co"
_RETRY_STATUSES = {429, 500, 502, 503, 504}


def hub_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


@dataclass(frozen=True)
class HubFile:
    """One file to download: where from, how big, and the sha256 it must hash to."""

    path: str
    size: int
    sha256: str
    url: str


@dataclass(frozen=True)
class ResolvedModel:
    repo_id: str
    revision: str
    quant: str | None
    files: tuple[HubFile, ...]
    headers: dict[str, str]
    # The multimodal projector that goes with the model (quants.choose_projector).
    projector: HubFile | None = None

    @property
    def size(self) -> int:
        """Bytes of the model's file(s), without the projector."""
        return sum(f.size for f in self.files)


def resolve(
    ref: ModelRef,
    *,
    endpoint: str | None = None,
    token: str | None = None,
    retries: int = 4,
    backoff: float = 1.0,
    projector: bool = True,
) -> ResolvedModel:
    """List the repository, pick the model the tag names (and, unless ``projector`` is
    False, the multimodal projector that goes with it), and say how to download them."""
    endpoint = (endpoint or hub_endpoint()).rstrip("/")
    info = _model_info(ref.repo_id, endpoint, token, retries, backoff)
    files = _repo_files(info)
    candidate: Candidate = choose(files, ref.tag, ref.repo_id)
    revision = str(getattr(info, "sha", None) or "main")
    mmproj = choose_projector(files, candidate.first.path) if projector else None

    from huggingface_hub.utils._headers import build_hf_headers

    return ResolvedModel(
        repo_id=ref.repo_id,
        revision=revision,
        quant=candidate.quant,
        files=tuple(_hub_file(ref.repo_id, f, revision, endpoint) for f in candidate.files),
        headers=build_hf_headers(token=token, library_name="localserve"),
        projector=None if mmproj is None else _hub_file(ref.repo_id, mmproj, revision, endpoint),
    )


def _hub_file(repo_id: str, file: RepoFile, revision: str, endpoint: str) -> HubFile:
    from huggingface_hub import hf_hub_url

    if file.sha256 is None:
        raise HubError(
            f"{repo_id}/{file.path} is not stored with Git LFS, so the Hub gives no "
            "sha256 to verify it against; refusing to download it unverified"
        )
    url = hf_hub_url(repo_id, file.path, revision=revision, endpoint=endpoint)
    return HubFile(file.path, file.size, file.sha256, url)


def _repo_files(info: Any) -> list[RepoFile]:
    files = []
    for sibling in getattr(info, "siblings", None) or []:
        name = sibling.rfilename
        if not name.lower().endswith(".gguf"):
            continue
        check_repo_filename(name)
        lfs = sibling.lfs
        sha = parse_digest(lfs.sha256) if lfs is not None and lfs.sha256 else None
        size = lfs.size if lfs is not None else (sibling.size or 0)
        files.append(RepoFile(name, int(size), sha))
    return files


def _model_info(
    repo_id: str, endpoint: str, token: str | None, retries: int, backoff: float
) -> Any:
    import httpx
    from huggingface_hub import HfApi
    from huggingface_hub import errors as hf_errors

    api = HfApi(endpoint=endpoint, token=token, library_name="localserve")
    attempt = 0
    while True:
        try:
            return api.model_info(repo_id, files_metadata=True)
        except hf_errors.GatedRepoError as exc:
            raise GatedRepoError(
                f"{repo_id} is a gated repository",
                hint=f"accept its terms at https://huggingface.co/{repo_id} and set HF_TOKEN",
            ) from exc
        except hf_errors.RepositoryNotFoundError as exc:
            raise RepoNotFoundError(
                f"repository {repo_id} not found on {endpoint}",
                hint="check the name; a private repository needs HF_TOKEN",
            ) from exc
        except hf_errors.RevisionNotFoundError as exc:
            raise RevisionNotFoundError(f"{repo_id} has no main revision") from exc
        except hf_errors.OfflineModeIsEnabled as exc:
            raise HubUnavailableError(
                f"HF_HUB_OFFLINE is set, so {repo_id} cannot be looked up on {endpoint}",
                hint="unset HF_HUB_OFFLINE to pull; stored models work offline",
            ) from exc
        except hf_errors.HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            if status in (401, 403):
                raise GatedRepoError(
                    f"{endpoint} refused access to {repo_id} ({status})",
                    hint="set HF_TOKEN to a token that can read it",
                ) from exc
            if status not in _RETRY_STATUSES or attempt >= retries:
                raise HubUnavailableError(
                    f"Hugging Face answered {status} for {repo_id}",
                    hint="try again later",
                ) from exc
            wait = _retry_after(exc.response, backoff * 2**attempt)
        except httpx.TransportError as exc:
            if attempt >= retries:
                raise HubUnavailableError(
                    f"cannot reach {endpoint}: {exc}",
                    hint="check the network (or HF_ENDPOINT), then try again",
                ) from exc
            wait = backoff * 2**attempt
        attempt += 1
        time.sleep(wait)


def _retry_after(response: Any, default: float) -> float:
    try:
        return min(30.0, max(0.0, float(response.headers.get("Retry-After", default))))
    except (TypeError, ValueError, AttributeError):
        return default
