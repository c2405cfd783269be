"""Is a stored blob still the bytes whose sha256 was checked when they came in?

A blob's sha256 is checked once, as it is pulled or imported. After that a disk
fault, an edit of an imported file (import hard-links it) or a half-finished copy
of the store can change it, and llama.cpp would load garbage or crash on it. So
when a blob is verified, a stamp records its stat at that moment (size, inode,
mtime, ctime) in ``verified/sha256-<hex>.json``. Before a model is loaded, and when
it is pulled again, each blob's stat is compared with its stamp:

- equal: nothing has written to the file since it was verified; one stat, no hashing;
- different, or no stamp (a store from before stamps): the file is hashed again
  (about a second per GB) and, if it still matches, stamped anew.

Why these fields: every write changes mtime and ctime, and ctime cannot be set back
by hand the way ``touch`` sets mtime; a file replaced by another has a new inode; a
truncation changes the size. Changes that leave the bytes alone (chmod, a hard link
made or removed, such as deleting the file an import linked) cost one re-hash.
What a stat cannot show, bytes rotting on the medium with no write at all, only a
full re-hash would find; the cheap path does not pay for that on every load.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path

from localserve.errors import DamagedModelError, InvalidReferenceError
from localserve.store.manifest import Manifest
from localserve.store.refs import parse_ref
from localserve.store.store import ModelStore, Stamp

log = logging.getLogger("localserve.store")


def blob_problem(store: ModelStore, digest: str, size: int) -> str | None:
    """What is wrong with blob ``digest`` (missing, wrong size, changed bytes), or None.

    Hashes the file only when its stat differs from its stamp.
    """
    path = store.blob_path(digest)
    try:
        st = path.stat()
    except FileNotFoundError:
        return "is missing from the store"
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    if st.st_size != size:
        return f"is {st.st_size} bytes instead of {size}"
    if store.read_stamp(digest) == Stamp.of(st):
        return None
    log.info(
        "checking the sha256 of blob sha256-%s (%d bytes): not verified since it last changed",
        digest[:12],
        size,
    )
    started = time.perf_counter()
    try:
        actual, stamp = _hash(path)
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    if actual != digest:
        log.info("blob sha256-%s no longer matches its sha256 (it is %s)", digest[:12], actual)
        return "no longer matches its sha256 (it changed on disk)"
    log.info("blob sha256-%s verified in %.1fs", digest[:12], time.perf_counter() - started)
    if stamp is not None:
        store.write_stamp(digest, stamp)
    return None


def _hash(path: Path) -> tuple[str, Stamp | None]:
    """The file's sha256, and the stamp to record: None if it changed while being read."""
    with open(path, "rb") as handle:
        before = Stamp.of(os.fstat(handle.fileno()))
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
        after = Stamp.of(os.fstat(handle.fileno()))
    return digest, before if before == after else None


def check_model(store: ModelStore, manifest: Manifest) -> None:
    """Raise DamagedModelError, naming the model and how to repair it, if any of its
    files (its projector included) is missing or no longer what was verified."""
    for entry in manifest.blobs:
        problem = blob_problem(store, entry.digest, entry.size)
        if problem is not None:
            filename = entry.filename.rsplit("/", 1)[-1]
            what = "file"
            if entry is manifest.projector:
                what = "projector"
            elif entry in manifest.adapters:
                what = "adapter"
            elif entry in manifest.layers:
                what = "setting"
            raise DamagedModelError(
                manifest.name,
                f"model '{manifest.name}' is damaged: its {what} {filename} "
                f"(sha256-{entry.digest[:12]}) {problem}; {repair_advice(manifest)}",
            )


def repair_advice(manifest: Manifest) -> str:
    """The next step that brings a damaged model back, as one clause."""
    source = manifest.source
    if manifest.base is not None:
        return (
            f"it was created from '{manifest.base}': create it again with "
            f"`localserve create {manifest.name} -f Modelfile`"
        )
    if source.type == "huggingface":
        return f"run `localserve pull {pull_name(manifest, source.repo)}` to download it again"
    if source.type == "import":
        mmproj = ""
        if manifest.projector is not None:
            mmproj = f" --mmproj PATH/{manifest.projector.filename.rsplit('/', 1)[-1]}"
        return (
            f"it was imported from {source.filename}: import that file again with "
            f"`localserve import PATH/{source.filename} {manifest.name}{mmproj}`"
        )
    return (
        f"it is a copy of '{source.source_name}': repair that model, "
        f"or delete this one with `localserve rm {manifest.name}`"
    )


def pull_name(manifest: Manifest, repo: str) -> str:
    """The name that pulls this model's files from ``repo`` again: its own, or for a copy
    of a pulled model, the repository with the exact file name as the tag."""
    try:
        if parse_ref(manifest.name).is_hub:
            return manifest.name
    except InvalidReferenceError:
        pass
    filename = manifest.files[0].filename.rsplit("/", 1)[-1]
    return f"hf.co/{repo}:{filename}"
