"""Speculative drafts from the sequence's own text (prompt lookup, n-gram).

When the last few tokens of a sequence appeared before in its prompt or output, the
tokens that followed them then are a good guess for what comes next: a model that
copies, quotes, edits code or repeats a structure repeats them. The engine feeds the
guess (the draft) with the sequence's next token in the same ``llama_decode`` as
every other sequence's token, samples each position in order from the model's own
distribution, and keeps the drafted tokens up to the first one the sampler did not
pick. Each kept token saves a whole step. Sampling is unchanged: every token comes
from the same sampler with the same state as without drafts (a draft only decides
which logits are already computed), so greedy output is identical and sampled output
has the same distribution.

A sequence whose drafts keep failing pauses drafting for longer and longer
(``Drafter.failed``), so text that has nothing to copy costs little more than
plain decoding.

``DraftModel`` guesses with a second, smaller model that shares the target's
vocabulary (``LOCALSERVE_SPECULATIVE=<model name>``): it reads each sequence in a
context of its own and proposes greedily, for every drafting sequence in one
``llama_decode`` per drafted position, while it is sure enough of its guess.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from localserve.engine.llama import Batch, Context, Model
from localserve.errors import InvalidOptionError
from localserve.runtime.options import LoadOptions

# Suffix lengths tried, longest first: a longer match predicts better. No shorter
# match than 6 tokens: every drafted row costs a row of the output layer (a large
# vocabulary makes that most of a token's compute on a CPU), and free text repeats
# short runs ("of the") whose drafts would mostly be rejected; a copy re-syncs after
# six tokens. (llama-server's ngram-simple waits for 12.) ``busy`` sequences, beside
# others in the batch, wait for 8.
NGRAM_SIZES = (12, 8, 6)
BUSY_MIN_NGRAM = 8
# Drafts are as long as they were useful: the first is FIRST_DRAFT tokens, one kept
# whole doubles the next (up to MAX_DRAFT, llama-server's ngram-simple drafts 48), one
# cut short sets it to what was kept plus one, but never below MIN_DRAFT: a copy that
# diverged for a word re-syncs and goes on for long runs. (Measured on the copy task:
# 16/48/8 gave 1.06x llama-server's ngram-simple at 1 stream, 8/32/1 gave 0.85-0.94x;
# free writing, where drafts are rare, was within the run-to-run noise with both.)
MAX_DRAFT = 48
FIRST_DRAFT = 16
MIN_DRAFT = 8
# A draft model's guesses cost a decode of the draft model each, one after another,
# where an n-gram lookup costs nothing: its drafts stop at this length.
MODEL_MAX_DRAFT = 8
# After this many failed drafts in a row, skip 2, 4, 8... steps (at most MAX_PAUSE).
MAX_PAUSE = 32


class Drafter:
    """Per sequence: an index of where each n-gram of its history was last seen."""

    def __init__(self, prompt: Sequence[int]) -> None:
        self.history = list(prompt)  # the prompt, then every token the sampler picked
        self._seen: dict[tuple[int, ...], int] = {}  # n-gram -> index just after it
        self._indexed = 0  # history positions whose n-grams ending there are indexed
        self._misses = 0
        self._pause = 0  # steps to skip before the next draft
        self._length = FIRST_DRAFT
        self.drafted = 0  # tokens proposed
        self.accepted = 0  # of them, the ones the sampler picked

    def push(self, token: int) -> None:
        self.history.append(token)

    def budget(self, limit: int) -> int:
        """How many tokens this sequence may draft this step: none while paused, else
        up to its current draft length (``record`` adapts it)."""
        if limit <= 0:
            return 0
        if self._pause > 0:
            self._pause -= 1
            return 0
        return min(limit, self._length)

    def draft(self, limit: int, *, busy: bool = False) -> list[int]:
        """Up to ``limit`` tokens that followed the latest earlier occurrence of the
        history's longest matching suffix; [] when nothing matches or while paused."""
        wanted = self.budget(limit)
        return self.lookup(wanted, busy=busy) if wanted else []

    def lookup(self, wanted: int, *, busy: bool = False) -> list[int]:
        """The n-gram guess itself: up to ``wanted`` tokens, [] when nothing matches."""
        history = self.history
        end = len(history)
        # Index every n-gram that ends before the last token (the suffix itself must
        # find an earlier occurrence, not itself).
        for stop in range(self._indexed, end - 1):
            for n in NGRAM_SIZES:
                if stop + 1 >= n:
                    self._seen[tuple(history[stop + 1 - n : stop + 1])] = stop + 1
        self._indexed = max(self._indexed, end - 1)
        for n in NGRAM_SIZES:
            if end < n or (busy and n < BUSY_MIN_NGRAM):
                continue
            start = self._seen.get(tuple(history[end - n :]))
            if start is None:
                continue
            found = []
            for token in history[start : start + wanted]:
                if token < 0:  # an image's placeholder: not a token to feed
                    break
                found.append(token)
            return found
        return []

    def record(self, drafted: int, accepted: int) -> None:
        """Count one draft's outcome and adapt to it (``adapt``)."""
        self.drafted += drafted
        self.accepted += accepted
        self.adapt(drafted, accepted)

    def adapt(self, drafted: int, accepted: int) -> None:
        """Draft longer after a draft kept whole, shorter after one cut short, and pause
        longer after each draft with nothing kept."""
        if accepted == drafted:
            self._length = min(MAX_DRAFT, self._length * 2)
        else:
            self._length = max(MIN_DRAFT, accepted + 1)
        if accepted:
            self._misses = 0
        else:
            self._misses += 1
            self._pause = min(MAX_PAUSE, 1 << self._misses) if self._misses > 1 else 0


