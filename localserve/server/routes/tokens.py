"""Tokens and templates: llama-server's ``/tokenize``, ``/detokenize`` and
``/apply-template``, and Ollama-style ``/api/tokenize`` and ``/api/detokenize``.

Each is answered by the model's runner between engine steps, without a generation
slot (engine/tokens.py says why there and not in the daemon); a model that is not
loaded is loaded as for a chat. ``/apply-template`` builds its job exactly as
``/v1/chat/completions`` does (the request's ``to_job``, then the model's Modelfile
settings and capability checks), and the runner renders it with the code that renders
the chat's prompt, so the two cannot disagree. Bodies and answers: schemas/tokens.py.
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from localserve.errors import InvalidOptionError
from localserve.scheduler.scheduler import ModelRequest
from localserve.schemas.base import keep_alive_seconds
from localserve.schemas.tokens import (
    ApplyTemplateRequest,
    ApplyTemplateResponse,
    DetokenizeRequest,
    DetokenizeResponse,
    ModelFields,
    OllamaDetokenizeRequest,
    OllamaDetokenizeResponse,
    OllamaTokenizeRequest,
    OllamaTokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
)
from localserve.server.errors import OLLAMA_ERRORS
from localserve.server.routes.deps import model_request, prepared, scheduler

router = APIRouter(responses=OLLAMA_ERRORS)


def _name(request: Request, given: str | None) -> str:
    """The model a llama-server-shaped body asks for: its ``model``, else the one model
    loaded (llama-server's bodies name none)."""
    name = given or scheduler(request).only_loaded()
    if name is None:
        raise InvalidOptionError(
            "model is required: name the model (with none given, the one loaded model "
            "is used, and none or several are loaded now)"
        )
    return name


def _model(request: Request, body: ModelFields) -> ModelRequest:
    name = _name(request, body.model)
    model, _ = model_request(request, name, body.options, keep_alive_seconds(body.keep_alive))
    return model


@router.post("/tokenize", response_model=TokenizeResponse)
async def tokenize(body: TokenizeRequest, request: Request) -> TokenizeResponse:
    model = _model(request, body)
    return TokenizeResponse.of(await scheduler(request).tokenize(model, body.to_job()))


@router.post("/detokenize", response_model=DetokenizeResponse)
async def detokenize(body: DetokenizeRequest, request: Request) -> DetokenizeResponse:
    model = _model(request, body)
    result = await scheduler(request).detokenize(model, body.to_job())
    return DetokenizeResponse(content=result.content)


@router.post("/apply-template", response_model=ApplyTemplateResponse)
async def apply_template(body: ApplyTemplateRequest, request: Request) -> ApplyTemplateResponse:
    # As /v1/chat/completions builds its job (routes/openai.py), less the generation.
    name = _name(request, body.model)
    limit = (
        body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    )
    model, sampling = model_request(
        request, name, body.options, keep_alive_seconds(body.keep_alive), body.overrides(limit)
    )
    job = await prepared(request, name, body.to_job(sampling))
    return ApplyTemplateResponse(prompt=await scheduler(request).render(model, job))


@router.post("/api/tokenize", response_model=OllamaTokenizeResponse)
async def ollama_tokenize(body: OllamaTokenizeRequest, request: Request) -> OllamaTokenizeResponse:
    model, _ = model_request(request, body.model, body.options, keep_alive_seconds(body.keep_alive))
    result = await scheduler(request).tokenize(model, body.to_job())
    return OllamaTokenizeResponse(model=body.model, tokens=result.tokens)


@router.post("/api/detokenize", response_model=OllamaDetokenizeResponse)
async def ollama_detokenize(
    body: OllamaDetokenizeRequest, request: Request
) -> OllamaDetokenizeResponse:
    model, _ = model_request(request, body.model, body.options, keep_alive_seconds(body.keep_alive))
    result = await scheduler(request).detokenize(model, body.to_job())
    return OllamaDetokenizeResponse(model=body.model, content=result.content)
