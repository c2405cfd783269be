"""The rerank routes in-process (create_app over the scripted fake runner, which scores
a document by its length): the order, top_n, return_documents, the paths it answers
at and the refusals, exact and with no model. Real scores are in
tests/engine/test_rerank.py and tests/e2e/test_rerank.py."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from localserve.config import load_settings
from localserve.server.app import create_app
from localserve.store.importing import import_gguf
from localserve.store.store import ModelStore
from tests.support.fake_runner import FakeFactory
from tests.support.tiny_gguf import write_tiny_gguf
from tests.support.tiny_reranker import write_tiny_reranker

DOCUMENTS = ["bb", "a", "dddd", {"text": "ccc"}]


@pytest.fixture
def models(isolated_home: Path, tmp_path: Path) -> None:
    store = ModelStore(isolated_home / "models")
    for name, path in (
        ("ranker", write_tiny_reranker(tmp_path / "ranker.gguf")),
        ("tiny", write_tiny_gguf(tmp_path / "tiny.gguf")),
    ):
        for _ in import_gguf(store, path, name):
            pass


def post(path: str, body: dict[str, Any]) -> tuple[int, Any]:
    app = create_app(load_settings(), runner_factory=FakeFactory())

    async def go() -> tuple[int, Any]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
                response = await c.post(path, json=body)
                return response.status_code, response.json()

    return asyncio.run(go())


def test_documents_come_back_best_first_with_their_text(models: None) -> None:
    status, answer = post("/v1/rerank", {"model": "ranker", "query": "q", "documents": DOCUMENTS})
    assert status == 200, answer
    assert answer["object"] == "list"
    assert answer["model"] == "ranker"
    assert answer["id"].startswith("rerank-")
    assert answer["results"] == [
        {"index": 2, "relevance_score": 4.0, "document": {"text": "dddd"}},
        {"index": 3, "relevance_score": 3.0, "document": {"text": "ccc"}},
        {"index": 0, "relevance_score": 2.0, "document": {"text": "bb"}},
        {"index": 1, "relevance_score": 1.0, "document": {"text": "a"}},
    ]
    assert answer["usage"] == {"prompt_tokens": 4, "total_tokens": 4}


@pytest.mark.parametrize("path", ["/rerank", "/reranking", "/v1/reranking", "/v2/rerank"])
def test_top_n_and_no_documents_at_every_path(models: None, path: str) -> None:
    body = {"model": "ranker", "query": "q", "documents": DOCUMENTS, "top_n": 2}
    status, answer = post(path, {**body, "return_documents": False})
    assert status == 200, answer
    assert answer["results"] == [
        {"index": 2, "relevance_score": 4.0},
        {"index": 3, "relevance_score": 3.0},
    ]


def test_top_n_beyond_the_documents_or_zero_keeps_them_all(models: None) -> None:
    for top_n in (0, 10):
        body = {"model": "ranker", "query": "q", "documents": DOCUMENTS, "top_n": top_n}
        status, answer = post("/v1/rerank", body)
        assert status == 200, answer
        assert [r["index"] for r in answer["results"]] == [2, 3, 0, 1]


def test_ties_keep_the_request_order(models: None) -> None:
    body = {"model": "ranker", "query": "q", "documents": ["xx", "a", "yy", "zz"]}
    status, answer = post("/v1/rerank", body)
    assert status == 200, answer
    assert [r["index"] for r in answer["results"]] == [0, 2, 3, 1]


@pytest.mark.parametrize(
    ("path", "body", "status", "needle"),
    [
        ("/v1/rerank", {"model": "tiny", "query": "q", "documents": ["a"]}, 400,
         "model tiny does not support reranking"),
        ("/rerank", {"model": "tiny", "query": "q", "documents": ["a"]}, 400,
         "model tiny does not support reranking"),
        ("/v1/rerank", {"model": "nothere", "query": "q", "documents": ["a"]}, 404, "not found"),
        ("/v1/rerank", {"model": "ranker", "documents": ["a"]}, 400, "missing field 'query'"),
        ("/v1/rerank", {"model": "ranker", "query": "", "documents": ["a"]}, 400, "query"),
        ("/v1/rerank", {"model": "ranker", "query": "q", "documents": []}, 400, "documents"),
        ("/v1/rerank", {"model": "ranker", "query": "q"}, 400, "missing field 'documents'"),
        ("/v1/rerank", {"model": "ranker", "query": "q", "documents": [5]}, 400, "documents"),
        ("/v1/rerank", {"model": "ranker", "query": "q", "documents": [{"x": 1}]}, 400,
         "documents"),
        ("/v1/rerank", {"model": "ranker", "query": "q", "documents": ["a"], "top_n": -1}, 400,
         "top_n"),
        ("/v1/rerank", {"model": "ranker", "query": "q", "documents": ["a"] * 1001}, 400,
         "documents"),
    ],
)  # fmt: skip
def test_refusals(models: None, path: str, body: dict[str, Any], status: int, needle: str) -> None:
    got, answer = post(path, body)
    assert got == status, answer
    message = answer["error"]["message"] if path.startswith("/v1") else answer["error"]
    assert needle in message


def test_capabilities_say_who_can_rank(models: None) -> None:
    _, ranker = post("/api/show", {"model": "ranker"})
    _, tiny = post("/api/show", {"model": "tiny"})
    assert ranker["capabilities"] == ["embedding", "rerank"]
    assert "rerank" not in tiny["capabilities"]
    assert "completion" in tiny["capabilities"]