# The cost gate (``CostGate``): compare a step's seconds per emitted token with and
# without drafts over at least this many steps of each kind...
GATE_MIN_ON = 4
GATE_MIN_OFF = 2
# ...forcing a step without drafts after PROBE_EVERY drafting steps in a row (the price
# of knowing: one step in 16 at the plain rate), or after 4 x PROBE_EVERY while drafts
# cost less than half as much per token (a copy: a plain step there costs the most)...
PROBE_EVERY = 16
# ...and when drafting costs more per token, skip it for GATE_PAUSE steps, doubled on
# each loss in a row up to GATE_MAX_PAUSE, then measure it again.
GATE_PAUSE = 32
GATE_MAX_PAUSE = 512
# Weight of the newest step in the running means.
GATE_WEIGHT = 0.25


class CostGate:
    """Whether speculative drafts pay on this machine, for this text, measured.

    A drafted row costs the target a row of compute, and a draft model's guesses cost a
    decode of it each. What the kept tokens save depends on the text, the models and
    the hardware: on a CPU, beside other sequences, the batch is compute-bound and
    every rejected row costs about a token; a draft model whose output layer is as
    large as the target's (a small, vocabulary-heavy target) costs nearly a target step
    per guess. So the engine times every generation step and feeds ``observe``: the
    step's seconds and the tokens it emitted, with drafts (or the draft model) or
    without. While drafting steps cost more per token than plain ones, ``allow`` says
    no, for longer and longer pauses. Plain steps come by themselves when nothing
    matches; when every step drafts, one is forced now and then to keep that number
    fresh. The cost per token depends on how many sequences generate together, so each
    batch size has its own verdict.
    """

    def __init__(self) -> None:
        self._verdicts: dict[int, _Verdict] = {}
        self._current = _Verdict()
        self.paused_steps = 0  # for the stats: steps the gate said no

    def allow(self, sequences: int) -> bool:
        """May this step, with ``sequences`` generating, feed drafts?"""
        verdict = self._current = self._verdicts.setdefault(sequences, _Verdict())
        if verdict.skip > 0:
            verdict.skip -= 1
            self.paused_steps += 1
            return False
        winning = verdict.off.count and verdict.on.value < verdict.off.value / 2
        if verdict.since_plain >= PROBE_EVERY * (4 if winning else 1) or (
            verdict.on.count >= GATE_MIN_ON and verdict.off.count < GATE_MIN_OFF
        ):
            verdict.since_plain = 0
            return False
        return True

    def observe(self, drafted: bool, seconds: float, tokens: int) -> None:
        """The step ``allow`` was last asked about: did it feed drafts (or run the
        draft model), how long did it take, how many tokens did it emit."""
        verdict = self._current
        if tokens <= 0:
            return
        if not drafted:
            verdict.off.add(seconds / tokens)
            verdict.since_plain = 0
            return
        verdict.since_plain += 1
        verdict.on.add(seconds / tokens)
        if verdict.on.count < GATE_MIN_ON or verdict.off.count < GATE_MIN_OFF:
            return
        if verdict.on.value > verdict.off.value:
            verdict.skip = verdict.pause
            verdict.pause = min(GATE_MAX_PAUSE, verdict.pause * 2)
            verdict.on = _Mean()  # measured afresh after the pause
        else:
            verdict.pause = GATE_PAUSE


