"""Our resumable, parallel, verifying HTTP downloader for one blob.

Why our own: huggingface_hub's downloader deletes its temp file when the process
fails (nothing to resume from in the next run) and checks the size, not the sha256.
We need a partial file that survives SIGKILL, several ranges in flight for big
files, and the sha256 checked before a blob becomes visible.

How: the file is cut into fixed chunks. Workers (threads, each with its own
connection from one httpx pool) take chunks in order and write them in place with
``pwrite`` into a ``.partial`` file; a chunk counts only once all its bytes are
written, and the list of finished chunks is saved atomically next to it after each
one. A killed process thus loses at most the chunks in flight. A hasher thread
follows the finished prefix and feeds sha256 as the download goes, so verifying
costs almost nothing at the end. A server that ignores Range gets one worker that
writes the whole body sequentially.

Only after the digest matches is the partial renamed into blobs/ (and stamped as
verified, see verify.py). A mismatch deletes the partial and its state: those bytes
can never become right. A blob already in the store is checked against its stamp
first, and downloaded again if it changed on disk: that is how `pull` repairs a
damaged model.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import threading
import time
from collections import deque
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from localserve.errors import (
    DigestMismatchError,
    DiskFullError,
    DownloadInterruptedError,
    GatedRepoError,
    HubError,
)
from localserve.store.store import ModelStore, atomic_write
from localserve.store.verify import blob_problem

log = logging.getLogger("localserve.store")

MiB = 1 << 20


@dataclass(frozen=True)
class DownloadOptions:
    connections: int = 4
    # Bytes per ranged request and per resume point; None: about eight chunks per
    # connection, between 1 and 32 MiB, so small files still go out in parallel and
    # the hasher trails the last bytes closely.
    chunk_size: int | None = None
    retries: int = 5  # attempts per chunk without progress before giving up
    backoff: float = 0.5  # seconds, doubled per failed attempt (capped at 30)
    timeout: float = 30.0  # seconds without a byte before a connection counts as dead


class _RangesIgnored(Exception):
    """The server answered a ranged request with the whole body."""


class _Transient(Exception):
    """A failure worth retrying: cut connection, timeout, 429 or 5xx."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def download_blob(
    store: ModelStore,
    *,
    url: str,
    size: int,
    sha256: str,
    headers: dict[str, str] | None = None,
    options: DownloadOptions | None = None,
    label: str = "",
) -> Iterator[int]:
    """Download ``url`` into the store as blob ``sha256``, yielding bytes done so far.

    Returns when the blob is verified and in place. Two processes pulling the same
    blob take turns on a lock; the second then finds the blob and returns at once.
    A blob already stored is checked against its stamp (verify.py) and downloaded
    again if it changed on disk.
    """
    store.ensure_dirs()
    lock = _BlobLock(store.partial_path(sha256, ".lock"))
    while not lock.try_acquire():
        # Someone else is downloading this blob: show their progress while we wait.
        yield _state_progress(store, sha256, size)
        time.sleep(0.2)
    try:
        if store.has_blob(sha256):
            problem = blob_problem(store, sha256, size)
            if problem is None:
                yield size
                return
            log.info("blob sha256-%s %s: downloading it again", sha256[:12], problem)
        job = _Job(store, url, size, sha256, headers or {}, options or DownloadOptions(), label)
        yield from job.run()
    finally:
        lock.release()


