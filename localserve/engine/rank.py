"""Relevance scores for /v1/rerank: llama.cpp's rank pooling on cross-encoder rerankers.

A second llama.cpp context with ``embeddings=True`` and rank pooling
(LLAMA_POOLING_TYPE_RANK), made on the first rerank request, as embed.py's is for
embeddings. Rank pooling takes the hidden state of a pair's first token (its last, for
a causal reranker such as Qwen3-Reranker), puts it through the model's classification
head (the ``cls`` and ``cls.output`` tensors) and leaves ``n_cls_out`` numbers per
sequence; the first is the score, as llama-server reads it: a logit for BERT-style
rerankers, P("yes") for Qwen3-Reranker, whose head llama.cpp softmaxes.

Each (query, document) pair is one sequence, formatted as llama.cpp formats it: with the
GGUF's rerank template when it has one (``tokenizer.chat_template.rerank``: ``{query}``
and ``{document}`` replaced, special tokens parsed), else BOS query EOS SEP document EOS,
each marker only where the vocabulary says to add it. A pair longer than the context
loses the end of its document (as Cohere and Jina cut long documents); a query that
leaves no room for any document is refused. Pairs are packed several to a batch, one
sequence id each, with those of other requests, as embeddings are (pooled.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from localserve.engine.llama import Model
from localserve.engine.pooled import PooledContext, compute_all
from localserve.errors import EngineError, PromptTooLongError
from localserve.runtime.options import LoadOptions

POOLING_RANK = 4  # LLAMA_POOLING_TYPE_RANK


@dataclass(frozen=True)
class Ranking:
    scores: list[float]  # one per document, in the documents' order
    prompt_tokens: int  # the pairs' tokens, all together


class Ranker(PooledContext):
    def __init__(self, model: Model, options: LoadOptions, *, n_threads: int) -> None:
        # Flash attention off: on the CPU it rounds through F16, and a pair's score then
        # moved by ~0.5% with the pairs it was batched with (measured on the tiny test
        # reranker); without it the same pair scores the same alone and in any batch.
        super().__init__(
            model, options.num_ctx, n_threads=n_threads, pooling=POOLING_RANK, flash_attention="off"
        )
        self.template = model.chat_template("rerank")
        self.width = max(1, model.n_cls_out)

    def rank(self, query: str, documents: Sequence[str]) -> Ranking:
        """The score of each document for ``query``, in this process, packed as the
        runner's queue packs them."""
        pairs = self.pairs(query, documents)
        return Ranking(compute_all(self, pairs), sum(len(p) for p in pairs))

    def pairs(self, query: str, documents: Sequence[str]) -> list[list[int]]:
        """The tokens of each (query, document) pair."""
        return [self.pair(query, document) for document in documents]

    # ----------------------------------------------------------------- pairs

    def pair(self, query: str, document: str) -> list[int]:
        """The tokens of one (query, document) pair, cut to fit the context."""
        if self.template is not None:
            prompt = self.template.replace("{query}", query).replace("{document}", document)
            tokens = self.model.tokenize(prompt, add_special=False, parse_special=True)
            if len(tokens) <= self.num_ctx:
                return tokens
            # Too long: the template's text around the document, and as much of the
            # document as fits between.
            before, _, after = self.template.replace("{query}", query).partition("{document}")
            head = self.model.tokenize(before, add_special=False, parse_special=True)
            tail = self.model.tokenize(after, add_special=False, parse_special=True)
            body = self._text(document)
        else:
            head, tail = self._markers(query)
            body = self._text(document)
        room = self.num_ctx - len(head) - len(tail)
        if room < 0 or (room == 0 and body):
            raise PromptTooLongError(
                f"the query takes {len(head) + len(tail)} tokens with its markers, leaving "
                f"no room for a document in a context of {self.num_ctx}",
                hint="shorten the query, or raise num_ctx",
                tokens=len(head) + len(tail) + len(body),
                limit=self.num_ctx,
            )
        tokens = [*head, *body[:room], *tail]
        if not tokens:
            raise PromptTooLongError("a query and document pair is empty after tokenization")
        return tokens

    def _markers(self, query: str) -> tuple[list[int], list[int]]:
        """What comes before the document (BOS query EOS SEP) and after it (EOS)."""
        model = self.model
        # A vocabulary without EOS ends the texts with its separator.
        end = model.eos if model.eos >= 0 else model.sep
        head = [model.bos] if model.add_bos and model.bos >= 0 else []
        head += self._text(query)
        closing = [end] if model.add_eos and end >= 0 else []
        head += closing
        if model.add_sep and model.sep >= 0:
            head.append(model.sep)
        return head, closing

    def _text(self, text: str) -> list[int]:
        return self.model.tokenize(text, add_special=False, parse_special=False)

    # ----------------------------------------------------------------- compute

    def compute(self, group: Sequence[list[int]]) -> list[float]:
        """One decode: the score of each pair."""
        self.decode(group, "rerank")
        scores = []
        for seq in range(len(group)):
            score = float(self.context.pooled(seq, self.width)[0])
            if not math.isfinite(score):
                raise EngineError(f"the model gave a score that is not a number ({score})")
            scores.append(score)
        return scores
