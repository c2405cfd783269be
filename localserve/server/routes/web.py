"""The web chat page: static files from ``localserve/server/web/``, served by the daemon.

``GET /`` answers a browser (``Accept: text/html``) with ``index.html``; every other
client keeps the plain ``localserve is running`` (ops.py asks ``wants_page``). The
page's scripts and styles are at ``/web/{name}``. There is no build step: the files
are read as they are, once, from the package (pyproject.toml declares them as
package data, so a wheel install has them).

Every answer here carries a Content-Security-Policy that allows this origin only and
no inline script, so even a rendering bug cannot run what a model wrote, plus
``nosniff`` and a framing ban. The files are public (no API key needed: they hold
nothing secret); the API calls the page makes are guarded as any other client's.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from localserve.server.errors import OLLAMA_ERRORS

router = APIRouter(responses=OLLAMA_ERRORS)

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    # Revalidate every time (the files change with an upgrade), but a 304 is cheap.
    "Cache-Control": "no-cache",
}
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
# Only plain names of the kinds above: nothing can name a path outside the folder.
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*\.(html|js|css)$")

ASSET: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "A file of the web page",
        "content": {
            kind.split(";")[0]: {"schema": {"type": "string"}} for kind in MEDIA_TYPES.values()
        },
    },
    304: {"description": "Not modified (If-None-Match matched the ETag)"},
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str
    etag: str


@functools.cache
def assets() -> dict[str, Asset]:
    """The page's files by name, read once (they are part of the installed package)."""
    folder = resources.files("localserve.server") / "web"
    found = {}
    for entry in folder.iterdir():
        if not _NAME.match(entry.name):
            continue
        body = entry.read_bytes()
        suffix = entry.name[entry.name.rindex(".") :]
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        found[entry.name] = Asset(body, MEDIA_TYPES[suffix], etag)
    return found


def wants_page(request: Request) -> bool:
    """A browser navigating to the daemon asks for HTML first; scripts send */* or nothing."""
    return "text/html" in request.headers.get("accept", "").lower()


def serve(request: Request, name: str) -> Response:
    asset = assets().get(name) if _NAME.match(name) else None
    if asset is None:
        raise HTTPException(404, "no such file in the web page")
    headers = {**HEADERS, "ETag": asset.etag}
    if asset.etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.media_type, headers=headers)


@router.get("/web/{name}", response_model=None, responses=ASSET)
async def web_file(name: str, request: Request) -> Response:
    """A script or style sheet of the chat page that ``GET /`` gives a browser."""
    return serve(request, name)
