"""A fake Hugging Face Hub on 127.0.0.1 for the pull tests and download benchmarks.

It speaks the routes huggingface_hub 1.x calls, closely enough that the real client works
against it unchanged:

- ``GET /api/models/{owner}/{name}`` and ``.../revision/{rev}`` (``?blobs=true`` adds sizes
  and LFS data to ``siblings``),
- ``GET /api/models/{owner}/{name}/tree/{rev}[/{path}]`` (``recursive``, ``expand``, paging
  through ``Link: <...>; rel="next"``),
- ``POST /api/models/{owner}/{name}/paths-info/{rev}`` (form or JSON ``paths``),
- ``HEAD``/``GET /{owner}/{name}/resolve/{rev}/{path}``: plain git files are served there;
  LFS files answer 302 to ``/cdn-lfs/{sha256}?...`` (a relative ``Location``), which serves
  the bytes, like the real Hub's CDN hop.

Errors carry ``X-Error-Code``/``X-Error-Message`` as on the real Hub, and switches in
``FakeHub.faults`` inject cuts, ignored ranges, wrong bytes, error statuses and throttling,
into every file or into one (``only_file``: e.g. a vision model's ``mmproj-*.gguf``, which
a repo holds next to the model like any other file).

Used as a pytest plugin (fixture ``fake_hub``) and as a script for benchmarks::

    python -m tests.support.fakehub --repo owner/name=/path/to/file.gguf [--repo ...] [--port N]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import secrets
import signal
import socket
import socketserver
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO, Literal
from urllib.parse import parse_qs, quote, unquote, urlencode

import pytest

__all__ = ["FakeHub", "Faults", "Headers", "RequestRecord", "fake_hub"]

log = logging.getLogger(__name__)

CHUNK = 1 << 20  # body writes of 1 MiB
_FLIP = bytes(i ^ 0xFF for i in range(256))  # `wrong_bytes`: every byte inverted, same length
_GITATTRIBUTES = b"""*.bin filter=lfs diff=lfs merge=lfs -text
*.gguf filter=lfs diff=lfs merge=lfs -text
*.onnx filter=lfs diff=lfs merge=lfs -text
*.pt filter=lfs diff=lfs merge=lfs -text
*.safetensors filter=lfs diff=lfs merge=lfs -text
*.zip filter=lfs diff=lfs merge=lfs -text
"""
_LAST_MODIFIED = "2024-05-01T12:00:00.000Z"


# --------------------------------------------------------------------------- data model


@dataclass
class Faults:
    """Mutable switches, all off by default. Safe to flip while the server runs.

    - ``cut_after``: close the connection after sending that many bytes of a file body (GET
      on ``resolve`` or on the CDN path), when the body is longer than that. Each cut uses one
      of ``cut_times``; when they are used up, ``cut_after`` goes back to ``None`` and
      ``cut_times`` to 1, so setting ``cut_after`` again arms one more cut.
    - ``ignore_range``: answer Range requests with 200 and the whole body.
    - ``wrong_bytes``: serve every body byte inverted (same length, wrong sha256).
    - ``fail_status``: statuses to answer, one per request to an API or ``resolve`` route
      (the CDN path is not affected), before behaving again. 429 and 503 come with
      ``Retry-After: {retry_after}``; 429 also with the Hub's ``RateLimit`` headers.
    - ``bytes_per_second``: throttle file bodies.
    - ``only_file``: the body faults above (cuts, ignored ranges, wrong bytes,
      throttling) hit only the file with this sha256 (its LFS oid), e.g. a model's
      projector (``mmproj-*.gguf``) and not the model; ``None``: every file.
    """

    cut_after: int | None = None
    cut_times: int = 1
    ignore_range: bool = False
    wrong_bytes: bool = False
    fail_status: list[int] = field(default_factory=list)
    retry_after: int = 1
    bytes_per_second: int | None = None
    only_file: str | None = None
    _lock: threading.Lock = field(
        default_factory=threading.Lock, init=False, repr=False, compare=False
    )

    def reset(self) -> None:
        """Turn every fault off."""
        with self._lock:
            self.cut_after = None
            self.cut_times = 1
            self.ignore_range = False
            self.wrong_bytes = False
            self.fail_status = []
            self.retry_after = 1
            self.bytes_per_second = None
            self.only_file = None

    def hits(self, sha256: str) -> bool:
        """Whether the body faults apply to the file with content ``sha256``."""
        return self.only_file is None or self.only_file == sha256

    def take_fail_status(self) -> int | None:
        with self._lock:
            return self.fail_status.pop(0) if self.fail_status else None

    def take_cut(self, length: int) -> int | None:
        """How many bytes of a body of ``length`` to send before cutting, or None for all."""
        with self._lock:
            cut = self.cut_after
            if cut is None or cut >= length or self.cut_times <= 0:
                return None
            self.cut_times -= 1
            if self.cut_times <= 0:
                self.cut_after = None
                self.cut_times = 1
            return max(0, cut)


class Headers(Mapping[str, str]):
    """Request headers as sent; lookups ignore case (``headers.get("Range")``)."""

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: dict[str, tuple[str, str]] = {}
        for name, value in items:
            key = name.lower()
            if key in self._items:  # repeated header: one comma-separated value
                first, earlier = self._items[key]
                self._items[key] = (first, f"{earlier}, {value}")
            else:
                self._items[key] = (name, value)

    def __getitem__(self, name: str) -> str:
        return self._items[name.lower()][1]

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Headers({dict(self.items())!r})"


@dataclass
class RequestRecord:
    """One request as the server saw it."""

    method: str
    path: str  # percent-decoded path, without the query
    raw_path: str  # as sent, query included
    query: dict[str, list[str]]
    headers: Headers  # case-insensitive
    body: bytes = b""
    status: int | None = None  # filled in when the response starts

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    @property
    def range(self) -> str | None:
        return self.headers.get("Range")

    @property
    def authorization(self) -> str | None:
        return self.headers.get("Authorization")


@dataclass(frozen=True)
class _Blob:
    """A file's content: bytes in memory or a file on disk (never loaded whole)."""

    size: int
    sha256: str
    data: bytes | None = None
    path: Path | None = None

    def open(self) -> BinaryIO:
        assert self.path is not None
        return self.path.open("rb")