class _BlobLock:
    """Who downloads a blob: an exclusive flock on ``partial/sha256-<hex>.lock``, and
    the file goes when the lock is released, so a finished store holds no lock files.

    Deleting a lock file is safe only because a waiter that wins the lock checks that
    the path still names the file it locked; if the holder deleted it meanwhile, the
    waiter lets go and tries again on the new file (filelock leaves its files behind
    instead). The kernel drops the lock of a killed process; its file is reused.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        held = False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            on_disk, locked = os.stat(self.path), os.fstat(fd)
            held = (on_disk.st_dev, on_disk.st_ino) == (locked.st_dev, locked.st_ino)
        except (BlockingIOError, FileNotFoundError):
            pass
        finally:
            if not held:
                os.close(fd)
        if held:
            self._fd = fd
        return held

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # while still holding the lock: see the class docstring
        os.close(fd)


def _state_progress(store: ModelStore, sha256: str, size: int) -> int:
    state = _load_state(store.partial_path(sha256, ".json"))
    if not state:
        return 0
    chunk = int(state["chunk_size"])
    return min(size, len(state["done"]) * chunk)


def _load_state(path: Path) -> dict[str, Any] | None:
    try:
        state = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict) or not isinstance(state.get("done"), list):
        return None
    if not isinstance(state.get("size"), int) or not isinstance(state.get("chunk_size"), int):
        return None
    return state


class _Job:
    """One blob being downloaded by this process (we hold its lock)."""

    def __init__(
        self,
        store: ModelStore,
        url: str,
        size: int,
        sha256: str,
        headers: dict[str, str],
        options: DownloadOptions,
        label: str,
    ) -> None:
        self.store = store
        self.url = url
        self.size = size
        self.sha256 = sha256
        self.headers = headers
        self.options = options
        self.label = label or f"sha256-{sha256[:12]}"
        self.chunk = _chunk_size(size, options)
        self.n_chunks = max(1, -(-size // self.chunk))
        self.partial = store.partial_path(sha256, ".partial")
        self.state_path = store.partial_path(sha256, ".json")

        self.cond = threading.Condition()
        self.done: set[int] = set()
        self.in_flight: dict[int, int] = {}  # chunk -> bytes written so far
        self.todo: deque[int] = deque()
        self.whole_body = False  # the server ignores Range: one worker streams everything
        self.stream_offset = 0  # how far that worker's current stream got
        self.whole_full = 0  # chunks below this one were completed by that stream
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.digest: str | None = None
        self.fd = -1

    # ------------------------------------------------------------------ run

    def run(self) -> Iterator[int]:
        self._open_partial()
        client = httpx.Client(
            follow_redirects=True,
            timeout=httpx.Timeout(self.options.timeout, connect=min(10.0, self.options.timeout)),
            limits=httpx.Limits(max_connections=self.options.connections + 1),
            headers=self.headers,
        )
        threads = [threading.Thread(target=self._hash, name="localserve-hash", daemon=True)]
        n_workers = max(1, min(self.options.connections, len(self.todo)))
        threads += [
            threading.Thread(
                target=self._work, args=(client,), name=f"localserve-dl-{i}", daemon=True
            )
            for i in range(n_workers)
        ]
        try:
            for thread in threads:
                thread.start()
            while True:
                with self.cond:
                    self.cond.wait(timeout=0.1)
                    finished = self.digest is not None
                    failed = bool(self.errors)
                    completed = self._completed()
                if failed:
                    raise self.errors[0]
                yield completed
                if finished:
                    break
        finally:
            self.stop.set()
            with self.cond:
                self.cond.notify_all()
            for thread in threads:
                if thread.is_alive():
                    thread.join(timeout=self.options.timeout + 5)
            client.close()
            self._save_state()
            os.close(self.fd)
        self._finish()

    def _completed(self) -> int:
        full = sum(self._chunk_len(i) for i in self.done)
        if self.whole_body:
            return max(full, self.stream_offset)
        return min(self.size, full + sum(self.in_flight.values()))

    def _chunk_len(self, index: int) -> int:
        return min(self.chunk, self.size - index * self.chunk)

    def _open_partial(self) -> None:
        state = _load_state(self.state_path)
        resumable = (
            state is not None
            and state["size"] == self.size
            and state["chunk_size"] >= 64 * 1024
            and self.partial.is_file()
            and self.partial.stat().st_size == self.size
        )
        if resumable and state is not None:
            # Keep the chunking the partial was started with, whatever the options now.
            self.chunk = state["chunk_size"]
            self.n_chunks = max(1, -(-self.size // self.chunk))
            self.done = {i for i in state["done"] if isinstance(i, int) and 0 <= i < self.n_chunks}
        remaining = self.size - sum(self._chunk_len(i) for i in self.done)
        free = shutil.disk_usage(self.partial.parent).free
        if remaining > free:
            raise DiskFullError(
                f"{self.label} needs {_gib(remaining)} more, but only {_gib(free)} is free "
                f"in {self.partial.parent}",
                hint="free some space (or set LOCALSERVE_MODELS to a bigger disk) and pull again",
            )
        flags = os.O_RDWR | os.O_CREAT | (0 if resumable else os.O_TRUNC)
        self.fd = os.open(self.partial, flags, 0o644)
        if not resumable:
            os.ftruncate(self.fd, self.size)  # sparse: the space is used as chunks land
            self._save_state()
        self.todo = deque(i for i in range(self.n_chunks) if i not in self.done)

    def _save_state(self, done: list[int] | None = None) -> None:
        """Record the finished chunks (``done``: a snapshot taken under ``cond``).

        Written outside the lock, so workers never wait on a file write; two threads
        may race, and an older snapshot landing last only under-reports what is done,
        which a resume simply downloads again.
        """
        state = {
            "size": self.size,
            "chunk_size": self.chunk,
            "done": sorted(self.done) if done is None else done,
        }
        with contextlib.suppress(OSError):
            # Not fsynced: a power cut may lose recent chunks' records (or even bytes
            # recorded as done), and the sha256 check at the end catches that.
            atomic_write(self.state_path, json.dumps(state).encode(), durable=False)

    def _finish(self) -> None:
        if self.digest != self.sha256:
            # Those bytes will never hash right: start from nothing next time.
            for path in (self.partial, self.state_path):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            raise DigestMismatchError(
                self.label,
                self.sha256,
                self.digest or "?",
                hint="the partial download was deleted; run the pull again",
            )
        self.store.commit_blob(self.partial, self.sha256)
        # The state, and any temporary copy of it a killed process left half-written.
        leftovers = self.state_path.parent.glob(f".{self.state_path.name}.*.tmp")
        for path in (self.state_path, *leftovers):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def _fail(self, exc: BaseException) -> None:
        with self.cond:
            self.errors.append(exc)
            self.stop.set()
            self.cond.notify_all()

    # --------------------------------------------------------------- hasher

    def _hash(self) -> None:
        """Hash chunks in order as soon as each is complete on disk."""
        try:
            sha = hashlib.sha256()
            for index in range(self.n_chunks):
                with self.cond:
                    while index not in self.done and not self.stop.is_set():
                        self.cond.wait()
                    if index not in self.done:
                        return
                offset, end = index * self.chunk, index * self.chunk + self._chunk_len(index)
                while offset < end:
                    data = os.pread(self.fd, min(8 * MiB, end - offset), offset)
                    if not data:
                        raise OSError(errno.EIO, f"short read from {self.partial}")
                    sha.update(data)
                    offset += len(data)
                # Flush what is hashed while the download goes on, so that the fsync
                # before the blob's rename has almost nothing left to write.
                os.fdatasync(self.fd)
            with self.cond:
                self.digest = sha.hexdigest()
                self.cond.notify_all()
        except BaseException as exc:
            self._fail(exc)

    # -------------------------------------------------------------- workers

    def _work(self, client: httpx.Client) -> None:
        try:
            while not self.stop.is_set():
                with self.cond:
                    if not self.todo:
                        return
                    index = self.todo.popleft()
                    self.in_flight[index] = 0
                self._fetch_with_retries(client, index)
        except BaseException as exc:
            self._fail(exc)

    def _fetch_with_retries(self, client: httpx.Client, index: int) -> None:
        failures = 0
        while not self.stop.is_set():
            before = self._completed()
            try:
                if self.whole_body:
                    self._fetch_whole(client)
                else:
                    self._fetch_chunk(client, index)
                return
            except _RangesIgnored:
                with self.cond:
                    if self.whole_body:
                        return  # another worker already streams the whole file
                    self.whole_body = True
                    self.whole_full = 0
                    self.stream_offset = 0
                    self.todo.clear()
                    self.in_flight.pop(index, None)
                continue
            except _Transient as exc:
                failures = 0 if self._completed() > before else failures + 1
                if failures > self.options.retries:
                    done = self._completed()
                    raise DownloadInterruptedError(
                        f"download of {self.label} stopped at {_gib(done)} of "
                        f"{_gib(self.size)}: {exc}",
                    ) from exc
                delay = exc.retry_after
                if delay is None:
                    delay = min(30.0, self.options.backoff * 2 ** max(0, failures - 1))
                self.stop.wait(delay)
        return

    def _request(self, client: httpx.Client, start: int, end: int) -> httpx.Response:
        headers = {"Range": f"bytes={start}-{end - 1}", "Accept-Encoding": "identity"}
        try:
            response = client.send(
                client.build_request("GET", self.url, headers=headers), stream=True
            )
        except httpx.TransportError as exc:
            raise _Transient(f"connection failed: {exc or type(exc).__name__}") from exc
        status = response.status_code
        if status in (200, 206):
            return response
        response.close()
        if status in (429, 500, 502, 503, 504):
            raise _Transient(f"the server answered {status}", _retry_after(response))
        if status in (401, 403):
            raise GatedRepoError(
                f"access to {self.label} refused ({status})",
                hint="set HF_TOKEN to a token that can read this repository",
            )
        if status == 416:
            raise HubError(f"{self.label} is smaller on the server than the Hub says; try again")
        raise HubError(f"downloading {self.label} failed: the server answered {status}")

    def _pieces(self, response: httpx.Response) -> Generator[bytes]:
        """The body as it arrives; a broken connection becomes a retryable failure."""
        try:
            yield from response.iter_raw()
        except httpx.TransportError as exc:
            raise _Transient(f"connection lost: {exc or type(exc).__name__}") from exc
        finally:
            response.close()

    def _fetch_chunk(self, client: httpx.Client, index: int) -> None:
        start = index * self.chunk + self.in_flight.get(index, 0)
        end = index * self.chunk + self._chunk_len(index)
        response = self._request(client, start, end)
        if response.status_code == 200 and (start != 0 or end != self.size):
            response.close()
            raise _RangesIgnored
        offset = start
        with contextlib.closing(self._pieces(response)) as pieces:
            for received in pieces:
                if self.stop.is_set():
                    return
                data = received[: end - offset]
                self._write(data, offset)
                offset += len(data)
                # No lock per piece: only this worker writes this key, and a dict item
                # assignment is atomic; readers take the lock to sum a consistent view.
                self.in_flight[index] = offset - index * self.chunk
                if offset >= end:
                    break
        if offset < end:
            raise _Transient(f"the server sent {offset - start} of {end - start} bytes")
        with self.cond:
            del self.in_flight[index]
            self.done.add(index)
            snapshot = sorted(self.done)
            self.cond.notify_all()
        self._save_state(snapshot)

    def _fetch_whole(self, client: httpx.Client) -> None:
        """The server ignores Range: take the whole body, writing the chunks not yet done."""
        offset = 0
        with contextlib.closing(self._pieces(self._request(client, 0, self.size))) as pieces:
            for received in pieces:
                if self.stop.is_set():
                    return
                data = received[: self.size - offset]
                self._write_undone(data, offset)
                offset += len(data)
                full = self.n_chunks if offset >= self.size else offset // self.chunk
                snapshot = None
                with self.cond:
                    self.stream_offset = offset
                    fresh = [i for i in range(self.whole_full, full) if i not in self.done]
                    self.whole_full = max(self.whole_full, full)
                    if fresh:
                        self.done.update(fresh)
                        snapshot = sorted(self.done)
                        self.cond.notify_all()
                if snapshot is not None:
                    self._save_state(snapshot)
                if offset >= self.size:
                    break
        if offset < self.size:
            raise _Transient(f"the server sent {offset} of {self.size} bytes")

    def _write_undone(self, data: bytes, offset: int) -> None:
        """Write only into chunks not yet done: those were hashed already, and bytes that
        differ on a second pass must not slip in behind the hasher's back."""
        pos = 0
        while pos < len(data):
            index = (offset + pos) // self.chunk
            stop = min(len(data), (index + 1) * self.chunk - offset)
            if index not in self.done:
                self._write(data[pos:stop], offset + pos)
            pos = stop

    def _write(self, data: bytes, offset: int) -> None:
        view = memoryview(data)
        while view:
            try:
                written = os.pwrite(self.fd, view, offset)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise DiskFullError(
                        f"no space left on device while writing {self.label}",
                        hint="free some space and pull again; the partial download is kept",
                    ) from exc
                raise
            view = view[written:]
            offset += written


def _chunk_size(size: int, options: DownloadOptions) -> int:
    if options.chunk_size is not None:
        return max(64 * 1024, options.chunk_size)
    return min(32 * MiB, max(MiB, size // (8 * options.connections)))


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return min(30.0, max(0.0, float(response.headers["Retry-After"])))
    except (KeyError, ValueError):
        return None


def _gib(n: int) -> str:
    if n >= 1 << 30:
        return f"{n / (1 << 30):.1f} GiB"
    return f"{n / MiB:.1f} MiB"


__all__ = ["DownloadOptions", "download_blob"]
