"""Operations: the root ping (or, for a browser, the chat page: routes/web.py), /health,
Prometheus /metrics. (/openapi.json and /docs come from FastAPI.)"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from localserve.server.errors import OLLAMA_ERRORS
from localserve.server.metrics import CONTENT_TYPE
from localserve.server.routes import web

router = APIRouter(responses=OLLAMA_ERRORS)
# Documented by hand: response_class=PlainTextResponse would document the errors as text too.
TEXT: dict[int | str, dict[str, Any]] = {
    200: {"description": "Plain text", "content": {"text/plain": {"schema": {"type": "string"}}}}
}


ROOT: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Plain text; the chat page for a browser (Accept: text/html)",
        "content": {kind: {"schema": {"type": "string"}} for kind in ("text/plain", "text/html")},
    }
}


@router.get("/", response_model=None, responses=ROOT)
async def root(request: Request) -> Response:
    if web.wants_page(request):
        return web.serve(request, "index.html")
    return PlainTextResponse("localserve is running")


@router.head("/", include_in_schema=False)
async def root_head() -> Response:
    return PlainTextResponse("localserve is running")


@router.get(
    "/health",
    responses={503: {"description": "A model is loading (the same body, status loading)"}},
)
async def health(request: Request) -> JSONResponse:
    """200 when ready; 503 while a model is loading (as llama.cpp's server answers)."""
    scheduler = request.app.state.scheduler
    body = {
        "status": "loading" if scheduler.loading else "ok",
        "models_loaded": len(scheduler.running()),
        "busy_slots": scheduler.busy_slots(),
        "queue_depth": scheduler.waiting(),
    }
    return JSONResponse(body, status_code=503 if scheduler.loading else 200)


@router.get("/metrics", response_model=None, responses=TEXT)
async def metrics(request: Request) -> Response:
    """Prometheus text format."""
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE)
