"""Reranking on a real daemon: the tiny reranker (tests/support/tiny_reranker.py)
imported as ``ranker`` beside the tiny generative model ``tiny``, over real HTTP, with
httpx and with Cohere's own SDK pointed at the daemon."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cohere
import httpx
import pytest

from tests.support.answers import error_message
from tests.support.cli import cli
from tests.support.daemon import Daemon, add_model, daemon_env

QUERY = "what colour is the sky"
# In an order the tiny reranker's scores change (its weights are random but fixed).
DOCUMENTS = ["one two three four five", "water", "hello world model", "the sky is blue"]


@pytest.fixture(scope="module")
def client(daemon: Daemon, tiny_reranker_path: Path) -> Iterator[httpx.Client]:
    add_model(daemon.home, tiny_reranker_path, "ranker")
    with httpx.Client(base_url=daemon.url, timeout=120, trust_env=False) as c:
        yield c


def rerank(client: httpx.Client, path: str = "/v1/rerank", **body: Any) -> dict[str, Any]:
    response = client.post(path, json={"model": "ranker", "query": QUERY, **body})
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def scores_alone(client: httpx.Client) -> list[float]:
    return [rerank(client, documents=[d])["results"][0]["relevance_score"] for d in DOCUMENTS]


def test_documents_come_back_best_first(client: httpx.Client) -> None:
    answer = rerank(client, documents=DOCUMENTS)
    results = answer["results"]
    assert sorted(r["index"] for r in results) == list(range(len(DOCUMENTS)))
    scores = [r["relevance_score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    assert [r["index"] for r in results] != list(range(len(DOCUMENTS)))  # reordered
    assert len({round(s, 4) for s in scores}) == len(DOCUMENTS)  # each document its own
    assert [r["document"]["text"] for r in results] == [DOCUMENTS[r["index"]] for r in results]
    assert answer["model"] == "ranker"
    assert answer["usage"]["prompt_tokens"] == answer["usage"]["total_tokens"] > len(DOCUMENTS)


def test_top_n_return_documents_and_every_path(client: httpx.Client) -> None:
    whole = rerank(client, documents=DOCUMENTS)["results"]
    for path in ("/v1/rerank", "/rerank", "/reranking", "/v1/reranking", "/v2/rerank"):
        cut = rerank(client, path, documents=DOCUMENTS, top_n=2, return_documents=False)
        assert [r["index"] for r in cut["results"]] == [r["index"] for r in whole[:2]], path
        assert all(set(r) == {"index", "relevance_score"} for r in cut["results"]), path
    objects = rerank(client, documents=[{"text": d} for d in DOCUMENTS])["results"]
    assert objects == whole


def test_a_pair_scores_the_same_alone_in_a_batch_and_beside_a_generation(
    client: httpx.Client, daemon: Daemon
) -> None:
    alone = scores_alone(client)
    # Beside a generation streaming on the other model.
    streaming = threading.Event()
    generated: list[str] = []

    def generate() -> None:
        body = {"model": "tiny", "prompt": "hello", "options": {"num_predict": 400}}
        with (
            httpx.Client(base_url=daemon.url, timeout=300, trust_env=False) as other,
            other.stream("POST", "/api/generate", json=body) as response,
        ):
            for line in response.iter_lines():
                streaming.set()
                generated.append(line)

    thread = threading.Thread(target=generate)
    thread.start()
    try:
        assert streaming.wait(120)
        batched = rerank(client, documents=DOCUMENTS * 3)["results"]
    finally:
        thread.join(300)
    assert not thread.is_alive()
    assert '"done":true' in generated[-1].replace(" ", "")
    for result in batched:
        assert result["relevance_score"] == pytest.approx(alone[result["index"] % 4], abs=1e-3)


def test_capabilities(client: httpx.Client, daemon: Daemon) -> None:
    ranker = client.post("/api/show", json={"model": "ranker"}).json()["capabilities"]
    tiny = client.post("/api/show", json={"model": "tiny"}).json()["capabilities"]
    assert ranker == ["embedding", "rerank"]  # no "completion": it cannot generate
    assert "rerank" not in tiny and "completion" in tiny
    # `localserve show` reads the store itself, and says the same.
    shown = cli("show", "ranker", env=daemon_env(daemon.home, daemon.port))
    assert shown.returncode == 0, shown.stderr
    assert re.search(r"capabilities\s+embedding, rerank\s*$", shown.stdout, re.M), shown.stdout


@pytest.mark.parametrize(
    ("path", "body", "status", "needle"),
    [
        ("/v1/rerank", {"model": "tiny", "query": "q", "documents": ["a"]}, 400,
         "model tiny does not support reranking"),
        ("/rerank", {"model": "tiny", "query": "q", "documents": ["a"]}, 400,
         "model tiny does not support reranking"),
        ("/v1/rerank", {"model": "nothere", "query": "q", "documents": ["a"]}, 404, "not found"),
        ("/v1/rerank", {"model": "ranker", "query": "q", "documents": []}, 400, "documents"),
        ("/v1/rerank", {"model": "ranker", "documents": ["a"]}, 400, "missing field 'query'"),
        ("/v1/rerank", {"model": "ranker", "query": "word " * 2000, "documents": ["a"]}, 400,
         "maximum context length is 512 tokens"),
        ("/rerank", {"model": "ranker", "query": "word " * 2000, "documents": ["a"]}, 400,
         "no room for a document"),
        # A reranker has no language-model head: every generating route refuses it.
        ("/api/generate", {"model": "ranker", "prompt": "hi"}, 400,
         "ranker does not support generate"),
        ("/api/chat", {"model": "ranker", "messages": [{"role": "user", "content": "hi"}]},
         400, "ranker does not support generate"),
        ("/v1/chat/completions",
         {"model": "ranker", "messages": [{"role": "user", "content": "hi"}]},
         400, "ranker does not support generate"),
        ("/v1/completions", {"model": "ranker", "prompt": "hi"}, 400,
         "ranker does not support generate"),
        ("/v1/messages", {"model": "ranker", "max_tokens": 8,
                          "messages": [{"role": "user", "content": "hi"}]},
         400, "ranker does not support generate"),
        ("/v1/responses", {"model": "ranker", "input": "hi"}, 400,
         "ranker does not support generate"),
    ],
)  # fmt: skip
def test_refusals_leave_it_serving(
    client: httpx.Client, path: str, body: dict[str, Any], status: int, needle: str
) -> None:
    response = client.post(path, json=body)
    assert response.status_code == status, response.text
    assert needle in error_message(path, response)
    assert rerank(client, documents=DOCUMENTS[:2])["results"]


def test_cohere_sdk(client: httpx.Client, daemon: Daemon) -> None:
    """Cohere's SDK, v1 and v2 clients, pointed at the daemon."""
    expected = rerank(client, documents=DOCUMENTS, top_n=3)["results"]
    with httpx.Client(timeout=120, trust_env=False) as transport:
        v1 = cohere.Client(api_key="local", base_url=daemon.url, httpx_client=transport)
        answer = v1.rerank(
            model="ranker", query=QUERY, documents=DOCUMENTS, top_n=3, return_documents=True
        )
        assert [r.index for r in answer.results] == [r["index"] for r in expected]
        assert [r.relevance_score for r in answer.results] == pytest.approx(
            [r["relevance_score"] for r in expected], abs=1e-3
        )
        assert [r.document.text for r in answer.results if r.document] == [
            DOCUMENTS[r["index"]] for r in expected
        ]
        v2 = cohere.ClientV2(api_key="local", base_url=daemon.url, httpx_client=transport)
        second = v2.rerank(model="ranker", query=QUERY, documents=DOCUMENTS, top_n=3)
        assert [r.index for r in second.results] == [r["index"] for r in expected]
        with pytest.raises(cohere.BadRequestError, match="does not support reranking"):
            v2.rerank(model="tiny", query=QUERY, documents=DOCUMENTS)
