"""The server's one error edge: exceptions to HTTP statuses and JSON bodies.

Ollama routes answer ``{"error": "..."}``; /v1 routes answer OpenAI's shape
``{"error": {"message", "type", "param", "code"}}``. Once a stream has started the
status is already sent, so streams report errors as a last line instead (see
streaming.py); these handlers cover everything before that.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from localserve import errors as e

log = logging.getLogger("localserve.server")

# Most specific first.
STATUS: tuple[tuple[type[BaseException], int], ...] = (
    (e.ModelNotFoundError, 404),
    (e.RepoNotFoundError, 404),
    (e.RevisionNotFoundError, 404),
    (e.NoSuchFileError, 404),
    (e.GatedRepoError, 403),
    (e.InvalidReferenceError, 400),
    (e.InvalidOptionError, 400),
    (e.TemplateError, 400),
    (e.PromptTooLongError, 400),
    (e.ServerBusyError, 503),
    (e.HubUnavailableError, 502),
    (e.DownloadInterruptedError, 502),
    (e.DiskFullError, 507),
    (e.InvalidGGUFError, 422),
    (e.LocalserveError, 500),
)


def status_of(exc: BaseException) -> int:
    for kind, status in STATUS:
        if isinstance(exc, kind):
            return status
    return 500


def message_of(exc: BaseException) -> str:
    if isinstance(exc, e.ModelNotFoundError):
        return f'model "{exc.name}" not found, try pulling it first'
    if isinstance(exc, e.LocalserveError):
        return exc.message
    return "internal error"


def openai_type(status: int) -> str:
    if status == 404:
        return "not_found_error"
    if status in (401, 403):
        return "authentication_error" if status == 401 else "permission_error"
    if status < 500:
        return "invalid_request_error"
    return "api_error"


def error_body(path: str, status: int, message: str) -> dict[str, Any]:
    if path.startswith("/v1"):
        return {
            "error": {"message": message, "type": openai_type(status), "param": None, "code": None}
        }
    return {"error": message}


def error_response(request: Request, status: int, message: str) -> JSONResponse:
    return JSONResponse(error_body(request.url.path, status, message), status_code=status)


def install(app: FastAPI) -> None:
    @app.exception_handler(e.LocalserveError)
    async def localserve_error(request: Request, exc: e.LocalserveError) -> JSONResponse:
        status = status_of(exc)
        if status >= 500:
            log.error("%s %s: %s", request.method, request.url.path, exc)
        return error_response(request, status, message_of(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(request, 400, describe_validation(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(request, exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return error_response(request, 500, f"internal error: {type(exc).__name__}")


def describe_validation(problems: Any) -> str:
    """One line for a pydantic/FastAPI validation failure: the first problem and where."""
    if not problems:
        return "invalid request"
    first = problems[0]
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    kind = first.get("type", "")
    if kind == "json_invalid":
        return "invalid JSON in the request body"
    if kind == "missing":
        return f"missing field {where!r}"
    message = str(first.get("msg", "invalid value"))
    return f"{where}: {message}" if where else message
