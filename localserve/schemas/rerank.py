"""The rerank API's wire models: Jina's and Cohere's shape, as llama-server and vLLM serve it.

A request names the model, the ``query`` and the ``documents`` (strings, or objects
with a ``text``); ``top_n`` keeps the best that many (0 or absent: all), and
``return_documents`` (default true, as Jina's and vLLM's) puts each document's text
back into its result. The answer lists the documents best first, each with its
``index`` in the request and its ``relevance_score``: the model's own output, as
llama-server gives it (a logit for BERT-style rerankers; apply a sigmoid for 0..1).
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

from pydantic import Field

from localserve.runtime.protocol import RankResult
from localserve.schemas.base import Request, Response

# Cohere's documented ceiling; a longer list is most likely a client's mistake, and
# each document costs a model pass.
MAX_DOCUMENTS = 1000


class TextDocument(Request):
    """A document as an object (Jina, Cohere v1): only its text is read."""

    text: str


class RerankRequest(Request):
    model: str = Field(min_length=1)
    query: str = Field(min_length=1)
    documents: list[str | TextDocument] = Field(min_length=1, max_length=MAX_DOCUMENTS)
    top_n: int | None = Field(default=None, ge=0)
    return_documents: bool = True
    options: dict[str, Any] | None = None
    keep_alive: str | float | int | None = None

    def texts(self) -> list[str]:
        return [d if isinstance(d, str) else d.text for d in self.documents]


class RerankDocument(Response):
    text: str


class RerankResult(Response):
    index: int
    relevance_score: float
    document: RerankDocument | None = None


class RerankUsage(Response):
    prompt_tokens: int
    total_tokens: int


class RerankResponse(Response):
    id: str
    object: Literal["list"] = "list"
    model: str
    results: list[RerankResult]
    usage: RerankUsage

    @classmethod
    def of(cls, request: RerankRequest, ranked: RankResult) -> RerankResponse:
        """The documents best first (ties in the request's order), cut to ``top_n``."""
        texts = request.texts()
        order = sorted(range(len(texts)), key=lambda i: -ranked.scores[i])
        if request.top_n:
            order = order[: request.top_n]
        results = [
            RerankResult(
                index=i,
                relevance_score=ranked.scores[i],
                document=RerankDocument(text=texts[i]) if request.return_documents else None,
            )
            for i in order
        ]
        tokens = ranked.prompt_eval_count
        return cls(
            id=f"rerank-{uuid.uuid4().hex}",
            model=request.model,
            results=results,
            usage=RerankUsage(prompt_tokens=tokens, total_tokens=tokens),
        )
