"""Reranking in process (engine/rank.py) and through a runner, on the tiny reranker
(tests/support/tiny_reranker.py): a BERT cross-encoder with rank pooling."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from localserve.engine.embed import Embedder
from localserve.engine.llama import Model
from localserve.engine.rank import Ranker
from localserve.errors import PromptTooLongError
from localserve.runtime.options import LoadOptions
from localserve.runtime.protocol import LoadRequest
from localserve.scheduler.runner_client import RunnerClient
from tests.support.tiny_reranker import RERANK_TEMPLATE, write_tiny_reranker

QUERY = "what colour is the sky"
DOCUMENTS = ["the sky is blue", "water", "hello world model", "one two three four five"]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Model]:
    path = write_tiny_reranker(tmp_path_factory.mktemp("reranker") / "reranker.gguf")
    loaded = Model([path], n_gpu_layers=0)
    yield loaded
    loaded.close()


@pytest.fixture(scope="module")
def ranker(model: Model) -> Iterator[Ranker]:
    made = Ranker(model, LoadOptions(num_ctx=128), n_threads=2)
    yield made
    made.close()


def test_scores_change_with_the_document(ranker: Ranker) -> None:
    scores = ranker.rank(QUERY, DOCUMENTS).scores
    assert len(scores) == len(DOCUMENTS)
    assert all(math.isfinite(s) for s in scores)
    assert len({round(s, 4) for s in scores}) == len(DOCUMENTS), scores
    # ...and with the query.
    assert ranker.rank("water", DOCUMENTS[:1]).scores[0] != pytest.approx(scores[0], abs=1e-3)


def test_a_pair_scores_the_same_alone_and_in_any_batch(ranker: Ranker) -> None:
    many = [*DOCUMENTS, *DOCUMENTS[::-1], "the sky is blue"] * 2
    # several decodes, packed differently
    assert sum(len(ranker.pair(QUERY, d)) for d in many) > ranker.pack_tokens
    together = ranker.rank(QUERY, many).scores
    alone = [ranker.rank(QUERY, [document]).scores[0] for document in DOCUMENTS]
    # Packed differently, sums round differently: ~1e-5 here, up to 3e-4 for 64 longer
    # documents (benchmarks/rerank.py); the documents' scores differ by tenths.
    for document, score in zip(many, together, strict=True):
        assert score == pytest.approx(alone[DOCUMENTS.index(document)], abs=1e-3)


def test_the_pair_is_bos_query_eos_sep_document_eos(ranker: Ranker, model: Model) -> None:
    """llama.cpp's format for a reranker without a template (the tiny one's SEP is EOS)."""
    text = model.tokenize
    expected = [
        model.bos,
        *text("a query", add_special=False, parse_special=False),
        model.eos,
        model.sep,
        *text("a document", add_special=False, parse_special=False),
        model.eos,
    ]
    assert ranker.pair("a query", "a document") == expected
    assert ranker.rank("a query", ["a document"]).prompt_tokens == len(expected)


def test_a_rerank_template_formats_the_pair(tmp_path: Path, ranker: Ranker) -> None:
    path = write_tiny_reranker(tmp_path / "templated.gguf", rerank_template=RERANK_TEMPLATE)
    model = Model([path], n_gpu_layers=0)
    templated = Ranker(model, LoadOptions(num_ctx=128), n_threads=2)
    try:
        prompt = RERANK_TEMPLATE.format(query=QUERY, document="water")
        assert templated.pair(QUERY, "water") == model.tokenize(
            prompt, add_special=False, parse_special=True
        )
        assert (
            templated.pair(QUERY, "water")[0]
            == model.tokenize("<|im_start|>", add_special=False)[0]
        )
        # The same weights, another format: another score.
        score = templated.rank(QUERY, ["water"]).scores[0]
        assert score != pytest.approx(ranker.rank(QUERY, ["water"]).scores[0], abs=1e-3)
    finally:
        templated.close()
        model.close()


def test_a_long_document_is_cut_to_fit_and_a_long_query_refused(model: Model) -> None:
    small = Ranker(model, LoadOptions(num_ctx=32), n_threads=2)
    try:
        tokens = small.pair("a query", "word " * 100)
        assert len(tokens) == 32
        assert tokens[-1] == model.eos  # the document's end marker stays
        assert len(small.rank("a query", ["word " * 100, "x"]).scores) == 2
        with pytest.raises(PromptTooLongError, match="no room for a document"):
            small.rank("word " * 100, ["x"])
    finally:
        small.close()


def test_a_reranker_still_embeds(model: Model) -> None:
    """Its own pooling ends in a score of one number: embeddings take the mean of its
    hidden states instead (reading n_embd floats of a score would read past it)."""
    embedder = Embedder(model, LoadOptions(num_ctx=64), n_threads=2)
    try:
        vectors = embedder.embed(["hello there", "water"], truncate=True).vectors
        for vector in vectors:
            assert len(vector) == model.n_embd
            assert math.isclose(math.sqrt(sum(x * x for x in vector)), 1.0, rel_tol=1e-5)
        assert vectors[0] != pytest.approx(vectors[1], abs=1e-3)
    finally:
        embedder.close()


def test_rank_through_a_runner(tiny_reranker_path: Path, ranker: Ranker) -> None:
    """The runner's answer is the in-process one; a refused query leaves it serving."""

    async def body() -> None:
        runner = await RunnerClient.start(
            LoadRequest((tiny_reranker_path,), LoadOptions(num_ctx=128, num_parallel=1))
        )
        try:
            ranked = await runner.rank(QUERY, DOCUMENTS)
            assert ranked.scores == pytest.approx(ranker.rank(QUERY, DOCUMENTS).scores, abs=1e-3)
            assert ranked.prompt_eval_count == ranker.rank(QUERY, DOCUMENTS).prompt_tokens
            assert ranked.prompt_eval_duration > 0
            with pytest.raises(PromptTooLongError):
                await runner.rank("word " * 500, ["x"])
            assert (await runner.rank(QUERY, ["water"])).scores[0] == pytest.approx(
                ranked.scores[1], abs=1e-3
            )
        finally:
            await runner.close()

    asyncio.run(body())