@dataclass(frozen=True)
class _File:
    path: str
    blob: _Blob
    lfs: bool
    oid: str  # git blob sha1: of the content for plain files, of the pointer file for LFS
    pointer_size: int  # size of the LFS pointer file (0 for plain files)

    def tree_entry(self, commit: str, expand: bool) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "type": "file",
            "oid": self.oid,
            "size": self.blob.size,
            "path": self.path,
        }
        if self.lfs:
            entry["lfs"] = {
                "oid": self.blob.sha256,
                "size": self.blob.size,
                "pointerSize": self.pointer_size,
            }
        if expand:
            entry["lastCommit"] = {"id": commit, "title": "Upload", "date": _LAST_MODIFIED}
            entry["securityFileStatus"] = {
                "status": "safe",
                "avScan": {"virusFound": False, "virusNames": None},
                "pickleImportScan": None,
            }
        return entry


@dataclass(frozen=True)
class _Commit:
    sha: str
    files: dict[str, _File]  # by repo path
    dirs: dict[str, str]  # directory path -> fake tree oid

    def entry(self, path: str, expand: bool) -> dict[str, Any] | None:
        if path in self.files:
            return self.files[path].tree_entry(self.sha, expand)
        if path in self.dirs:
            entry: dict[str, Any] = {
                "type": "directory",
                "oid": self.dirs[path],
                "size": 0,
                "path": path,
            }
            if expand:
                entry["lastCommit"] = {"id": self.sha, "title": "Upload", "date": _LAST_MODIFIED}
            return entry
        return None

    def listing(self, base: str, recursive: bool) -> list[str] | None:
        """Paths under directory ``base`` ("" for the root) in git tree order, or None."""
        if base and base not in self.dirs:
            return None
        prefix = f"{base}/" if base else ""
        children = sorted(
            {
                p[len(prefix) :].split("/", 1)[0]
                for p in [*self.files, *self.dirs]
                if p.startswith(prefix)
            }
        )
        out: list[str] = []
        for kind in ("dir", "file"):  # directories first, like the Hub
            for child in children:
                full = prefix + child
                if (full in self.dirs) != (kind == "dir"):
                    continue
                out.append(full)
                if kind == "dir" and recursive:
                    out.extend(self.listing(full, recursive=True) or [])
        return out


