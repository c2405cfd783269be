"""Security defaults of the daemon (docs/security.md explains the threats).

- API key: with ``LOCALSERVE_API_KEY`` set, every route but ``/``, ``/health`` and the
  chat page's files (``/web/...``) needs ``Authorization: Bearer KEY`` or, as Anthropic's
  clients send it, ``x-api-key: KEY`` (compared in constant time, never logged).
  Binding anything but loopback without a key is refused at start (cli/serve.py).
- DNS rebinding: on a loopback bind, a ``Host`` header that is not localhost, an IP
  literal or this machine's name gets 403, so a web page whose domain was re-pointed
  at 127.0.0.1 cannot talk to the daemon.
- Browsers: CORS answers only localhost origins plus ``LOCALSERVE_ORIGINS``; a
  state-changing request that a browser sends from any other origin (a form post,
  a ``text/plain`` fetch that skips preflight) gets 403, unless the origin is the
  daemon's own (the chat page, opened by its host name). Scripts and curl send no
  Origin and are unaffected, so ``curl -d '{...}'`` keeps working as with Ollama.
- Bodies: at most MAX_BODY bytes (413), counted as they arrive.
- Paths: no control characters (400), percent-encoded or not.
- Metrics: each response is counted by route and status.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import re
import socket
from typing import TYPE_CHECKING, Any

from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from localserve.config import Settings, is_loopback
from localserve.server.errors import error_body

if TYPE_CHECKING:
    from fastapi import FastAPI

MAX_BODY = 32 << 20  # 32 MiB: a long chat, or a few phone photos as base64
PUBLIC_PATHS = {"/", "/health"}
PUBLIC_PREFIX = "/web/"  # the chat page's scripts and styles: nothing secret in them
LOCAL_ORIGIN = r"^https?://(localhost|127\.0\.0\.1|\[::1\])(:\d+)?$"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def install(app: FastAPI, settings: Settings) -> None:
    origins = list(settings.origins)
    app.add_middleware(Guard, settings=settings, origins=origins)
    # Added last, so it runs first: preflight requests are answered before the guard.
    app.add_middleware(
        CORSMiddleware,
        allow_origin_regex=LOCAL_ORIGIN,
        allow_origins=origins,
        allow_methods=["GET", "POST", "DELETE", "HEAD", "OPTIONS"],
        allow_headers=["Authorization", "Content-Type"],
    )


class Guard:
    """Pure ASGI middleware (streams pass through untouched)."""

    def __init__(self, app: ASGIApp, *, settings: Settings, origins: list[str]) -> None:
        self.app = app
        key = settings.api_key.get_secret_value() if settings.api_key else ""
        self.expected = f"Bearer {key}".encode() if key else b""
        self.key = key.encode()
        bind_host, _ = settings.bind
        self.check_host = is_loopback(bind_host)
        names = {"localhost", socket.gethostname().lower()}
        self.allowed_hosts = {n for n in names if n}
        self.origins = set(origins)
        self.local_origin = re.compile(LOCAL_ORIGIN)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v for k, v in scope["headers"]}
        path = scope["path"]
        problem = self._refuse(scope, headers)
        if problem is not None:
            status, message = problem
            await self._respond(send, path, status, message)
            await self._count(scope, status)
            return

        received = 0
        # A blob upload is a GGUF, gigabytes: written to disk as it arrives, never held.
        uploading = path.startswith("/api/blobs/")

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > MAX_BODY and not uploading:
                    # Becomes a 413 through the app's HTTP exception handler.
                    raise HTTPException(413, f"request body over {MAX_BODY >> 20} MiB")
            return message

        status_seen = 500

        async def counted_send(message: Message) -> None:
            nonlocal status_seen
            if message["type"] == "http.response.start":
                status_seen = int(message["status"])
            await send(message)

        if scope["method"] in ("POST", "DELETE") and b"origin" not in headers:
            # `curl -d '{...}'` labels its JSON as a form; Ollama accepts that, and so do
            # we. Only for non-browser clients: a browser always sends Origin here.
            kind = headers.get("content-type", b"").split(b";")[0].strip().lower()
            if kind == b"application/x-www-form-urlencoded":
                scope = {
                    **scope,
                    "headers": [
                        (k, b"application/json" if k.lower() == b"content-type" else v)
                        for k, v in scope["headers"]
                    ],
                }
        length = headers.get("content-length", b"0")
        if length.isdigit() and int(length) > MAX_BODY and not uploading:
            await self._respond(send, path, 413, f"request body over {MAX_BODY >> 20} MiB")
            await self._count(scope, 413)
            return
        await self.app(scope, counted_receive, counted_send)
        await self._count(scope, status_seen)

    def _refuse(self, scope: Scope, headers: dict[str, bytes]) -> tuple[int, str] | None:
        path = scope["path"]
        if _CONTROL.search(path):
            # Routes match with Python's `$`, which also matches before a final newline:
            # /v1/models/tiny%0A would otherwise answer for "tiny".
            return 400, "control characters in the URL path"
        host = headers.get("host", b"").decode("latin-1").lower()
        if self.check_host:
            name = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
            if not (name in self.allowed_hosts or _is_ip(name)):
                return 403, "forbidden host header"
        origin = headers.get("origin", b"").decode("latin-1")
        if (
            origin
            and scope["method"] not in SAFE_METHODS
            and not self._origin_allowed(origin, host)
        ):
            return 403, f"origin {origin} is not allowed"
        public = path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIX)
        if self.expected and not public and scope["method"] != "OPTIONS":
            bearer = hmac.compare_digest(headers.get("authorization", b""), self.expected)
            api_key = hmac.compare_digest(headers.get("x-api-key", b""), self.key)
            if not (bearer or api_key):
                return 401, "missing or invalid API key"
        return None

    def _origin_allowed(self, origin: str, host: str) -> bool:
        return (
            origin in self.origins
            or bool(self.local_origin.match(origin))
            or _same_origin(origin, host)
        )

    async def _respond(self, send: Send, path: str, status: int, message: str) -> None:
        body = json.dumps(error_body(path, status, message)).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _count(self, scope: Scope, status: int) -> None:
        app: Any = scope.get("app")
        metrics = getattr(getattr(app, "state", None), "metrics", None)
        if metrics is None:
            return
        route = scope.get("route")
        label = getattr(route, "path", None) or "unmatched"
        metrics.requests.labels(route=label, status=str(status)).inc()


def _same_origin(origin: str, host: str) -> bool:
    """Whether a browser sent this request from a page the daemon itself served (the
    chat page opened as http://yourhost:11435/): the Origin names the Host the request
    was sent to. Not a cross-site request, so no CSRF; a rebound domain is refused by
    the Host check, and beyond loopback the API key is required anyway. The scheme is
    not compared: behind a TLS proxy the page is https and the daemon sees http.
    ``host``: the Host header, lowercased."""
    _, separator, authority = origin.partition("://")
    return bool(separator and host) and authority.lower() == host


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True
