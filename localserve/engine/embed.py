"""Pooled, L2-normalised embeddings for /api/embed and /v1/embeddings.

A second llama.cpp context with ``embeddings=True``, made on the first embedding
request (a model used only for chat never pays for it). Embedding models bring
their own pooling (CLS, mean, last); for a generative GGUF, which has none, and a
reranker, whose rank pooling gives a score (rank.py), we use mean pooling over the
input's tokens. Inputs are packed several to a batch, one sequence id each, with
those of other requests (pooled.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from localserve.engine.llama import Model
from localserve.engine.pooled import PooledContext, compute_all
from localserve.errors import PromptTooLongError
from localserve.runtime.options import LoadOptions

POOLING_NONE = 0
POOLING_MEAN = 1


@dataclass(frozen=True)
class Embeddings:
    vectors: list[list[float]]
    prompt_tokens: int


class Embedder(PooledContext):
    def __init__(self, model: Model, options: LoadOptions, *, n_threads: int) -> None:
        model_pooling = model.meta(f"{model.meta('general.architecture')}.pooling_type")
        # A reranker's own pooling (rank, 4) ends in its classification head: a score,
        # not a vector. It embeds by the mean of its hidden states, as a generative model.
        pooling = None if model_pooling not in (None, "0", "4") else POOLING_MEAN
        # swa_full: as long as the context in every layer, as before windows.
        super().__init__(
            model, options.num_ctx, n_threads=n_threads, pooling=pooling, swa_full=True
        )
        self.capped = self.num_ctx < options.num_ctx

    def embed(self, inputs: Sequence[str], *, truncate: bool) -> Embeddings:
        """Embed ``inputs`` in this process, packed as the runner's queue packs them."""
        token_lists = self.prepare(inputs, truncate=truncate)
        vectors = compute_all(self, token_lists)
        return Embeddings(vectors, sum(len(t) for t in token_lists))

    def prepare(self, inputs: Sequence[str], *, truncate: bool) -> list[list[int]]:
        """The inputs' tokens, each cut to the context (``truncate``) or refused."""
        token_lists = []
        for text in inputs:
            tokens = self.model.tokenize(text, add_special=True, parse_special=False)
            if len(tokens) > self.num_ctx:
                if not truncate:
                    holds = (
                        f"this model embeds at most {self.num_ctx} tokens an input"
                        if self.capped
                        else f"the context holds {self.num_ctx}"
                    )
                    raise PromptTooLongError(
                        f"an input is {len(tokens)} tokens, but {holds}",
                        hint="shorten it, or set truncate: true to embed its start"
                        + ("" if self.capped else ", or raise num_ctx"),
                        tokens=len(tokens),
                        limit=self.num_ctx,
                    )
                tokens = tokens[: self.num_ctx]
            if not tokens:
                raise PromptTooLongError("an input is empty after tokenization")
            token_lists.append(tokens)
        return token_lists

    def compute(self, group: Sequence[list[int]]) -> list[list[float]]:
        """One decode: the pooled, normalised vector of each sequence."""
        self.decode(group, "embeddings")
        return [self.context.embedding(seq) for seq in range(len(group))]