def test_concurrent_requests_share_decodes_and_a_short_one_is_not_kept_waiting(
    tiny_reranker_path: Path, ranker: Ranker
) -> None:
    """A 1000-document request and a short one sent right after it: their pairs go into
    the same decodes, taken in turn, so the short one is answered long before the long
    one (which takes hundreds of decodes); every score is the one it gets alone."""
    long = [" ".join(DOCUMENTS[(i + j) % 4] for j in range(i % 12 + 1)) for i in range(1000)]

    async def body() -> None:
        runner = await RunnerClient.start(
            LoadRequest((tiny_reranker_path,), LoadOptions(num_ctx=128, num_parallel=1))
        )
        try:
            finished: list[str] = []

            async def rank(name: str, documents: list[str]) -> list[float]:
                scores = (await runner.rank(QUERY, documents)).scores
                finished.append(name)
                return scores

            long_scores, short_scores = await asyncio.gather(
                rank("long", long), rank("short", DOCUMENTS)
            )
            assert finished == ["short", "long"]
            stats = await runner.stats()
            assert stats.pooled_shared_packs >= 1
            assert stats.pooled_packs < len(long)  # packed, not one decode a pair
        finally:
            await runner.close()
        alone = ranker.rank(QUERY, DOCUMENTS).scores
        assert short_scores == pytest.approx(alone, abs=1e-3)
        for document, score in zip(long[:8], long_scores, strict=False):
            assert score == pytest.approx(ranker.rank(QUERY, [document]).scores[0], abs=1e-3)

    asyncio.run(body())


def test_a_request_whose_client_went_away_is_dropped(tiny_reranker_path: Path) -> None:
    """Cancelling the caller (a client that hung up) takes its pairs off the queue: the
    runner does not score 1000 long documents for nobody."""
    long = [" ".join(DOCUMENTS) * 3] * 1000  # ~100 tokens each: about a decode a pair

    async def body() -> None:
        runner = await RunnerClient.start(
            LoadRequest((tiny_reranker_path,), LoadOptions(num_ctx=128, num_parallel=1))
        )
        try:
            task = asyncio.create_task(runner.rank(QUERY, long))
            await asyncio.sleep(0)  # the task writes its request...
            await runner.stats()  # ...which the runner has read when this is answered
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert len((await runner.rank(QUERY, DOCUMENTS)).scores) == len(DOCUMENTS)
            stats = await runner.stats()
            assert stats.pooled_waiting == 0
            assert stats.pooled_packs < len(long) // 2
        finally:
            await runner.close()

    asyncio.run(body())
