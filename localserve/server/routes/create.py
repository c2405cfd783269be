"""Ollama's model-making routes: ``/api/create`` and the blob uploads it refers to.

``POST /api/blobs/sha256:<hex>`` streams a file into the store (hashed as it arrives,
refused unless the bytes match the name); ``HEAD`` says whether the store has it.
``POST /api/create`` makes a model as ``localserve create`` does from a Modelfile:
from a stored model (``from``) or uploaded GGUF blobs (``files``), with adapters,
template, system prompt, parameters, example messages and licence, streaming status
lines. Checks that need no store (parameters, template syntax, roles) are 400s
before anything is written; create.py leaves nothing behind when a later step fails.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from functools import partial
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from localserve.errors import InvalidOptionError, InvalidReferenceError
from localserve.schemas.ollama import CreateRequest, ProgressResponse
from localserve.server.errors import OLLAMA_ERRORS
from localserve.server.routes.deps import store
from localserve.server.routes.native import streamed
from localserve.server.streaming import first_then_rest, iterate_in_thread, ndjson
from localserve.store.modelfile import (
    Adapter,
    ModelSpec,
    add_parameter,
    check_message,
    check_template,
)
from localserve.store.refs import parse_digest

router = APIRouter(responses=OLLAMA_ERRORS)


def _digest(value: str) -> str:
    try:
        return parse_digest(value.removeprefix("sha256:").removeprefix("sha256-"))
    except (InvalidReferenceError, ValueError):
        raise InvalidOptionError(f"{value!r} is not a sha256:<64 hex> digest") from None


@router.head("/api/blobs/{digest}")
async def has_blob(digest: str, request: Request) -> Response:
    found = await asyncio.to_thread(store(request).has_blob, _digest(digest))
    return Response(status_code=200 if found else 404)


@router.post("/api/blobs/{digest}", status_code=201)
async def upload_blob(digest: str, request: Request) -> Response:
    """The body becomes blob ``digest`` if its sha256 is that (no size limit but the
    disk's: GGUFs are gigabytes; the body is written as it arrives, never held)."""
    expected = _digest(digest)
    models = store(request)
    if await asyncio.to_thread(models.has_blob, expected):
        return Response(status_code=200)
    await asyncio.to_thread(models.ensure_dirs)
    staged = models.partial_dir / f"upload-{uuid.uuid4().hex}.partial"
    sha = hashlib.sha256()
    try:
        with open(staged, "wb") as out:
            async for chunk in request.stream():
                sha.update(chunk)
                await asyncio.to_thread(out.write, chunk)
        if sha.hexdigest() != expected:
            raise InvalidOptionError(
                f"the uploaded bytes have sha256 {sha.hexdigest()}, not {expected}"
            )
        await asyncio.to_thread(models.commit_blob, staged, expected)
    finally:
        staged.unlink(missing_ok=True)
    return Response(status_code=201)


def spec_of(body: CreateRequest, request: Request) -> ModelSpec:
    """The request as a Modelfile would say it, checked the way a Modelfile is."""
    if body.quantize:
        raise InvalidOptionError("quantize is not supported: pull or import the quantization")
    models = store(request)
    spec = ModelSpec()
    if body.from_:
        spec.base = body.from_
    elif body.files:
        if len(body.files) != 1:
            raise InvalidOptionError("files must name one GGUF (split models: import them)")
        ((_, digest),) = body.files.items()
        spec.base = str(_uploaded(models, digest))
    else:
        raise InvalidOptionError('create needs "from" (a model) or "files" (an uploaded GGUF)')
    for key, value in (body.parameters or {}).items():
        add_parameter(spec.parameters, key.lower(), value, f"parameters.{key}")
    if body.template is not None:
        spec.template = check_template(body.template, "template")
    spec.system = body.system
    for index, message in enumerate(body.messages or []):
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or not isinstance(content, str):
            raise InvalidOptionError(f"messages[{index}] needs a role and a string content")
        spec.messages.append(check_message(role, content, f"messages[{index}]"))
    for digest in (body.adapters or {}).values():
        spec.adapters.append(Adapter(str(_uploaded(models, digest))))
    if body.license is not None:
        spec.license = body.license if isinstance(body.license, str) else "\n".join(body.license)
    return spec


def _uploaded(models: Any, digest: str) -> Any:
    hex_digest = _digest(digest)
    if not models.has_blob(hex_digest):
        raise InvalidOptionError(
            f"blob sha256:{hex_digest} is not in the store: upload it first "
            "with POST /api/blobs/sha256:<hex>"
        )
    return models.blob_path(hex_digest)


@router.post("/api/create", response_model=None, responses=streamed(ProgressResponse))
async def create(body: CreateRequest, request: Request) -> Response:
    from localserve.store.create import create_model
    from localserve.store.pull import pull_model
    from localserve.store.refs import parse_ref

    parse_ref(body.model)
    models = store(request)
    spec = await asyncio.to_thread(spec_of, body, request)
    events = create_model(
        models, body.model, spec, folder=models.root, pull=partial(pull_model, models)
    )

    chunks = (
        ProgressResponse.of(e.status, e.digest, e.total, e.completed)
        async for e in iterate_in_thread(events)
    )
    if body.stream:
        # The base and the adapters are checked before the first status line: an
        # unknown base or a mismatched adapter is a 4xx, not an error after a 200.
        _, rest = await first_then_rest(chunks)
        return ndjson(rest, request.url.path)
    async for _ in chunks:
        pass
    return JSONResponse(ProgressResponse(status="success").model_dump())
