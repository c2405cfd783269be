"""The model store on disk: content-addressed blobs, small manifests, a partial area.

::

    <models dir>/
      blobs/sha256-<64 hex>                         verified GGUF bytes (models and their
                                                    projectors), shared between names
      manifests/hf.co/<owner>/<repo>/<tag>.json     a Hub model (see manifest.py)
      manifests/local/<name>/<tag>.json             a name made by `cp` or `import`
      partial/sha256-<64 hex>.partial               a download in progress (never listed)
      partial/sha256-<64 hex>.json                  its resume state
      partial/sha256-<64 hex>.lock                  held by the process writing it
      verified/sha256-<64 hex>.json                 the blob's stat when its sha256 last matched
      store.lock                                    held while manifests change or blobs go

A blob only ever appears by an atomic rename after its sha256 was checked, and a
manifest only after all its blobs are in place, so a crash at any moment leaves
either the old state or the new one, plus at most a resumable partial. What happens
to a blob afterwards (a disk fault, an edit of an imported file) is verify.py's job.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from localserve.errors import InvalidReferenceError, ModelNotFoundError, StoreError
from localserve.store.manifest import CopySource, Manifest
from localserve.store.refs import ModelRef, parse_digest, parse_ref

log = logging.getLogger("localserve.store")


@dataclass(frozen=True)
class Stamp:
    """A blob's stat as of the moment its sha256 last matched (verify.py)."""

    size: int
    inode: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> Stamp:
        return cls(st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)


@dataclass(frozen=True)
class StoredModel:
    """One name in the store, as `list` shows it."""

    ref: ModelRef
    manifest: Manifest
    modified_at: datetime

    @property
    def name(self) -> str:
        return str(self.ref)


