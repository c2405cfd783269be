"""A request's sampling: llama.cpp's sampler chain, and its grammars checked the cheap way.

The chain (penalties, top-k, top-p, min-p, temperature, dist, or greedy) is llama.cpp's
own; what this module adds is how a grammar (JSON output, enforced tool calls) is
applied: by rejection, as llama-server does, and lazily, watching for a tool call's
first marker without constraining the text before it (see ``Sampler``).
"""

from __future__ import annotations

import ctypes
import math
import re
from collections.abc import Sequence

import llama_cpp.llama_cpp as L  # noqa: TID253 - the engine owns llama_cpp
import numpy as np

from localserve.engine.llama import Context, Model
from localserve.engine.thinking_budget import ThinkingBudget, ThinkingLimit
from localserve.errors import EngineError
from localserve.runtime.options import SamplingOptions

# llama_token_data as numpy lays it out: the candidates a grammar is applied to.
TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])


class Sampler:
    """One request's sampler chain (penalties, top-k, top-p, min-p, temperature, dist)
    plus, for JSON output, a grammar checked by rejection sampling as llama.cpp's
    own server does: sample freely, and only when the token breaks the grammar,
    apply the grammar to the whole vocabulary and sample again."""

    def __init__(
        self,
        model: Model,
        options: SamplingOptions,
        grammar: str | None = None,
        triggers: Sequence[str] = (),
        thinking: ThinkingLimit | None = None,
    ) -> None:
        self.model = model
        self.chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
        if options.ignore_eos:
            eog = model.eog_tokens()
            biases = (L.llama_logit_bias * len(eog))(
                *[L.llama_logit_bias(t, -math.inf) for t in eog]
            )
            L.llama_sampler_chain_add(
                self.chain, L.llama_sampler_init_logit_bias(model.n_vocab, len(eog), biases)
            )
        self.penalties = None
        self.penalty_last_n = 0
        uses_penalties = (
            options.repeat_penalty != 1.0
            or options.frequency_penalty != 0.0
            or options.presence_penalty != 0.0
        )
        if uses_penalties and options.repeat_last_n != 0:
            last_n = model.n_ctx_train if options.repeat_last_n < 0 else options.repeat_last_n
            self.penalty_last_n = last_n
            self.penalties = L.llama_sampler_init_penalties(
                model.n_vocab,
                last_n,
                options.repeat_penalty,
                options.frequency_penalty,
                options.presence_penalty,
            )
            L.llama_sampler_chain_add(self.chain, self.penalties)
        if options.greedy:
            L.llama_sampler_chain_add(self.chain, L.llama_sampler_init_greedy())
        else:
            if options.top_k > 0:
                L.llama_sampler_chain_add(self.chain, L.llama_sampler_init_top_k(options.top_k))
            if options.top_p < 1.0:
                L.llama_sampler_chain_add(self.chain, L.llama_sampler_init_top_p(options.top_p, 1))
            if options.min_p > 0.0:
                L.llama_sampler_chain_add(self.chain, L.llama_sampler_init_min_p(options.min_p, 1))
            L.llama_sampler_chain_add(self.chain, L.llama_sampler_init_temp(options.temperature))
            seed = L.LLAMA_DEFAULT_SEED if options.seed < 0 else options.seed & 0xFFFFFFFF
            L.llama_sampler_chain_add(self.chain, L.llama_sampler_init_dist(seed))
        self.grammar = None
        # A lazy grammar constrains nothing until a trigger matches the generated text:
        # until then the fast path samples (one C call, no copy of the vocabulary's
        # logits) and the grammar only watches. llama.cpp does not say when it has
        # triggered, so the same regexes are matched here on the same text.
        self._waiting = [re.compile(t, re.DOTALL) for t in triggers]
        self._seen = ""
        # A thinking budget forces the thinking block's close once it is spent (a lazy
        # grammar waiting for that close, an enforced call's, then switches on).
        self.budget = ThinkingBudget(thinking) if thinking is not None else None
        if grammar is not None:
            if triggers:
                # Lazy: inactive until the generated text matches a trigger regex; from
                # then on constrained, starting at the regex's first capture group.
                patterns = (ctypes.c_char_p * len(triggers))(*[t.encode() for t in triggers])
                no_tokens = (L.llama_token * 1)()
                self.grammar = L.llama_sampler_init_grammar_lazy_patterns(
                    model.vocab, grammar.encode(), b"root", patterns, len(triggers), no_tokens, 0
                )
            else:
                self.grammar = L.llama_sampler_init_grammar(model.vocab, grammar.encode(), b"root")
            if not self.grammar:
                self.close()
                raise EngineError("the output format's grammar could not be compiled")
            self._candidates = np.empty(model.n_vocab, dtype=TOKEN_DATA)
            self._ids = np.arange(model.n_vocab, dtype=np.int32)

    def accept_prompt(self, tokens: Sequence[int]) -> None:
        """Let the repetition penalties see the prompt, as llama.cpp's server does."""
        if self.penalties is not None:
            for token in tokens[-self.penalty_last_n :]:
                L.llama_sampler_accept(self.penalties, token)

    def sample(self, context: Context, row: int) -> int:
        budget = self.budget
        if budget is None:
            return self._sample(context, row)
        if self.grammar is not None and not self._waiting:
            # The grammar constrains the text now (a call begun inside the thought):
            # a forced close would break it, and the call ends the thought anyway.
            self.budget = None
            return self._sample(context, row)
        token = budget.forced()
        if token is None:
            token = self._sample(context, row)
        else:
            L.llama_sampler_accept(self.chain, token)  # as if sampled: the penalties see it
            if self.grammar is not None:
                self._watch(token)
        budget.accept(token, self.model.piece(token, special=True))
        if budget.done:
            self.budget = None
        return token

    def _sample(self, context: Context, row: int) -> int:
        if self.grammar is None:
            # Samples and accepts in one C call.
            return int(L.llama_sampler_sample(self.chain, context.handle, row))
        if self._waiting:
            token = int(L.llama_sampler_sample(self.chain, context.handle, row))
            self._watch(token)
            return token
        token = self._sample_with(context, row, grammar_first=False)
        if not self._grammar_allows(token):
            token = self._sample_with(context, row, grammar_first=True)
        L.llama_sampler_accept(self.chain, token)
        L.llama_sampler_accept(self.grammar, token)
        return token

    def _watch(self, token: int) -> None:
        """A token taken while the lazy grammar waits: the grammar sees it, and so do
        the trigger regexes here, to know when it has switched on."""
        assert self.grammar is not None
        L.llama_sampler_accept(self.grammar, token)
        self._seen += self.model.piece(token, special=True).decode("utf-8", "replace")
        if any(pattern.fullmatch(self._seen) for pattern in self._waiting):
            self._waiting, self._seen = [], ""  # triggered: constrained from now on

    def _sample_with(self, context: Context, row: int, *, grammar_first: bool) -> int:
        candidates = self._candidates
        candidates["id"] = self._ids
        candidates["logit"] = context.logits(row)
        candidates["p"] = 0.0
        array = L.llama_token_data_array(
            data=candidates.ctypes.data_as(ctypes.POINTER(L.llama_token_data)),
            size=len(candidates),
            selected=-1,
            sorted=False,
        )
        if grammar_first:
            L.llama_sampler_apply(self.grammar, ctypes.byref(array))
        L.llama_sampler_apply(self.chain, ctypes.byref(array))
        if array.selected < 0:
            raise EngineError("no token satisfies the output grammar")
        return int(array.data[array.selected].id)

    def _grammar_allows(self, token: int) -> bool:
        single = (L.llama_token_data * 1)(L.llama_token_data(token, 1.0, 0.0))
        array = L.llama_token_data_array(data=single, size=1, selected=-1, sorted=False)
        L.llama_sampler_apply(self.grammar, ctypes.byref(array))
        return not math.isinf(single[0].logit)

    def close(self) -> None:
        if self.chain:
            L.llama_sampler_free(self.chain)  # frees the samplers it owns (penalties included)
            self.chain = None
        if self.grammar:
            L.llama_sampler_free(self.grammar)
            self.grammar = None