class _Verdict:
    """The gate's measurements and decision for one batch size."""

    def __init__(self) -> None:
        self.on = _Mean()  # seconds per token of steps that fed drafts
        self.off = _Mean()  # ... and of steps that did not
        self.skip = 0  # steps left without drafts
        self.pause = GATE_PAUSE  # the next pause, if drafting loses again
        self.since_plain = 0  # drafting steps since the last plain one


class _Mean:
    """An exponentially weighted running mean and how many values went in."""

    def __init__(self) -> None:
        self.value = 0.0
        self.count = 0

    def add(self, x: float) -> None:
        self.value = x if self.count == 0 else self.value + GATE_WEIGHT * (x - self.value)
        self.count += 1


# A draft model's guess is kept only while its probability is at least this: an unsure
# guess is usually rejected, and each rejected row still costs the target a row of
# compute, and the draft model a decode. (llama-server's --draft-p-min is the same
# rule; it defaults to 0 there, but drafts at most 3 tokens, where we draft up to
# MAX_DRAFT while the guesses hold.) LOCALSERVE_DRAFT_P_MIN sets it.
P_MIN = 0.75
# Prompt tokens the draft model reads per step when it first meets a sequence: a long
# prompt is caught up over several steps (no draft meanwhile), so that other streams
# never wait for a whole prompt on the draft model.
CATCH_UP_CHUNK = 512
# llama.cpp's own compatibility rule for draft models: vocabularies may differ by a
# few added tokens at the end, and the first few ids (specials) are not compared.
MAX_VOCAB_DIFFERENCE = 128
FIRST_COMPARED_TOKEN = 5


@dataclass(frozen=True)
class DraftRequest:
    slot: int  # the sequence id, the same in the draft model's context as the target's
    history: Sequence[int]  # every token of the sequence so far (no media)
    wanted: int  # tokens to draft at most


def check_vocabularies(target: Model, draft: Model, *, target_name: str, draft_name: str) -> None:
    """Refuse a draft model whose tokens mean other text than the target's: its guesses
    would be token ids of another vocabulary."""

    def refuse(why: str) -> InvalidOptionError:
        return InvalidOptionError(
            f"the draft model {draft_name} does not share {target_name}'s vocabulary: {why}",
            hint="use a smaller model of the same family as the draft "
            "(LOCALSERVE_SPECULATIVE), or ngram",
        )

    if abs(target.n_vocab - draft.n_vocab) > MAX_VOCAB_DIFFERENCE:
        raise refuse(f"{draft.n_vocab} tokens against {target.n_vocab}")
    if (target.bos, target.eos, target.add_bos) != (draft.bos, draft.eos, draft.add_bos):
        raise refuse("its begin/end-of-text tokens differ")
    ours, theirs = target.vocabulary(), draft.vocabulary()
    for token in range(FIRST_COMPARED_TOKEN, min(target.n_vocab, draft.n_vocab)):
        if ours[token] != theirs[token]:
            raise refuse(
                f"token {token} is {ours[token].decode('utf-8', 'replace')!r} in one "
                f"and {theirs[token].decode('utf-8', 'replace')!r} in the other"
            )


