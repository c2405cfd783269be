"""POST /v1/rerank: documents scored against a query by a reranker model.

Served at every path llama-server serves it at (``/rerank``, ``/reranking``,
``/v1/rerank``, ``/v1/reranking``) and at Cohere's v2 path (``/v2/rerank``), so that a
client configured for llama-server, vLLM, Jina or Cohere finds it. Errors take the shape of the path (OpenAI's on /v1). A model
that cannot rank (no rank pooling, no classification head) is refused before it loads.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request

from localserve.errors import InvalidOptionError
from localserve.schemas.base import keep_alive_seconds
from localserve.schemas.rerank import RerankRequest, RerankResponse
from localserve.server.errors import OPENAI_ERRORS
from localserve.server.models import capabilities
from localserve.server.routes.deps import model_request, scheduler, store

router = APIRouter()


async def check_can_rank(request: Request, name: str) -> None:
    """A 404 for a model that is not there, a 400 for one that cannot rank."""
    _, manifest = await asyncio.to_thread(store(request).get, name)
    can = await asyncio.to_thread(capabilities, request.app, manifest)
    if "rerank" not in can:
        raise InvalidOptionError(
            f"model {name} does not support reranking",
            hint="use a reranker model (a GGUF with rank pooling, e.g. bge-reranker)",
        )


@router.post("/v1/rerank", response_model=RerankResponse, responses=OPENAI_ERRORS)
@router.post("/v1/reranking", response_model=RerankResponse, include_in_schema=False)
@router.post("/rerank", response_model=RerankResponse, include_in_schema=False)
@router.post("/reranking", response_model=RerankResponse, include_in_schema=False)
@router.post("/v2/rerank", response_model=RerankResponse, include_in_schema=False)
async def rerank(body: RerankRequest, request: Request) -> RerankResponse:
    model, _ = model_request(request, body.model, body.options, keep_alive_seconds(body.keep_alive))
    await check_can_rank(request, body.model)
    ranked = await scheduler(request).rank(model, body.query, body.texts())
    return RerankResponse.of(body, ranked)