@dataclass
class _Repo:
    repo_id: str
    private: bool
    gated: Literal[False, "auto", "manual"]
    branches: dict[str, str] = field(default_factory=dict)  # name -> commit sha
    commits: dict[str, _Commit] = field(default_factory=dict)

    def lookup(self, revision: str) -> _Commit | None:
        sha = self.branches.get(revision, revision)
        return self.commits.get(sha)


class _HubError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = dict(headers or {})


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\x00" % len(data) + data).hexdigest()


def _git_blob_sha1_of_file(path: Path, size: int) -> str:
    digest = hashlib.sha1(b"blob %d\x00" % size)
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _lfs_pointer(sha256: str, size: int) -> bytes:
    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()
    )


def _content_disposition(path: str, kind: str = "inline") -> str:
    name = path.rsplit("/", 1)[-1]
    ascii_name = name.encode("ascii", "replace").decode().replace('"', "_")
    return f"{kind}; filename*=UTF-8''{quote(name)}; filename=\"{ascii_name}\";"


def _header_value(value: str) -> str:
    """A value safe to send: one line, latin-1 (paths from the URL can hold anything)."""
    one_line = " ".join(value.splitlines())
    return one_line.encode("latin-1", "replace").decode("latin-1")


def _parse_range(value: str, size: int) -> tuple[int, int] | Literal["unsatisfiable"] | None:
    """(start, end exclusive) for a single ``bytes=`` range; None to ignore the header."""
    unit, _, spec = value.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, sep, last = spec.strip().partition("-")
    first, last = first.strip(), last.strip()
    if not sep or not (first.isdigit() or last.isdigit()):
        return None
    if (first and not first.isdigit()) or (last and not last.isdigit()):
        return None
    if not first:  # suffix: the last N bytes
        n = int(last)
        if n == 0 or size == 0:
            return "unsatisfiable"
        return max(0, size - n), size
    start = int(first)
    end = int(last) + 1 if last else size
    if start >= size or end <= start:
        return "unsatisfiable"
    return start, min(end, size)