class DraftModel:
    """A small model guessing the target's next tokens, greedily. Its context holds one
    sequence per slot of the target's; each holds what the draft model has read of that
    slot's sequence, and is cut back to what still matches before every draft."""

    def __init__(
        self,
        model: Model,
        *,
        n_slots: int,
        num_ctx: int,
        n_threads: int,
        kv_cache_type: str = "f16",
        n_vocab_target: int | None = None,
        p_min: float = P_MIN,
        kv_cells: int | None = None,
    ) -> None:
        self.model = model
        self.p_min = p_min
        # Tokens past the target's vocabulary would be invalid input to it.
        self.n_vocab = min(model.n_vocab, n_vocab_target or model.n_vocab)
        options = LoadOptions(
            num_ctx=num_ctx,
            num_parallel=n_slots,
            num_batch=CATCH_UP_CHUNK + n_slots,
            kv_cache_type=kv_cache_type,
            speculative="off",
            # Its copies are cut back to wherever drafts were rejected: the whole cache
            # in every layer (llama.cpp's swa_full), not a sliding window's.
            swa_full=True,
        )
        # No LoRA adapters: they belong to the target.
        # ``kv_cells``: the target's pool, when its context is the planner's choice.
        self.context = Context(model, options, n_threads=n_threads, adapters=[], n_ctx=kv_cells)
        self.batch = Batch(self.context.shape.n_batch)
        self.read: list[list[int]] = [[] for _ in range(self.context.shape.n_seq_max)]
        self.decodes = 0  # llama_decode calls, for the stats

    def close(self) -> None:
        self.batch.close()
        self.context.close()
        self.model.close()

    def draft(self, requests: Sequence[DraftRequest]) -> list[list[int]]:
        """Each request's guess (possibly empty), in order."""
        found: list[list[int]] = [[] for _ in requests]
        rows = self._catch_up(requests)
        while self.batch.n_tokens:
            if self.context.decode(self.batch) != 0:
                # No room in the draft model's cache, or an error: draft nothing more
                # this step and let those sequences be read again next time.
                for request in requests:
                    self.context.seq_rm(request.slot)
                    self.read[request.slot] = []
                return found
            self.decodes += 1
            # Read every row's logits before the batch is refilled for the next position.
            guesses = {index: self._guess(row) for index, row in rows.items()}
            self.batch.clear()
            rows = {}
            for index, token in guesses.items():
                if token is None:
                    continue
                request = requests[index]
                found[index].append(token)
                if len(found[index]) < request.wanted:
                    read = self.read[request.slot]
                    self.batch.add([token], len(read), request.slot, True)
                    read.append(token)
                    rows[index] = self.batch.n_tokens - 1
        return found

    def _catch_up(self, requests: Sequence[DraftRequest]) -> dict[int, int]:
        """Fill the batch with what each sequence's draft copy lacks; returns, for each
        request whose copy will be complete, its logits row."""
        self.batch.clear()
        budget = CATCH_UP_CHUNK
        rows: dict[int, int] = {}
        for index, request in enumerate(requests):
            history = request.history
            if request.wanted <= 0 or not history:
                continue
            read = self.read[request.slot]
            keep = 0
            limit = min(len(read), len(history) - 1)  # the last token is fed again
            while keep < limit and read[keep] == history[keep]:
                keep += 1
            take = min(len(history) - keep, budget)
            if take <= 0:
                continue
            self.context.seq_rm(request.slot, keep, -1)
            complete = keep + take == len(history)
            self.batch.add(history[keep : keep + take], keep, request.slot, complete)
            self.read[request.slot] = list(history[: keep + take])
            budget -= take
            if complete:
                rows[index] = self.batch.n_tokens - 1
        return rows

    def _guess(self, row: int) -> int | None:
        """The most likely next token, if the draft model is sure enough of it."""
        logits = self.context.logits(row)[: self.n_vocab]
        token = int(np.argmax(logits))
        if self.p_min > 0:
            probability = 1.0 / float(np.exp(logits - logits[token]).sum())
            if probability < self.p_min:
                return None
        return token
