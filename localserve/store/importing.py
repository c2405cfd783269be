"""``import``: a GGUF file already on this machine becomes a named model in the store.

The file is validated first (the GGUF header check), then hard-linked into the store
when it sits on the same filesystem (a multi-GB model costs no copy and no extra
disk), else copied with progress. Either way it is hashed and enters blobs/ by an
atomic rename; a split model (``x-00001-of-00003.gguf``) brings all its parts, and a
multimodal projector given with it (``--mmproj``) is checked and stored the same way.

A hard link shares the bytes with the original file: editing that file in place
would change the blob too, which the check before each load reports (verify.py).
Importing the file again repairs a blob that changed.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import stat
import uuid
from collections.abc import Generator
from pathlib import Path

from localserve.errors import DiskFullError, ImportSourceError
from localserve.store.manifest import BlobEntry, ImportSource, Manifest
from localserve.store.progress import Progress
from localserve.store.refs import parse_ref
from localserve.store.store import ModelStore
from localserve.store.verify import blob_problem

_SPLIT = re.compile(r"^(?P<stem>.*)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)
_BLOCK = 8 << 20


def source_parts(source: Path) -> list[Path]:
    """The file, or every part of the split model it is the first part of, in order."""
    _check_regular_file(source)
    match = _SPLIT.match(source.name)
    if not match:
        return [source]
    count = int(match.group("count"))
    if int(match.group("index")) != 1:
        raise ImportSourceError(
            f"{source} is part {int(match.group('index'))} of a split model",
            hint=f"import its first part, {match.group('stem')}-00001-of-{count:05d}.gguf",
        )
    parts = [
        source.with_name(f"{match.group('stem')}-{i:05d}-of-{count:05d}.gguf")
        for i in range(1, count + 1)
    ]
    for part in parts:
        _check_regular_file(part)
    return parts


def _check_regular_file(path: Path) -> None:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ImportSourceError(f"no such file: {path}") from None
    except OSError as exc:
        raise ImportSourceError(f"cannot read {path}: {exc.strerror}") from None
    if not stat.S_ISREG(mode):
        raise ImportSourceError(f"{path} is not a regular file")
    if not os.access(path, os.R_OK):
        raise ImportSourceError(f"cannot read {path}: permission denied")


def import_gguf(
    store: ModelStore, source: Path, name: str, projector: Path | None = None
) -> Generator[Progress]:
    """Import ``source`` under ``name``, yielding progress.

    ``projector`` is the model's multimodal projector (``--mmproj``): checked with
    read_projector before anything is written, then stored as a blob the same way.
    On any failure (or when the caller stops iterating) the blobs this import added
    and nothing else uses are removed, and no manifest is written.
    """
    from localserve.store.gguf import read_gguf_model, read_projector

    ref = parse_ref(name)
    source = Path(source).expanduser().absolute()
    parts = source_parts(source)
    info = read_gguf_model(parts)
    if projector is not None:
        projector = Path(projector).expanduser().absolute()
        _check_regular_file(projector)
        read_projector(projector)

    store.ensure_dirs()
    staged: list[str] = []
    try:
        entries = []
        for part in parts:
            digest = yield from stage_blob(store, part)
            staged.append(digest)
            entries.append(BlobEntry(digest=digest, size=part.stat().st_size, filename=part.name))
        projector_entry = None
        if projector is not None:
            digest = yield from stage_blob(store, projector)
            staged.append(digest)
            size = projector.stat().st_size
            projector_entry = BlobEntry(digest=digest, size=size, filename=projector.name)

        yield Progress("writing manifest")
        manifest = Manifest(
            name=str(ref),
            files=tuple(entries),
            source=ImportSource(filename=source.name),
            quantization=info.quantization,
            projector=projector_entry,
        )
        store.replace_manifest(ref, manifest)
    except BaseException:
        store.delete_unused(staged)
        raise
    yield Progress("success")


def stage_blob(store: ModelStore, source: Path) -> Generator[Progress, None, str]:
    """Link or copy ``source`` into the store, yielding progress; returns its digest."""
    size = source.stat().st_size
    staged = store.partial_dir / f"import-{uuid.uuid4().hex}.partial"
    sha = hashlib.sha256()
    try:
        try:
            # The file itself, not a link to it: link(2) does not follow symlinks, so a
            # Hugging Face cache entry (a symlink into its blobs/) would become a hard
            # link to the symlink. resolve() follows a whole chain of them.
            os.link(source.resolve(strict=True), staged)
            linked = True
        except OSError:  # another filesystem, or links not allowed: copy instead
            linked = False
        done = 0
        reader = open(staged if linked else source, "rb")  # noqa: SIM115 - closed below
        with reader:
            writer = None if linked else open(staged, "wb")  # noqa: SIM115
            try:
                while block := reader.read(_BLOCK):
                    sha.update(block)
                    if writer is not None:
                        try:
                            writer.write(block)
                        except OSError as exc:
                            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                                raise DiskFullError(
                                    f"no space left on device while copying {source.name}",
                                    hint="free some space and import again",
                                ) from exc
                            raise
                    done += len(block)
                    yield Progress(f"importing {source.name}", None, size, done, source.name)
            finally:
                if writer is not None:
                    writer.close()
        digest = sha.hexdigest()
        blob = store.blob_path(digest)
        if store.has_blob(digest) and os.path.samefile(staged, blob):
            # Imported before by a hard link: the very bytes just hashed. Stamp after the
            # unlink, which changes the file's ctime.
            staged.unlink()
            store.record_verified(digest)
        elif store.has_blob(digest) and blob_problem(store, digest, size) is None:
            staged.unlink()
        else:  # new, or the stored copy changed on disk: these checked bytes replace it
            store.commit_blob(staged, digest)
        return digest
    finally:
        with contextlib.suppress(FileNotFoundError):
            staged.unlink()
