"""The server's one error edge: exceptions to HTTP statuses and JSON bodies.

Ollama routes answer ``{"error": "..."}``; /v1 routes answer OpenAI's shape
``{"error": {"message", "type", "param", "code"}}``, but Anthropic's (/v1/messages),
which answer ``{"type": "error", "error": {"type", "message"}}`` with Anthropic's types,
and 529 ``overloaded_error`` for a full queue. Once a stream has started the status is
already sent, so streams report errors as a last line instead (see streaming.py); these
handlers cover everything before that.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from localserve import errors as e

log = logging.getLogger("localserve.server")

# Most specific first.
STATUS: tuple[tuple[type[BaseException], int], ...] = (
    (e.ModelNotFoundError, 404),
    (e.ResponseNotFoundError, 404),
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
    # The stored file no longer matches what was verified: the request is fine, the
    # store is not, and the message says how to repair it.
    (e.DamagedModelError, 409),
    (e.LocalserveError, 500),
)


class OllamaError(BaseModel):
    """The error body of every route outside /v1."""

    error: str


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIError(BaseModel):
    """The error body of /v1 routes, as OpenAI answers."""

    error: OpenAIErrorDetail


class AnthropicErrorDetail(BaseModel):
    type: str
    message: str


class AnthropicError(BaseModel):
    """The error body of Anthropic's routes (/v1/messages...)."""

    type: str = "error"
    error: AnthropicErrorDetail


def documented_errors(model: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    """The error responses of a router, for its OpenAPI schema: 400 for bad input, and
    every other status (401, 403, 404, 413, 500, 503...) with the same body."""
    return {
        400: {"model": model, "description": "Invalid JSON, fields, options or model name"},
        "default": {"model": model, "description": "An error (docs/api.md lists the statuses)"},
    }


OLLAMA_ERRORS = documented_errors(OllamaError)
OPENAI_ERRORS = documented_errors(OpenAIError)
ANTHROPIC_ERRORS = documented_errors(AnthropicError)

# Anthropic's error types by status; other 4xx are invalid requests, other 5xx api errors.
ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
# Anthropic's status for "too busy now, retry", where Ollama and OpenAI say 503.
OVERLOADED = 529


def is_anthropic(path: str) -> bool:
    return path == "/v1/messages" or path.startswith("/v1/messages/")


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


def anthropic_type(status: int) -> str:
    return ANTHROPIC_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")


def error_body(
    path: str, status: int, message: str, *, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    if is_anthropic(path):
        return {"type": "error", "error": {"type": anthropic_type(status), "message": message}}
    if path.startswith("/v1"):
        return {
            "error": {
                "message": message,
                "type": openai_type(status),
                "param": param,
                "code": code,
            }
        }
    return {"error": message}


def body_of(path: str, exc: BaseException) -> tuple[int, dict[str, Any]]:
    """The status and JSON body of an exception on the route at ``path``.

    A prompt longer than the context is said in each API's own words, because that is
    what coding agents look for before they compact a conversation and retry: OpenAI's
    ``context_length_exceeded`` code and message on /v1; both numbers everywhere.
    """
    status = status_of(exc)
    if is_anthropic(path):
        return _anthropic_body(path, status, exc)
    if path.startswith("/v1") and isinstance(exc, e.PromptTooLongError) and exc.limit:
        what = (
            "messages"
            if path.startswith("/v1/chat")
            else "input"
            if path.startswith(("/v1/embeddings", "/v1/responses"))
            else "prompt"
        )
        message = (
            f"This model's maximum context length is {exc.limit} tokens. However, your "
            f"{what} resulted in {exc.tokens} tokens. Please reduce the length of the {what}."
        )
        return status, error_body(path, status, message, code="context_length_exceeded", param=what)
    return status, error_body(path, status, message_of(exc))


def _anthropic_body(path: str, status: int, exc: BaseException) -> tuple[int, dict[str, Any]]:
    """Anthropic's words: Claude Code compacts its conversation on "prompt is too long";
    an unknown model is the name an agent was configured with, so the message says how
    to make it a local one."""
    if isinstance(exc, e.ServerBusyError):
        status = OVERLOADED
    if isinstance(exc, e.PromptTooLongError) and exc.limit:
        message = f"prompt is too long: {exc.tokens} tokens > {exc.limit} maximum"
    elif isinstance(exc, e.ModelNotFoundError):
        name = exc.name.removesuffix(":latest")
        message = (
            f'model "{name}" not found: pull it (localserve pull), give a stored model '
            f"that name (localserve cp MODEL {name}), or name a stored model in the "
            "client (Claude Code: ANTHROPIC_MODEL, ANTHROPIC_SMALL_FAST_MODEL)"
        )
    else:
        message = message_of(exc)
    return status, error_body(path, status, message)


# Sent with error 503s and 529s (a full queue, a daemon stopping): a slot usually frees
# within a second. Ollama sends none; clients that honour it back off instead of hammering.
RETRY_AFTER_SECONDS = 1
RETRY_STATUSES = (503, OVERLOADED)


def error_response(request: Request, status: int, message: str) -> JSONResponse:
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if status in RETRY_STATUSES else None
    return JSONResponse(
        error_body(request.url.path, status, message), status_code=status, headers=headers
    )


def install(app: FastAPI) -> None:
    @app.exception_handler(e.LocalserveError)
    async def localserve_error(request: Request, exc: e.LocalserveError) -> JSONResponse:
        status, body = body_of(request.url.path, exc)
        # A damaged store is the operator's business too, whatever the status says.
        if status >= 500 or isinstance(exc, e.DamagedModelError):
            log.error("%s %s: %s", request.method, request.url.path, exc)
        headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if status in RETRY_STATUSES else None
        return JSONResponse(body, status_code=status, headers=headers)

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


# Where pydantic names the member of a union it tried (``keep_alive.str``), not a field.
_UNION_MEMBER = re.compile(r"^(str|int|float|bool|none|list\[.*|dict\[.*|literal\[.*|.*-.*\[.*)$")


def describe_validation(problems: Any) -> str:
    """One line for a pydantic/FastAPI validation failure: the first problem and where."""
    if not problems:
        return "invalid request"
    first = problems[0]
    loc = tuple(first.get("loc", ()))
    kind = first.get("type", "")
    if kind == "json_invalid":
        return "invalid JSON in the request body"
    if loc == ("body",):
        if kind == "missing":
            return "the request body is empty: send a JSON object"
        if isinstance(first.get("input"), bytes):
            # FastAPI leaves a body without a JSON Content-Type unparsed.
            return "the request body must be JSON, sent with Content-Type: application/json"
        if kind in ("model_attributes_type", "model_type", "dict_type"):
            return "the request body must be a JSON object"
    # A value that matches no member of a union: one error per member, same place.
    if len(loc) > 1 and isinstance(loc[-1], str) and _UNION_MEMBER.match(loc[-1]):
        members = [p for p in problems if tuple(p.get("loc", ()))[:-1] == loc[:-1]]
        if len(members) > 1:
            loc = loc[:-1]
            expected = [str(p.get("msg", "")).removeprefix("Input should be ") for p in members]
            first = {**first, "msg": "Input should be " + " or ".join(expected)}
    where = ".".join(str(p) for p in loc if p != "body")
    if kind == "missing":
        return f"missing field {where!r}"
    message = str(first.get("msg", "invalid value"))
    return f"{where}: {message}" if where else message