# --------------------------------------------------------------------------- HTTP server


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, hub: FakeHub, port: int) -> None:
        self.hub = hub
        self._conn_lock = threading.Lock()
        self._conns: dict[socket.socket, threading.Thread] = {}
        super().__init__(("127.0.0.1", port), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind would call socket.getfqdn(), a reverse DNS look-up.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self._serve_connection,
            args=(request, client_address),
            name=f"fakehub-{self.server_port}-conn-{client_address[1]}",
            daemon=True,
        )
        with self._conn_lock:
            self._conns[request] = thread
        thread.start()

    def _serve_connection(self, request: socket.socket, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except OSError as exc:  # the client went away, or stop() closed the socket
            log.debug("connection %s ended: %r", client_address, exc)
        except Exception:
            log.exception("fake hub: connection %s failed", client_address)
        finally:
            self.shutdown_request(request)
            with self._conn_lock:
                self._conns.pop(request, None)

    def close_connections(self, timeout: float = 5.0) -> None:
        """Wake every handler blocked on a keep-alive read or a send, and wait for it."""
        with self._conn_lock:
            conns = list(self._conns.items())
        for sock, _ in conns:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + timeout
        for _, thread in conns:
            thread.join(max(0.0, deadline - time.monotonic()))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    # -- plumbing

    def version_string(self) -> str:
        return "FakeHub/1.0"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s - %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    @property
    def hub(self) -> FakeHub:
        return self.server.hub

    def _dispatch(self, method: str) -> None:
        raw_path, _, query_string = self.path.partition("?")
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        body = self.rfile.read(length) if length > 0 else b""
        self._record = RequestRecord(
            method=method,
            path=unquote(raw_path),
            raw_path=self.path,
            query=parse_qs(query_string, keep_blank_values=True),
            headers=Headers(self.headers.items()),
            body=body,
        )
        self.hub._log_request(self._record)
        self._head = method == "HEAD"
        self._started = False
        try:
            self._route(method, raw_path.split("/")[1:], self._record.query, body)
        except _HubError as err:
            self._send_error(err)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            self.close_connection = True
        except Exception as exc:  # a bug in the fake: answer 500 rather than hang the client
            log.exception("fake hub: %s %s failed", method, self.path)
            if self._started:
                self.close_connection = True
            else:
                self._send_error(_HubError(500, f"fake hub error: {exc!r}"))

    def _start(self, status: int, headers: Mapping[str, str]) -> None:
        self._started = True
        self._record.status = status
        self.send_response(status)
        request_id = self.headers.get("X-Amzn-Trace-Id") or str(uuid.uuid4())
        self.send_header("X-Request-Id", f"Root={request_id}")
        for name, value in headers.items():
            self.send_header(name, _header_value(value))
        self.end_headers()

    def _send_bytes(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        self._start(status, {**headers, "Content-Length": str(len(body))})
        if not self._head and body:
            self.wfile.write(body)

    def _send_json(
        self, status: int, payload: Any, headers: Mapping[str, str] | None = None
    ) -> None:
        body = json.dumps(payload).encode()
        self._send_bytes(
            status, {"Content-Type": "application/json; charset=utf-8", **(headers or {})}, body
        )

    def _send_error(self, err: _HubError) -> None:
        headers = dict(err.headers)
        if err.code:
            headers["X-Error-Code"] = err.code
        headers["X-Error-Message"] = err.message
        self._send_json(err.status, {"error": err.message}, headers)

    # -- routing

    def _route(
        self, method: str, parts: list[str], query: dict[str, list[str]], body: bytes
    ) -> None:
        if parts and parts[0] == "cdn-lfs":
            if method == "POST" or len(parts) != 2:
                raise _HubError(404, "Not Found")
            self._cdn(unquote(parts[1]), query)
            return

        api = len(parts) >= 4 and parts[0] == "api" and parts[1] == "models"
        resolve = not api and len(parts) >= 5 and parts[2] == "resolve"
        if not (api or resolve):
            raise _HubError(404, "Not Found")
        if (status := self.hub.faults.take_fail_status()) is not None:
            raise self._injected_failure(status)

        token_ok = self._check_token()
        if api:
            repo_id = f"{unquote(parts[2])}/{unquote(parts[3])}"
            repo = self._repo(repo_id, token_ok)
            rest = parts[4:]
            if not rest and method != "POST":
                self._model_info(repo, "main", query)
            elif len(rest) == 2 and rest[0] == "revision" and method != "POST":
                self._model_info(repo, unquote(rest[1]), query)
            elif len(rest) >= 2 and rest[0] == "tree" and method != "POST":
                self._tree(repo, unquote(rest[1]), unquote("/".join(rest[2:])).strip("/"), query)
            elif len(rest) == 2 and rest[0] == "paths-info" and method == "POST":
                self._paths_info(repo, unquote(rest[1]), body)
            else:
                raise _HubError(404, "Not Found")
            return

        if method == "POST":
            raise _HubError(405, "Method Not Allowed")
        repo = self._repo(f"{unquote(parts[0])}/{unquote(parts[1])}", token_ok)
        if repo.gated and not token_ok:
            raise _HubError(
                401,
                f"Access to model {repo.repo_id} is restricted. You must have access to it and be"
                " authenticated to access it. Please log in.",
                "GatedRepo",
            )
        self._resolve(repo, unquote(parts[3]), unquote("/".join(parts[4:])))

    def _injected_failure(self, status: int) -> _HubError:
        retry_after = str(self.hub.faults.retry_after)
        if status == 429:
            return _HubError(
                429,
                "You have exceeded our rate limit. Please retry later.",
                headers={
                    "Retry-After": retry_after,
                    "RateLimit": f'"api";r=0;t={retry_after}',
                    "RateLimit-Policy": '"fixed window";"api";q=500;w=300',
                },
            )
        if status == 503:
            return _HubError(503, "Service Unavailable", headers={"Retry-After": retry_after})
        return _HubError(status, f"Injected failure {status}")

    def _check_token(self) -> bool:
        """True with a valid token, False with none; an invalid one is refused outright."""
        auth = self.headers.get("Authorization")
        if auth is None:
            return False
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or token.strip() not in self.hub.valid_tokens:
            raise _HubError(401, "Invalid credentials in Authorization header")
        return True

    def _repo(self, repo_id: str, token_ok: bool) -> _Repo:
        repo = self.hub._repos.get(repo_id)
        if repo is None or (repo.private and not token_ok):
            raise _HubError(401, "Repository not found", "RepoNotFound")
        return repo

    def _commit(self, repo: _Repo, revision: str) -> _Commit:
        commit = repo.lookup(revision)
        if commit is None:
            raise _HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    # -- API routes

    def _model_info(self, repo: _Repo, revision: str, query: dict[str, list[str]]) -> None:
        commit = self._commit(repo, revision)
        blobs = query.get("blobs", ["false"])[-1].lower() in {"true", "1"}
        siblings: list[dict[str, Any]] = []
        for f in commit.files.values():
            sibling: dict[str, Any] = {"rfilename": f.path}
            if blobs:
                sibling["blobId"] = f.oid
                sibling["size"] = f.blob.size
                if f.lfs:
                    sibling["lfs"] = {
                        "sha256": f.blob.sha256,
                        "size": f.blob.size,
                        "pointerSize": f.pointer_size,
                    }
            siblings.append(sibling)
        owner = repo.repo_id.split("/", 1)[0]
        has_gguf = any(p.endswith(".gguf") for p in commit.files)
        tags = ["gguf", "region:us"] if has_gguf else ["region:us"]
        info: dict[str, Any] = {
            "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "author": owner,
            "sha": commit.sha,
            "lastModified": _LAST_MODIFIED,
            "createdAt": _LAST_MODIFIED,
            "private": repo.private,
            "gated": repo.gated,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": tags,
            "library_name": "gguf" if has_gguf else None,
            "cardData": {"tags": tags},
            "siblings": siblings,
            "spaces": [],
            "usedStorage": sum(f.blob.size for f in commit.files.values()),
        }
        expand = [v for key in ("expand", "expand[]") for v in query.get(key, [])]
        if expand:  # only the expanded properties, as the Hub does
            info = {k: v for k, v in info.items() if k in {"_id", "id", *expand}}
        self._send_json(200, info)

    def _tree(self, repo: _Repo, revision: str, path: str, query: dict[str, list[str]]) -> None:
        commit = self._commit(repo, revision)
        recursive = query.get("recursive", ["false"])[-1].lower() in {"true", "1"}
        expand = query.get("expand", ["false"])[-1].lower() in {"true", "1"}
        if path in commit.files:
            paths: list[str] = [path]
        else:
            listing = commit.listing(path, recursive)
            if listing is None:
                raise _HubError(
                    404,
                    f"{path} does not exist on {revision}",
                    "EntryNotFound",
                    {"X-Repo-Commit": commit.sha},
                )
            paths = listing
        cursor = query.get("cursor", [""])[-1]
        try:
            offset = int(base64.urlsafe_b64decode(cursor.encode()).decode()) if cursor else 0
        except ValueError:
            raise _HubError(400, "Invalid cursor") from None
        page_size = max(1, self.hub.tree_page_size)
        page = paths[offset : offset + page_size]
        headers: dict[str, str] = {}
        if offset + page_size < len(paths):
            next_query = {k: v[-1] for k, v in query.items() if k != "cursor"}
            next_query["cursor"] = base64.urlsafe_b64encode(
                str(offset + page_size).encode()
            ).decode()
            base_path = self.path.partition("?")[0]
            headers["Link"] = f'<{self._base_url()}{base_path}?{urlencode(next_query)}>; rel="next"'
        self._send_json(200, [commit.entry(p, expand) for p in page], headers)

    def _paths_info(self, repo: _Repo, revision: str, body: bytes) -> None:
        commit = self._commit(repo, revision)
        paths: list[str]
        expand_value: Any
        if (self.headers.get("Content-Type") or "").startswith("application/json"):
            try:
                payload = json.loads(body or b"{}")
            except ValueError:
                raise _HubError(400, "Invalid JSON body") from None
            raw = payload.get("paths", [])
            paths = [raw] if isinstance(raw, str) else [str(p) for p in raw]
            expand_value = payload.get("expand", False)
        else:
            form = parse_qs(body.decode(), keep_blank_values=True)
            paths = form.get("paths", [])
            expand_value = form.get("expand", ["false"])[-1]
        expand = expand_value is True or str(expand_value).lower() in {"true", "1"}
        entries = [e for p in paths if (e := commit.entry(p.strip("/"), expand)) is not None]
        self._send_json(200, entries)

    # -- file routes

    def _resolve(self, repo: _Repo, revision: str, path: str) -> None:
        commit = self._commit(repo, revision)
        f = commit.files.get(path)
        if f is None:
            raise _HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit.sha})
        headers = {"X-Repo-Commit": commit.sha, "Content-Disposition": _content_disposition(path)}
        if not f.lfs:
            headers["ETag"] = f'"{f.oid}"'
            self._serve_blob(f.blob, headers)
            return
        headers["ETag"] = f'"{f.blob.sha256}"'
        headers["X-Linked-Etag"] = f'"{f.blob.sha256}"'
        headers["X-Linked-Size"] = str(f.blob.size)
        if not self.hub.redirect_lfs:
            self._serve_blob(f.blob, headers)
            return
        location = self.hub._cdn_location(f.blob.sha256, commit.sha, path)
        del headers["Content-Disposition"]
        headers["Location"] = location
        headers["Content-Type"] = "text/plain; charset=utf-8"
        self._send_bytes(302, headers, f"Found. Redirecting to {location}".encode())

    def _cdn(self, sha256: str, query: dict[str, list[str]]) -> None:
        blob = self.hub._blobs.get(sha256)
        commit = query.get("commit", [""])[-1]
        filename = query.get("filename", [""])[-1]
        signature = query.get("sig", [""])[-1]
        if blob is None or not hmac.compare_digest(
            signature, self.hub._sign(sha256, commit, filename)
        ):
            raise _HubError(403, "Access Denied")
        headers = {
            "ETag": f'"{sha256}"',
            "Content-Disposition": _content_disposition(filename or sha256, "attachment"),
        }
        if commit:  # lets a same-host redirect chain end on a response that still names the commit
            headers["X-Repo-Commit"] = commit
        self._serve_blob(blob, headers)

    def _serve_blob(self, blob: _Blob, headers: dict[str, str]) -> None:
        faults = self.hub.faults
        hit = faults.hits(blob.sha256)
        headers = {**headers, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        size = blob.size
        start, end, status = 0, size, 200
        range_header = self.headers.get("Range")
        if range_header is not None and not (hit and faults.ignore_range):
            parsed = _parse_range(range_header, size)
            if parsed == "unsatisfiable":
                self._send_bytes(416, {**headers, "Content-Range": f"bytes */{size}"}, b"")
                return
            if parsed is not None:
                start, end = parsed
                status = 206
                headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        length = end - start
        headers["Content-Length"] = str(length)
        self._start(status, headers)
        if self._head or length == 0:
            return
        cut = faults.take_cut(length) if hit else None
        to_send = length if cut is None else cut
        wrong, rate = (faults.wrong_bytes, faults.bytes_per_second) if hit else (False, None)
        self._send_body(blob, start, to_send, wrong, rate)
        if cut is not None:
            log.debug("fake hub: cut %s after %d of %d bytes", self.path, cut, length)
            self.close_connection = True

    def _send_body(
        self, blob: _Blob, start: int, count: int, wrong: bool, rate: int | None
    ) -> None:
        if count <= 0:
            return
        if blob.path is not None and not wrong and rate is None:
            with blob.open() as f:
                sent = self.connection.sendfile(f, start, count)
            if sent != count:
                raise BrokenPipeError(f"sendfile sent {sent} of {count} bytes")
            return
        step = CHUNK if rate is None else max(1024, min(CHUNK, rate // 50))
        began = time.monotonic()
        sent = 0
        for chunk in self._chunks(blob, start, count, step):
            self.wfile.write(bytes(chunk).translate(_FLIP) if wrong else chunk)
            sent += len(chunk)
            if self.hub._stopping.is_set():
                raise ConnectionAbortedError("fake hub stopping")
            if rate is not None:
                delay = began + sent / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)

    @staticmethod
    def _chunks(blob: _Blob, start: int, count: int, step: int) -> Iterator[bytes | memoryview]:
        if blob.data is not None:
            view = memoryview(blob.data)
            for pos in range(start, start + count, step):
                yield view[pos : min(pos + step, start + count)]
            return
        with blob.open() as f:
            f.seek(start)
            left = count
            while left > 0:
                chunk = f.read(min(step, left))
                if not chunk:
                    raise OSError(f"{blob.path} is shorter than advertised")
                left -= len(chunk)
                yield chunk

    def _base_url(self) -> str:
        host = self.headers.get("Host")
        return f"http://{host}" if host else self.hub.url


# --------------------------------------------------------------------------- public API


class FakeHub:
    """A fake Hugging Face Hub. ``start()`` it, ``add_repo()`` files, point clients at ``url``."""

    def __init__(self, port: int = 0) -> None:
        self._port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._repos: dict[str, _Repo] = {}
        self._blobs: dict[str, _Blob] = {}  # LFS sha256 -> content, what the CDN serves
        self._secret = secrets.token_bytes(16)
        self.url = ""
        self.faults = Faults()
        self.requests: list[RequestRecord] = []
        self.valid_tokens: set[str] = {"hf_test_token"}
        self.redirect_lfs = True  # LFS files: 302 from resolve to /cdn-lfs/...
        # None: relative Location (same host). A host name such as "localhost": absolute
        # Location on that name, so clients treat the CDN as a foreign host (as on the real Hub).
        self.cdn_host: str | None = None
        self.tree_page_size = 1000  # tree entries per page before a Link: rel="next"

    # -- lifecycle

    def start(self) -> FakeHub:
        if self._server is not None:
            raise RuntimeError("FakeHub already started")
        self._stopping.clear()
        server = _Server(self, self._port)
        self._server = server
        host, port = server.server_address[:2]
        self.url = f"http://{host!s}:{port}"
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fakehub-{port}-server",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.close_connections()
        server.server_close()
        if thread is not None:
            thread.join(5)
        self._server = None
        self._thread = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[-1])

    # -- content

    def add_repo(
        self,
        repo_id: str,
        files: Mapping[str, bytes | Path],
        *,
        gated: bool | Literal["auto", "manual"] = False,
        private: bool = False,
        lfs_threshold: int = 1024,
        revision: str = "main",
        gitattributes: bool = True,
    ) -> str:
        """Create or update a repo; ``files`` become the whole tree of branch ``revision``.

        Files of ``lfs_threshold`` bytes or more, and ``.gguf`` files, are LFS files. Adds a
        ``.gitattributes`` like every real repo has unless ``gitattributes=False`` or ``files``
        has one. ``gated=True`` means "manual". Returns the new commit's 40-hex sha.
        """
        owner, sep, name = repo_id.partition("/")
        if not sep or not owner or not name or "/" in name:
            raise ValueError(f"repo_id must be 'owner/name', got {repo_id!r}")
        contents: dict[str, bytes | Path] = dict(files)
        if gitattributes and ".gitattributes" not in contents:
            contents[".gitattributes"] = _GITATTRIBUTES
        built: dict[str, _File] = {}
        for raw_path, content in sorted(contents.items()):
            path = raw_path.strip("/")
            if not path or any(part in {"", ".", ".."} for part in path.split("/")):
                raise ValueError(f"bad repo path {raw_path!r}")
            built[path] = self._make_file(path, content, lfs_threshold)
        dirs: dict[str, str] = {}
        for path in built:
            parts = path.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                listing = "\n".join(
                    f"{p} {f.oid}" for p, f in built.items() if p.startswith(d + "/")
                )
                dirs[d] = hashlib.sha1(f"tree {d}\n{listing}".encode()).hexdigest()
        manifest = "\n".join(f"{p} {f.oid}" for p, f in built.items())
        sha = hashlib.sha1(f"commit {repo_id}@{revision}\n{manifest}".encode()).hexdigest()
        gated_value: Literal[False, "auto", "manual"] = "manual" if gated is True else gated
        with self._lock:
            repo = self._repos.get(repo_id)
            if repo is None:
                repo = self._repos[repo_id] = _Repo(repo_id, private, gated_value)
            repo.private = private
            repo.gated = gated_value
            repo.commits[sha] = _Commit(sha, built, dirs)
            repo.branches[revision] = sha
            for f in built.values():
                if f.lfs:
                    self._blobs[f.blob.sha256] = f.blob
        return sha

    def commit_sha(self, repo_id: str, revision: str = "main") -> str:
        return self._repos[repo_id].branches[revision]

    def resolve_url(self, repo_id: str, path: str, revision: str = "main") -> str:
        return f"{self.url}/{repo_id}/resolve/{quote(revision, safe='')}/{quote(path)}"

    def clear_requests(self) -> None:
        with self._lock:
            self.requests.clear()

    def requests_for(self, path_fragment: str, method: str | None = None) -> list[RequestRecord]:
        """Logged requests whose decoded path contains ``path_fragment``."""
        with self._lock:
            records = list(self.requests)
        return [
            r for r in records if path_fragment in r.path and (method is None or r.method == method)
        ]

    # -- internals

    @staticmethod
    def _make_file(path: str, content: bytes | Path, lfs_threshold: int) -> _File:
        if isinstance(content, Path):
            size = content.stat().st_size
            lfs = size >= lfs_threshold or path.endswith(".gguf")
            with content.open("rb") as f:
                sha256 = hashlib.file_digest(f, "sha256").hexdigest()
            blob = _Blob(size=size, sha256=sha256, path=content)
            oid = "" if lfs else _git_blob_sha1_of_file(content, size)
        else:
            data = bytes(content)
            size = len(data)
            lfs = size >= lfs_threshold or path.endswith(".gguf")
            blob = _Blob(size=size, sha256=hashlib.sha256(data).hexdigest(), data=data)
            oid = "" if lfs else _git_blob_sha1(data)
        if lfs:
            pointer = _lfs_pointer(blob.sha256, size)
            return _File(path, blob, True, _git_blob_sha1(pointer), len(pointer))
        return _File(path, blob, False, oid, 0)

    def _sign(self, sha256: str, commit: str, filename: str) -> str:
        message = f"{sha256}\n{commit}\n{filename}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()[:32]

    def _cdn_location(self, sha256: str, commit: str, path: str) -> str:
        filename = path.rsplit("/", 1)[-1]
        query = urlencode(
            {"commit": commit, "filename": filename, "sig": self._sign(sha256, commit, filename)}
        )
        location = f"/cdn-lfs/{sha256}?{query}"
        if self.cdn_host is not None:
            location = f"http://{self.cdn_host}:{self.port}{location}"
        return location

    def _log_request(self, record: RequestRecord) -> None:
        with self._lock:
            self.requests.append(record)


# --------------------------------------------------------------------------- pytest plugin


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """A started FakeHub; ``HF_ENDPOINT`` points at it (read by subprocesses and by our code)."""
    hub = FakeHub().start()
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    try:
        yield hub
    finally:
        hub.stop()


# --------------------------------------------------------------------------- script


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.fakehub",
        description="Serve a fake Hugging Face Hub until killed.",
    )
    parser.add_argument(
        "--repo",
        action="append",
        default=[],
        metavar="OWNER/NAME=PATH",
        help="serve PATH (a file, or every file under a directory) in repo OWNER/NAME; repeatable",
    )
    parser.add_argument(
        "--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)"
    )
    parser.add_argument(
        "--no-redirect", action="store_true", help="serve LFS files from resolve directly"
    )
    parser.add_argument(
        "--gated", action="append", default=[], metavar="OWNER/NAME", help="mark a repo gated"
    )
    args = parser.parse_args(argv)

    files: dict[str, dict[str, bytes | Path]] = {}
    for spec in args.repo:
        repo_id, sep, raw = spec.partition("=")
        if not sep:
            parser.error(f"--repo wants OWNER/NAME=PATH, got {spec!r}")
        source = Path(raw).expanduser().resolve()
        repo_files = files.setdefault(repo_id, {})
        if source.is_dir():
            for p in sorted(source.rglob("*")):
                if p.is_file():
                    repo_files[p.relative_to(source).as_posix()] = p
        elif source.is_file():
            repo_files[source.name] = source
        else:
            parser.error(f"no such file or directory: {raw}")

    hub = FakeHub(port=args.port).start()
    hub.redirect_lfs = not args.no_redirect
    for repo_id, repo_files in files.items():
        hub.add_repo(repo_id, repo_files, gated=repo_id in args.gated)
    print(hub.url, flush=True)
    for repo_id, repo_files in files.items():
        for path in repo_files:
            print(f"  {hub.resolve_url(repo_id, path)}", flush=True)

    done = threading.Event()

    def _on_signal(signum: int, frame: object) -> None:
        done.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        while not done.wait(0.5):
            pass
    finally:
        hub.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
