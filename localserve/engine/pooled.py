"""Pooled work (embeddings, rerank scores), packed across requests between engine steps.

An embedding or rerank request is a list of token sequences, each pooled to one output
(a vector, a score) in a context of its own (embed.py, rank.py). The runner queues them
here. Each turn of its loop computes one pack, its sequences taken in turn from every
waiting request, and then runs one engine step: concurrent requests share decodes, a
short request is not stuck behind a 1000-document one, and streams keep getting tokens
while a long request is scored. llama.cpp has no such queue to reuse: llama-server
turns each document into a task for its slots, and llama-cpp-python embeds one call
at a time.

How many tokens a pack holds (``pack_tokens``): llama.cpp computes a pack's attention
over all of its tokens and masks the pairs of different sequences, so a pack of N
tokens pays for N² attention where its sequences alone would pay for the sum of their
squares; the weights cost the same either way. Per layer and token the weights take
about 4·n_embd² + 2·n_embd·n_ff multiply-adds, and attention about 2·n_embd per pair of
tokens: a pack stays under (2·n_embd + n_ff) / 8 tokens, where that extra is at most an
eighth of the weights' cost (~600 tokens for a bge-reranker, 32 for the tiny test
model). Never under MIN_PACK_TOKENS, where one decode's own overhead is worth more:
measured on the tiny reranker, two 56-token pairs in one decode took 0.27 ms a pair,
alone 0.29; eight in one, 0.68.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from localserve.engine.llama import Batch, Context, Model
from localserve.errors import EngineError, LocalserveError
from localserve.runtime.options import LoadOptions
from localserve.runtime.protocol import ErrorEvent, Reply

T = TypeVar("T")
MIN_PACK_TOKENS = 128
# Logit bytes one pack of several sequences may cost (see PooledContext.pack_tokens).
PACK_BYTES = 256 * 1024 * 1024
MAX_PACK_SEQUENCES = 32
# Logit bytes the longest input may cost, and the fewest tokens it is allowed whatever
# the vocabulary (see input_tokens).
INPUT_BYTES = 1024 * 1024 * 1024
MIN_INPUT_TOKENS = 512


def input_tokens(model: Model, num_ctx: int) -> int:
    """The longest input (and the batch) of a pooled context: llama.cpp makes every
    token of such a batch an output with a row of logits (n_vocab floats: 1 MiB a token
    for Gemma 3's 262k vocabulary, and for a reranker too: the row is kept whether or
    not the model has an output layer), in the compute buffer it reserves for a whole
    batch and in the output buffer. A batch as long as a 32k context asked for 37 GB
    and failed: inputs are capped at INPUT_BYTES of logits (1024 tokens for Gemma 3,
    2092 for Llama 3's vocabulary, all of a small-vocabulary model's context), as
    llama-server caps them at its physical batch (512)."""
    return min(num_ctx, max(MIN_INPUT_TOKENS, INPUT_BYTES // (4 * model.n_vocab)))


def pack_tokens(model: Model, n_batch: int) -> int:
    """The most tokens one pack of ``model`` should hold (a longer sequence goes alone)."""
    n_ff = model.meta(f"{model.meta('general.architecture')}.feed_forward_length")
    width = int(n_ff) if n_ff and n_ff.isdigit() else 4 * model.n_embd
    return min(n_batch, max(MIN_PACK_TOKENS, (2 * model.n_embd + width) // 8))


def pack_sequences(n_batch: int) -> int:
    """The pooled contexts' n_seq_max. llama.cpp aborts a decode when a context has more
    sequences than its batch has tokens (it reserves an output per sequence, at most
    n_batch), which a context of 16 tokens would."""
    return min(MAX_PACK_SEQUENCES, n_batch)


class PooledContext:
    """A llama.cpp context of its own with ``embeddings=True`` and ``pooling``, that
    decodes packs of whole sequences: what embed.py's Embedder and rank.py's Ranker
    share. ``shape`` adds to the context's options (flash attention, swa_full)."""

    def __init__(
        self, model: Model, num_ctx: int, *, n_threads: int, pooling: int | None, **shape: Any
    ) -> None:
        self.model = model
        self.num_ctx = input_tokens(model, num_ctx)  # the longest sequence
        # Non-causal encoders need a whole sequence in one compute step: ubatch = batch.
        options = LoadOptions(
            num_ctx=self.num_ctx,
            num_parallel=pack_sequences(self.num_ctx),
            num_batch=self.num_ctx,
            num_ubatch=self.num_ctx,
            **shape,
        )
        self.context = Context(
            model,
            options,
            n_threads=n_threads,
            embeddings=True,
            pooling=pooling,
            n_ctx=self.num_ctx,
        )
        self.batch = Batch(self.context.shape.n_batch)
        # Those rows of logits again (input_tokens): packs of several sequences stay
        # under PACK_BYTES of them (the output buffer only grows); a longer sequence
        # still goes alone, whole, as pooling needs it in one step. Attention bounds
        # packs too (pack_tokens).
        logit_bound = max(1, PACK_BYTES // (4 * model.n_vocab))
        self.pack_tokens = min(pack_tokens(model, self.context.shape.n_batch), logit_bound)
        self.max_sequences = self.context.shape.n_seq_max

    def close(self) -> None:
        self.batch.close()
        self.context.close()

    def decode(self, group: Sequence[list[int]], what: str) -> None:
        """One decode of ``group``, a sequence id each, every token's output kept (pooling
        reads them all); the pooled outputs are then the context's."""
        self.context.clear()
        self.batch.clear()
        for seq, tokens in enumerate(group):
            self.batch.add(tokens, 0, seq, True, want_all_logits=True)
        if self.model.has_encoder and not self.model.has_decoder:
            rc = self.context.encode(self.batch)
        else:
            rc = self.context.decode(self.batch)
        if rc != 0:
            raise EngineError(f"llama_decode failed for {what} ({rc})")


class Pooler(Protocol[T]):
    """A context that pools token sequences to one output each (Embedder, Ranker)."""

    @property
    def pack_tokens(self) -> int: ...  # the most tokens in one pack

    @property
    def max_sequences(self) -> int: ...  # the most sequences in one pack

    def compute(self, group: Sequence[list[int]]) -> list[T]: ...


@dataclass
class PooledRequest(Generic[T]):
    """One request's sequences, and how to answer it once they are all computed."""

    id: str
    items: list[list[int]]
    # The reply, from the outputs in order and the ns since submitted; None: no reply.
    answer: Callable[[list[T], int], Reply] | None
    outputs: list[T] = field(default_factory=list)
    submitted: int = field(default_factory=time.perf_counter_ns)


@dataclass
class PoolStats:
    packs: int = 0  # decodes of pooled work
    shared_packs: int = 0  # packs that held sequences of two requests or more


class PooledQueue(Generic[T]):
    """The waiting requests of one pooler; ``step`` computes one pack."""

    def __init__(self, pooler: Pooler[T]) -> None:
        self.pooler = pooler
        self.waiting: list[PooledRequest[T]] = []
        self.stats = PoolStats()

    def has_work(self) -> bool:
        return bool(self.waiting)

    def submit(self, request: PooledRequest[T]) -> list[Reply]:
        """Queue a request; a request with nothing to compute is answered at once."""
        self.waiting.append(request)
        return self._finished() if not request.items else []

    def cancel(self, request_id: str) -> None:
        """Forget a request whose client went away."""
        self.waiting = [r for r in self.waiting if r.id != request_id]

    def step(self) -> list[Reply]:
        """Compute one pack; the answers of the requests it finished (or failed)."""
        pack = self._take_pack()
        if not pack:
            return []
        self.stats.packs += 1
        if len({id(request) for request, _ in pack}) > 1:
            self.stats.shared_packs += 1
        try:
            outputs = self.pooler.compute([tokens for _, tokens in pack])
        except LocalserveError as exc:  # the pack's requests fail; the others go on
            failed = {id(request): request for request, _ in pack}
            self.waiting = [r for r in self.waiting if id(r) not in failed]
            return [ErrorEvent.of(request.id, exc) for request in failed.values()]
        for (request, _), output in zip(pack, outputs, strict=True):
            request.outputs.append(output)
        return self._finished()

    def _finished(self) -> list[Reply]:
        """Take the requests whose every sequence is computed off the queue; their replies."""
        replies: list[Reply] = []
        now = time.perf_counter_ns()
        for request in [r for r in self.waiting if len(r.outputs) == len(r.items)]:
            self.waiting.remove(request)
            if request.answer is not None:
                replies.append(request.answer(request.outputs, now - request.submitted))
        return replies

    def _take_pack(self) -> list[tuple[PooledRequest[T], list[int]]]:
        """The next sequences of the waiting requests, one from each in turn, while they
        fit; each request's own sequences stay in order. The first always goes."""
        pack: list[tuple[PooledRequest[T], list[int]]] = []
        taken = [len(r.outputs) for r in self.waiting]
        used = 0
        while True:
            added = False
            for index, request in enumerate(self.waiting):
                if taken[index] == len(request.items):
                    continue
                tokens = request.items[taken[index]]
                full = len(pack) == self.pooler.max_sequences
                if pack and (full or used + len(tokens) > self.pooler.pack_tokens):
                    return pack
                pack.append((request, tokens))
                taken[index] += 1
                used += len(tokens)
                added = True
            if not added:
                return pack


def compute_all(pooler: Pooler[T], items: list[list[int]]) -> list[T]:
    """The outputs of ``items``, in order, packed as the runner packs them (for callers
    in this process: tests, tools)."""
    request: PooledRequest[T] = PooledRequest("", items, answer=None)
    queue = PooledQueue(pooler)
    queue.submit(request)
    while queue.has_work():
        for reply in queue.step():
            if isinstance(reply, ErrorEvent):
                raise reply.error()
    return request.outputs
