"""The pooled queue's packing (engine/pooled.py), with a pooler that records its packs.

The real contexts (embed.py, rank.py) are run by tests/engine/test_rerank.py and
tests/engine/test_runner.py; here only what goes into which pack, which is plain Python.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace

import pytest

from localserve.engine.pooled import (
    MIN_PACK_TOKENS,
    PooledQueue,
    PooledRequest,
    compute_all,
    input_tokens,
    pack_tokens,
)
from localserve.errors import EngineError
from localserve.runtime.protocol import ErrorEvent, Reply, TokenCount


class Recording:
    """Pools a sequence to the sum of its tokens; remembers every pack."""

    def __init__(self, pack_tokens: int = 10, max_sequences: int = 4) -> None:
        self.pack_tokens = pack_tokens
        self.max_sequences = max_sequences
        self.packs: list[list[list[int]]] = []
        self.fail_on: int | None = None  # a token that makes its pack fail

    def compute(self, group: Sequence[list[int]]) -> list[int]:
        self.packs.append(list(group))
        if self.fail_on is not None and any(self.fail_on in tokens for tokens in group):
            raise EngineError("llama_decode failed")
        return [sum(tokens) for tokens in group]


def request(name: str, items: list[list[int]]) -> PooledRequest[int]:
    # TokenCount carries the outputs' sum: enough to tell the answers apart.
    return PooledRequest(name, items, lambda outputs, _: TokenCount(name, sum(outputs)))


def run(queue: PooledQueue[int]) -> list[Reply]:
    replies: list[Reply] = []
    while queue.has_work():
        replies += queue.step()
    return replies


def test_concurrent_requests_share_packs_in_turn() -> None:
    pooler = Recording(pack_tokens=100, max_sequences=4)
    queue = PooledQueue(pooler)
    queue.submit(request("big", [[1], [2], [3], [4], [5], [6]]))
    queue.submit(request("small", [[10], [20]]))
    replies = run(queue)
    # One from each in turn: the small request is done in the first pack.
    assert pooler.packs[0] == [[1], [10], [2], [20]]
    assert pooler.packs[1] == [[3], [4], [5], [6]]
    assert [(r.id, r.tokens) for r in replies if isinstance(r, TokenCount)] == [
        ("small", 30),
        ("big", 21),
    ]
    assert queue.stats.packs == 2 and queue.stats.shared_packs == 1


def test_a_request_keeps_its_order_and_packs_keep_their_bounds() -> None:
    pooler = Recording(pack_tokens=5, max_sequences=3)
    outputs = compute_all(pooler, [[1, 1], [2, 2], [3], [4, 4, 4, 4, 4, 4], [5]])
    assert outputs == [2, 4, 3, 24, 5]
    for pack in pooler.packs:
        # Within the token bound, or one sequence alone (a long one still goes, whole).
        assert sum(map(len, pack)) <= 5 or len(pack) == 1
        assert len(pack) <= 3
    assert [[2, 2] in pack for pack in pooler.packs] == [True, False, False]


def test_a_failed_pack_fails_only_its_requests() -> None:
    pooler = Recording(pack_tokens=2, max_sequences=2)
    queue = PooledQueue(pooler)
    queue.submit(request("a", [[7], [1]]))
    queue.submit(request("b", [[1], [1]]))
    pooler.fail_on = 7
    replies = queue.step()  # [7] of a and [1] of b: both fail
    assert sorted(r.id for r in replies if isinstance(r, ErrorEvent)) == ["a", "b"]
    assert not queue.has_work()
    queue.submit(request("c", [[1], [2]]))
    assert [(r.id, r.tokens) for r in run(queue) if isinstance(r, TokenCount)] == [("c", 3)]
    with pytest.raises(EngineError):
        compute_all(pooler, [[7]])


def test_cancel_drops_a_request_and_an_empty_one_is_answered_at_once() -> None:
    pooler = Recording()
    queue = PooledQueue(pooler)
    queue.submit(request("gone", [[1]] * 20))
    queue.submit(request("kept", [[2]]))
    queue.cancel("gone")
    assert [r.id for r in run(queue)] == ["kept"]
    assert all([1] not in pack for pack in pooler.packs)
    assert [
        (r.id, r.tokens) for r in queue.submit(request("empty", [])) if isinstance(r, TokenCount)
    ] == [("empty", 0)]
    assert not queue.has_work()


@pytest.mark.parametrize(
    ("n_embd", "n_ff", "n_batch", "expected"),
    [
        (64, "128", 512, MIN_PACK_TOKENS),  # a tiny model: one decode's overhead rules
        (1024, "4096", 8192, 768),  # bge-reranker-v2-m3's shape: attention rules
        (1024, "4096", 512, 512),  # never more than a batch
        (768, None, 8192, (2 * 768 + 4 * 768) // 8),  # no n_ff in the file: 4 n_embd
    ],
)
def test_pack_tokens_follow_the_models_shape(
    n_embd: int, n_ff: str | None, n_batch: int, expected: int
) -> None:
    meta = {"general.architecture": "bert", "bert.feed_forward_length": n_ff}
    model = SimpleNamespace(n_embd=n_embd, meta=meta.get)
    assert pack_tokens(model, n_batch) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("n_vocab", "num_ctx", "expected"),
    [
        (262_144, 32768, 1024),  # Gemma 3: a row of logits is 1 MiB
        (128_256, 32768, 2092),  # Llama 3
        (262_144, 600, 600),  # the context is shorter than the cap
        (30_522, 8192, 8192),  # a BERT embedding model: its whole context
        (10_000_000, 4096, 512),  # never under 512 tokens
    ],
)
def test_input_tokens_are_capped_by_their_logits(n_vocab: int, num_ctx: int, expected: int) -> None:
    model = SimpleNamespace(n_vocab=n_vocab)
    assert input_tokens(model, num_ctx) == expected  # type: ignore[arg-type]