class ModelStore:
    """All reads and writes of the model store go through here."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).absolute()
        self.blobs_dir = self.root / "blobs"
        self.manifests_dir = self.root / "manifests"
        self.partial_dir = self.root / "partial"
        self.verified_dir = self.root / "verified"

    @classmethod
    def from_settings(cls) -> ModelStore:
        from localserve.config import load_settings

        return cls(load_settings().models_dir)

    # ----------------------------------------------------------------- paths

    def ensure_dirs(self) -> None:
        for directory in (self.blobs_dir, self.manifests_dir, self.partial_dir):
            directory.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def _inside(base: Path, path: Path) -> Path:
        """Refuse a path that would land outside ``base`` (belt and braces after refs.py),
        symlinks included."""
        if not path.resolve().is_relative_to(base.resolve()):
            raise InvalidReferenceError(f"refusing a path outside the model store: {path}")
        return path

    def blob_path(self, digest: str) -> Path:
        return self._inside(self.blobs_dir, self.blobs_dir / f"sha256-{parse_digest(digest)}")

    def partial_path(self, digest: str, suffix: str) -> Path:
        return self._inside(
            self.partial_dir, self.partial_dir / f"sha256-{parse_digest(digest)}{suffix}"
        )

    def stamp_path(self, digest: str) -> Path:
        """Where verify.py records that blob ``digest`` was verified (and as of which stat)."""
        return self._inside(
            self.verified_dir, self.verified_dir / f"sha256-{parse_digest(digest)}.json"
        )

    def manifest_path(self, ref: ModelRef) -> Path:
        path = self.manifests_dir.joinpath(ref.host, *ref.path, f"{ref.tag}.json")
        return self._inside(self.manifests_dir, path)

    def lock(self) -> contextlib.AbstractContextManager[object]:
        """The store-wide lock: held while manifests are written or blobs removed."""
        from filelock import FileLock

        self.root.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.root / "store.lock"))

    # ------------------------------------------------------------- manifests

    def find(self, ref: ModelRef) -> ModelRef | None:
        """The stored ref for ``ref``: exact, else a case-insensitive match of the tag.

        Quantization tags are case-insensitive on the Hub (``q4_k_m`` is ``Q4_K_M``),
        so the store answers to either spelling.
        """
        path = self.manifest_path(ref)
        if path.is_file():
            return ref
        if path.parent.is_dir():
            for candidate in path.parent.glob("*.json"):
                if candidate.stem.lower() == ref.tag.lower():
                    return ref.with_tag(candidate.stem)
        return None

    def get(self, name: str | ModelRef) -> tuple[ModelRef, Manifest]:
        """The manifest stored under a name; raises ModelNotFoundError."""
        ref = parse_ref(name) if isinstance(name, str) else name
        found = self.find(ref)
        if found is None:
            raise ModelNotFoundError(str(ref))
        return found, self._read_manifest(self.manifest_path(found))

    def _read_manifest(self, path: Path) -> Manifest:
        try:
            return Manifest.model_validate_json(path.read_bytes())
        except (OSError, ValidationError, ValueError) as exc:
            raise StoreError(
                f"damaged manifest {path}: {str(exc).splitlines()[0]}",
                hint="remove it with `localserve rm` and pull the model again",
            ) from exc

    def write_manifest(self, ref: ModelRef, manifest: Manifest) -> None:
        """Atomically (re)write the manifest for ``ref``; every blob must already be stored."""
        for entry in manifest.blobs:
            if not self.blob_path(entry.digest).is_file():
                raise StoreError(
                    f"blob sha256-{entry.digest[:12]} of {ref} is missing from the store",
                    hint=f"run `localserve pull {ref}` again",
                )
        path = self.manifest_path(ref)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = manifest.model_dump_json(indent=2).encode()
        atomic_write(path, data)

    def list_models(self) -> list[StoredModel]:
        """Every stored name, sorted by name. Damaged manifests are skipped, not fatal."""
        models: list[StoredModel] = []
        if not self.manifests_dir.is_dir():
            return models
        for path in sorted(self.manifests_dir.rglob("*.json")):
            relative = path.relative_to(self.manifests_dir).with_suffix("")
            if len(relative.parts) < 3:
                continue
            host, *parts, tag = relative.parts
            try:
                ref = ModelRef(host, tuple(parts), tag)
                # Round-trip through the parser: only names a user could type are listed.
                if parse_ref(str(ref)) != ref:
                    continue
                manifest = self._read_manifest(path)
                modified = datetime.fromtimestamp(path.stat().st_mtime, UTC)
            except (InvalidReferenceError, StoreError, OSError):
                continue
            models.append(StoredModel(ref, manifest, modified))
        return models

    def copy(self, source: str, destination: str) -> ModelRef:
        """Give a stored model a second name; no bytes are copied."""
        dst_ref = parse_ref(destination)
        src_ref, manifest = self.get(source)
        copied = manifest.model_copy(
            update={
                "name": str(dst_ref),
                "source": CopySource(source_name=str(src_ref)),
                "created_at": datetime.now(UTC),
            }
        )
        # Keep the original provenance when the source was itself a Hub pull: `show`
        # can then still say where the bytes came from.
        if manifest.source.type != "copy":
            copied = copied.model_copy(update={"source": manifest.source})
        with self.lock():
            self.write_manifest(dst_ref, copied)
        return dst_ref

    def remove(self, name: str) -> tuple[ModelRef, list[str]]:
        """Delete a name, and each of its blobs that no other manifest still references.

        Returns the removed ref and the digests of the blobs that went.
        """
        with self.lock():
            ref, manifest = self.get(name)
            self.manifest_path(ref).unlink()
            self._prune_empty_dirs(self.manifest_path(ref).parent)
            removed = self._delete_unused(entry.digest for entry in manifest.blobs)
        return ref, removed

    def used_digests(self) -> set[str]:
        """The digest of every blob some manifest references (projectors included)."""
        return {e.digest for m in self.list_models() for e in m.manifest.blobs}

    def delete_unused(self, digests: Iterable[str]) -> list[str]:
        """Delete those of ``digests`` that no manifest references; returns the deleted.

        For a pull or import that fails after some of its blobs went in: they must not
        linger, but a blob another model uses stays.
        """
        with self.lock():
            return self._delete_unused(digests)

    def _delete_unused(self, digests: Iterable[str]) -> list[str]:
        used = self.used_digests()
        deleted: list[str] = []
        for digest in digests:
            if digest not in used and digest not in deleted:
                self.delete_blob(digest)
                deleted.append(digest)
        return deleted

    def replace_manifest(self, ref: ModelRef, manifest: Manifest) -> list[str]:
        """Write the manifest for ``ref`` under the store lock, then delete the blobs of
        the manifest it replaces that no manifest uses any more (a file the repository
        updated, a projector no longer wanted). Returns their digests."""
        with self.lock():
            path = self.manifest_path(ref)
            old = None
            if path.is_file():
                with contextlib.suppress(StoreError):  # a damaged one has nothing to keep
                    old = self._read_manifest(path)
            self.write_manifest(ref, manifest)
            return [] if old is None else self._delete_unused(e.digest for e in old.blobs)

    def _prune_empty_dirs(self, directory: Path) -> None:
        while directory != self.manifests_dir and directory.is_relative_to(self.manifests_dir):
            try:
                directory.rmdir()
            except OSError:
                return
            directory = directory.parent

    # ----------------------------------------------------------------- blobs

    def has_blob(self, digest: str, size: int | None = None) -> bool:
        path = self.blob_path(digest)
        try:
            stat = path.stat()
        except FileNotFoundError:
            return False
        return size is None or stat.st_size == size

    def blob_paths(self, manifest: Manifest) -> list[Path]:
        """The model's GGUF file(s) in load order (not its projector: projector_path)."""
        return [self.blob_path(entry.digest) for entry in manifest.files]

    def projector_path(self, manifest: Manifest) -> Path | None:
        """The blob of the model's multimodal projector, or None when it has none."""
        if manifest.projector is None:
            return None
        return self.blob_path(manifest.projector.digest)

    # Stamps: a blob's stat as of its last sha256 check (verify.py says what they are for).

    def read_stamp(self, digest: str) -> Stamp | None:
        """The blob's stamp; None when there is none or it cannot be read (then: re-hash)."""
        try:
            data = json.loads(self.stamp_path(digest).read_bytes())
            return Stamp(
                size=int(data["size"]),
                inode=int(data["inode"]),
                mtime_ns=int(data["mtime_ns"]),
                ctime_ns=int(data["ctime_ns"]),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def write_stamp(self, digest: str, stamp: Stamp) -> None:
        """Record ``stamp``; a stamp that cannot be written (a read-only store) only means
        the blob is hashed again at its next check, so that is no error."""
        try:
            self.verified_dir.mkdir(parents=True, exist_ok=True)
            # Not fsynced: a stamp lost to a power cut only costs one re-hash.
            data = json.dumps(asdict(stamp)).encode()
            atomic_write(self.stamp_path(digest), data, durable=False)
        except OSError as exc:
            log.info("cannot record blob sha256-%s as verified: %s", digest[:12], exc)

    def record_verified(self, digest: str) -> None:
        """Stamp blob ``digest`` as it is now; call right after its bytes were checked."""
        self.write_stamp(digest, Stamp.of(self.blob_path(digest).stat()))

    def commit_blob(self, staged: Path, digest: str) -> Path:
        """Move a verified file into blobs/ under its digest (atomic, same filesystem),
        and stamp it as verified."""
        self.blobs_dir.mkdir(parents=True, exist_ok=True)
        target = self.blob_path(digest)
        with open(staged, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(staged, target)
        _fsync_dir(self.blobs_dir)
        # After the rename: a rename changes the file's ctime, which the stamp records.
        self.record_verified(digest)
        return target

    def delete_blob(self, digest: str) -> None:
        """Remove a blob and its verification stamp (call under the store lock)."""
        for path in (self.blob_path(digest), self.stamp_path(digest)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def iter_partials(self) -> Iterator[Path]:
        if self.partial_dir.is_dir():
            yield from sorted(self.partial_dir.glob("sha256-*.partial"))


def atomic_write(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new, never half.

    ``durable=False`` skips the fsyncs: the file still survives the process being
    killed (the kernel has the data), only not a power cut. On ext4 an fsync also
    flushes every other dirty file in the journal transaction, which would stall a
    download that saves its state after each chunk.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not every platform lets a directory be opened.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
