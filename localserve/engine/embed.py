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

from localserve.engine.llama import Batch, Context, Model
from localserve.engine.pooled import compute_all, input_tokens, pack_sequences, pack_tokens
from localserve.errors import EngineError, PromptTooLongError
from localserve.runtime.options import LoadOptions

POOLING_NONE = 0
POOLING_MEAN = 1
# Logit bytes one packed embedding batch may cost (see Embedder.pack_tokens).
PACK_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class Embeddings:
    vectors: list[list[float]]
    prompt_tokens: int


class Embedder:
    def __init__(self, model: Model, options: LoadOptions, *, n_threads: int) -> None:
        self.model = model
        self.num_ctx = input_tokens(model, options.num_ctx)  # the longest input
        self.capped = self.num_ctx < options.num_ctx
        model_pooling = model.meta(f"{model.meta('general.architecture')}.pooling_type")
        # A reranker's own pooling (rank, 4) ends in its classification head: a score,
        # not a vector. It embeds by the mean of its hidden states, as a generative model.
        pooling = None if model_pooling not in (None, "0", "4") else POOLING_MEAN
        # Non-causal encoders need a whole input in one compute step: ubatch = batch = ctx.
        shape = LoadOptions(
            num_ctx=self.num_ctx,
            num_parallel=pack_sequences(self.num_ctx),
            num_batch=self.num_ctx,
            num_ubatch=self.num_ctx,
            swa_full=True,  # as long as the context in every layer, as before windows
        )
        self.context = Context(
            model,
            shape,
            n_threads=n_threads,
            embeddings=True,
            pooling=pooling,
            n_ctx=self.num_ctx,
        )
        self.batch = Batch(self.context.shape.n_batch)
        # Those rows of logits again: packs of several inputs stay under PACK_BYTES of
        # them (the output buffer only grows); a longer input still goes alone, whole,
        # as pooling needs it in one step. (Attention bounds packs too: pooled.py.)
        logit_bound = max(1, PACK_BYTES // (4 * model.n_vocab))
        self.pack_tokens = min(pack_tokens(model, self.context.shape.n_batch), logit_bound)
        self.max_sequences = self.context.shape.n_seq_max

    def close(self) -> None:
        self.batch.close()
        self.context.close()

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
        self.context.clear()
        self.batch.clear()
        for seq, tokens in enumerate(group):
            # Every token's output is needed for pooling.
            self.batch.add(tokens, 0, seq, True)
            self.batch.logits[self.batch.n_tokens - len(tokens) : self.batch.n_tokens] = 1
        if self.model.has_encoder and not self.model.has_decoder:
            rc = self.context.encode(self.batch)
        else:
            rc = self.context.decode(self.batch)
        if rc != 0:
            raise EngineError(f"llama_decode failed for embeddings ({rc})")
        return [self.context.embedding(seq) for seq in range(len(group))]
