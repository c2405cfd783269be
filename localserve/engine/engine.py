"""The continuous-batching loop: many requests, one llama.cpp context, one thread.

Why our own loop: llama-cpp-python's high-level ``Llama`` runs one sequence at a
time, and its server serialises requests; llama.cpp's throughput comes from
decoding many sequences in one ``llama_decode``. This is that loop, in Python over
the low-level bindings.

Each ``step()``:

1. admits waiting jobs into free slots (a slot is a llama.cpp sequence id). A new
   job starts from the longest cached prefix it can find, and the other idle slots
   are parked in host memory: cells.py owns where a job's cells come from (prefix
   reuse, parking, window checkpoints, reuse past a changed span);
2. packs one token for every generating job, then prompt chunks of jobs still
   reading their prompt (at most ``prefill_chunk`` tokens while others generate, so
   a long prompt never stalls running streams for long), into a single batch;
3. decodes it, samples one token per job that asked for logits, and turns tokens
   into text events; finished and cancelled jobs leave, their KV stays cached for
   the next request with the same prefix until the cells are needed (LRU).

The KV pool holds ``num_ctx x num_parallel`` cells and no job may grow past
``num_ctx`` positions, so jobs that hold a slot always fit; jobs beyond the slots
wait in the queue (admission control). With an automatic context (plan/context.py) the
pool is sized separately (``kv_cells``) and one job may grow to all of it, so that one
long conversation can use the room several short ones would share; when the pool runs
out, idle caches go first, then the longest job fails. Only this thread touches the
context.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from dataclasses import asdict

from localserve.engine.cells import Cells
from localserve.engine.job import EngineStats, Job, OutputParser, Slot
from localserve.engine.llama import Batch, Context, Model
from localserve.engine.logprobs import token_logprob
from localserve.engine.media import Projector
from localserve.engine.sampler import Sampler
from localserve.engine.speculate import (
    MODEL_MAX_DRAFT,
    CostGate,
    Drafter,
    DraftModel,
    DraftRequest,
)
from localserve.engine.text import StopMatcher
from localserve.errors import EngineError, PromptTooLongError
from localserve.runtime.options import LoadOptions
from localserve.runtime.protocol import (
    DoneEvent,
    ErrorEvent,
    Event,
    LogprobsEvent,
    ProgressEvent,
    RunnerStats,
)

# Prompt tokens per step for a job that wants their log-probabilities: llama.cpp keeps
# a row of logits for each (1 MiB a token for Gemma 3's vocabulary).
PROMPT_LOGPROBS_CHUNK = 64


class Engine:
    """Owns one llama.cpp context and runs the batching loop (call ``step`` repeatedly)."""

    def __init__(
        self,
        model: Model,
        options: LoadOptions,
        *,
        n_threads: int,
        kv_cells: int | None = None,
        park_idle: bool = True,
        projector: Projector | None = None,
        draft_model: DraftModel | None = None,
    ) -> None:
        self.model = model
        self.projector = projector
        # Speculative drafts from a second model (the engine closes it); None: n-gram
        # lookup, when options.speculative is "ngram".
        self.draft_model = draft_model
        # Whether drafts pay for themselves on this machine, for this text (timed).
        self.draft_gate = CostGate()
        self.options = options
        # ``kv_cells`` below num_ctx x num_parallel is only for tests of the no-room path.
        self.context = Context(model, options, n_threads=n_threads, n_ctx=kv_cells)
        shape = self.context.shape
        self.num_ctx = min(options.num_ctx, shape.n_ctx)
        self.batch = Batch(shape.n_batch)
        self.slots = [Slot(i) for i in range(shape.n_seq_max)]
        self.waiting: deque[Job] = deque()
        self.jobs: dict[str, Job] = {}
        self.stats = EngineStats()
        self._clock = itertools.count(1)
        # Where a job's cells come from: cached prefixes, checkpoints, parked sequences.
        # ``park_idle`` off keeps idle sequences in the KV cache (tests of the full pool).
        self.cells = Cells(
            self.context, model, options, self.slots, self.stats, park_idle=park_idle
        )

    def close(self) -> None:
        for job in list(self.jobs.values()):
            if job.sampler is not None:
                job.sampler.close()
        self.jobs.clear()
        self.batch.close()
        self.context.close()
        if self.draft_model is not None:
            self.draft_model.close()

    # ------------------------------------------------------------ interface

    def submit(self, job: Job) -> None:
        """Queue a job; raises EngineError for a prompt that can never fit."""
        if not job.tokens:
            raise PromptTooLongError("the prompt is empty after tokenization")
        if len(job.tokens) >= self.num_ctx:
            raise PromptTooLongError(
                f"the prompt is {len(job.tokens)} tokens, but the context holds {self.num_ctx}; "
                "shorten it or load the model with a larger num_ctx",
                tokens=len(job.tokens),
                limit=self.num_ctx,
            )
        if job.id in self.jobs:
            raise EngineError(f"duplicate request id {job.id}")
        if job.media and self.projector is None:
            raise EngineError("a prompt with media for a model without a projector")
        if job.tokens[-1] < 0:
            raise PromptTooLongError("the prompt must end with text, not with an image")
        job.sampler = Sampler(
            self.model, job.options, job.grammar, job.grammar_triggers, job.thinking
        )
        job.stops = StopMatcher(job.options.stop)
        job.parser = (job.parser_factory or OutputParser)(job.id)
        # A recurrent model's state cannot drop rejected drafts (no partial seq_rm).
        speculate = self.options.speculative != "off" and not self.model.is_recurrent
        if speculate and job.options.speculative:
            job.drafter = Drafter([t for t in job.tokens if t >= 0])
            # The draft model cannot see images: a prompt with media drafts by n-gram.
            job.draft_by_model = self.draft_model is not None and not job.media
        self.jobs[job.id] = job
        self.waiting.append(job)

    def cancel(self, job_id: str) -> None:
        job = self.jobs.get(job_id)
        if job is not None:
            job.cancelled = True

    def has_work(self) -> bool:
        return bool(self.jobs)

    def busy_slots(self) -> int:
        return sum(1 for s in self.slots if s.job is not None)

    def describe(self, request_id: str = "") -> RunnerStats:
        """The answer to a ``stats`` request: slots and caches now, counters so far."""
        return RunnerStats(
            request_id,
            slots_total=len(self.slots),
            slots_busy=self.busy_slots(),
            waiting=len(self.waiting),
            kv_cells=self.context.shape.n_ctx,
            kv_positions_cached=sum(len(s.tokens) for s in self.slots),
            parked_sequences=len(self.cells.parked),
            parked_bytes=self.cells.parked_bytes,
            checkpoint_bytes=self.cells.checkpoint_bytes,
            # Steps where drafts sat out because they cost more than they saved.
            draft_gate_paused_steps=self.draft_gate.paused_steps,
            **asdict(self.stats),
        )

    # ----------------------------------------------------------------- step

    def step(self) -> list[Event]:
        """One round of the loop; returns the events it produced (text, done, error)."""
        events: list[Event] = []
        self._drop_cancelled(events)
        self._admit(events)
        # (a job holding a scratch sequence too is listed once: by its own slot)
        running = [s.job for s in self.slots if s.job is not None and s.job.slot == s.index]
        if not running:
            return events
        events.extend(self._decode_round(running))
        return events

    def _drop_cancelled(self, events: list[Event]) -> None:
        for job in [j for j in self.jobs.values() if j.cancelled]:
            if job in self.waiting:
                self.waiting.remove(job)
            self._finish(job, "cancel", events)

    def _admit(self, events: list[Event]) -> None:
        deferred: list[Job] = []
        try:
            self._admit_waiting(deferred, events)
        finally:
            self.waiting.extendleft(reversed(deferred))  # in their order, at the front

    def _admit_waiting(self, deferred: list[Job], events: list[Event]) -> None:
        while self.waiting:
            free = [s for s in self.slots if s.job is None]
            if not free:
                return
            job = self.waiting.popleft()
            parent = job.parent
            if parent is not None and parent.id in self.jobs and not parent.generating:
                deferred.append(job)  # its prompt cells are not there to copy yet
                continue

            slot, reuse = self.cells.place(job, free)
            job.slot = slot.index
            job.n_past = reuse
            job.cached = reuse
            if job.reattach is not None and job.reattach[1] == reuse:
                self.cells.reattach(job)  # a span removed: nothing to read before the chunk
            if reuse:
                self.stats.prefix_hits += 1
                self.stats.prefix_tokens += reuse
            assert job.sampler is not None
            job.sampler.accept_prompt([t for t in job.tokens if t >= 0])
            slot.job = job
            slot.last_used = next(self._clock)
            if job.progress:
                events.append(_progress(job))
            self.cells.park_idle_slots()

    def _decode_round(self, running: list[Job]) -> list[Event]:
        events: list[Event] = []
        generating = [j for j in running if j.generating]
        reading = [j for j in running if not j.generating]
        n_batch = self.context.shape.n_batch
        speculating = any(j.drafter is not None for j in generating)
        if speculating:  # the cost gate's measure of this step starts here
            started_ns = time.perf_counter_ns()
            emitted_before = sum(j.generated for j in generating)
        ran_draft_model = self._draft(generating, n_batch) if speculating else False
        budget = n_batch - sum(1 + len(j.draft) for j in generating)
        if generating:
            budget = min(budget, self.options.prefill_chunk)
        # A medium takes a step of its own (its embeddings are a batch of their own);
        # one per step, so that other streams wait for one medium at most. Jobs at a
        # medium that is not their turn sit this step out.
        at_media = [j for j in reading if j.n_past in j.media]
        if at_media:
            self._evaluate_media(at_media[0], events)
            reading = [j for j in reading if j.n_past not in j.media and j.id in self.jobs]
            if not generating and not reading:
                return events
        while True:
            plan = self._fill_batch(generating, reading, budget)
            started = time.perf_counter_ns()
            for job, _, _ in plan:
                if not job.generating and not job.prompt_started_ns:
                    job.prompt_started_ns = started
            rc = self.context.decode(self.batch)
            if rc == 0:
                break
            if rc != 1:
                for job, _, _ in plan:
                    self._fail(job, f"llama_decode failed ({rc})", events)
                return events
            # No KV slot for this batch; nothing was applied. As llama.cpp's server
            # does: make room, or try a smaller batch (drafts go first).
            self.stats.kv_full_retries += 1
            if any(j.draft for j in generating):
                for j in generating:
                    j.draft = []
                continue
            if self.cells.free_idle():
                continue
            if budget > 1 and any(not job.generating for job, _, _ in plan):
                budget //= 2
                continue
            victim = max((job for job, _, _ in plan), key=lambda j: j.n_past)
            self._fail(victim, "the KV cache is full", events)
            generating = [j for j in generating if j is not victim]
            reading = [j for j in reading if j is not victim]
            if not generating and not reading:
                return events

        self.stats.steps += 1
        fed_drafts = ran_draft_model or any(j.draft for j in generating)
        jobs_in_step = len(plan)
        self.stats.max_jobs_in_step = max(self.stats.max_jobs_in_step, jobs_in_step)
        if jobs_in_step > 1:
            self.stats.multi_job_steps += 1
        now = time.perf_counter_ns()
        for job, count, row in plan:
            slot = self.slots[job.slot]
            if job.generating and job.draft:
                self._verify(job, row, events)
                continue
            if job.generating:
                slot.tokens.append(job.last_token)
            else:
                slot.tokens.extend(job.tokens[job.n_past : job.n_past + count])
                self.stats.prompt_tokens += count
                if job.prompt_logprobs:
                    events.append(self._prompt_logprobs(job, count))
            job.n_past += count
            if job.reattach is not None and job.n_past == job.reattach[1]:
                self.cells.reattach(job)
            if not job.generating:
                self.cells.prompt_read(slot, job.n_past, at_end=row >= 0)
            if job.progress and not job.generating:
                events.append(_progress(job))
            if row < 0:
                continue  # more prompt to read
            if not job.generating:
                job.generating = True
                job.prompt_done_ns = now
                if job.options.num_predict == 0:
                    self._finish(job, "length", events)  # only the prompt was wanted
                    continue
            assert job.sampler is not None
            token = job.sampler.sample(self.context, row)
            self._on_token(job, token, events, row)
        if speculating and not reading and not at_media:
            # A step of generation alone: what it cost per token, for the cost gate.
            self.draft_gate.observe(
                fed_drafts,
                (time.perf_counter_ns() - started_ns) / 1e9,
                sum(j.generated for j in generating) - emitted_before,
            )
        return events

    def _prompt_logprobs(self, job: Job, count: int) -> LogprobsEvent:
        """Log-probabilities of the prompt tokens after this step's chunk: row i's
        logits predict token i + 1; the first token has none (None)."""
        entries = []
        if job.n_past == 0:
            piece = self.model.piece(job.tokens[0])
            entries.append(
                {
                    "token": piece.decode("utf-8", "replace"),
                    "logprob": None,
                    "bytes": list(piece),
                    "top_logprobs": [],
                }
            )
        for i in range(count):
            following = job.n_past + i + 1
            if following < len(job.tokens):
                logits = self.context.logits(job.first_row + i)
                entries.append(
                    token_logprob(self.model, logits, job.tokens[following], max(job.logprobs, 0))
                )
        return LogprobsEvent(job.id, entries, prompt=True)

    def _fill_batch(
        self, generating: list[Job], reading: list[Job], budget: int
    ) -> list[tuple[Job, int, int]]:
        """Fill the batch; returns (job, tokens added, logits row or -1) per job."""
        self.batch.clear()
        plan: list[tuple[Job, int, int]] = []
        for job in generating:
            row = self.batch.n_tokens
            fed = (job.last_token, *job.draft)
            # With a draft, every position's logits: each is sampled in turn (_verify).
            self.batch.add(fed, job.n_past, job.slot, True, want_all_logits=bool(job.draft))
            plan.append((job, len(fed), row))
        for job in reading:
            if budget <= 0:
                break
            remaining = job.text_ahead()
            if job.reattach is not None:  # read up to where the moved chunk joins
                remaining = min(remaining, job.reattach[1] - job.n_past)
            take = min(remaining, budget)
            if job.prompt_logprobs:
                take = min(take, PROMPT_LOGPROBS_CHUNK)
            last = job.n_past + take == len(job.tokens)
            job.first_row = self.batch.n_tokens
            self.batch.add(
                job.tokens[job.n_past : job.n_past + take],
                job.n_past,
                job.slot,
                last,
                want_all_logits=job.prompt_logprobs,
            )
            plan.append((job, take, self.batch.n_tokens - 1 if last else -1))
            budget -= take
        return plan

    def _evaluate_media(self, job: Job, events: list[Event]) -> None:
        """Encode the medium at ``job.n_past`` and decode it into the job's sequence."""
        assert self.projector is not None
        chunk = job.media[job.n_past]
        if not job.prompt_started_ns:
            job.prompt_started_ns = time.perf_counter_ns()
        while True:
            rc = self.projector.evaluate(chunk, self.context, job.n_past, job.slot)
            if rc == 0:
                break
            # Part of it may be in: drop that, then make room as for text, or give up.
            self.context.seq_rm(job.slot, job.n_past, -1)
            self.stats.kv_full_retries += 1
            if not self.cells.free_idle():
                self._fail(job, f"the {chunk.kind} could not be decoded (llama.cpp: {rc})", events)
                return
        self.stats.media_encoded += 1
        self.stats.prompt_tokens += chunk.n_tokens
        self.slots[job.slot].tokens.extend(job.tokens[job.n_past : job.n_past + chunk.n_pos])
        job.n_past += chunk.n_pos
        if job.progress:
            events.append(_progress(job))

    def _draft(self, generating: list[Job], n_batch: int) -> bool:
        """This step's draft for each generating job that drafts, within the batch, the
        context and the tokens the job may still produce; none while the cost gate
        says drafts cost more than they save. Returns whether the draft model ran."""
        room = n_batch - len(generating)
        by_model: list[tuple[Job, DraftRequest]] = []
        allowed = self.draft_gate.allow(len(generating))
        for job in generating:
            job.draft = []
            if job.drafter is None or room <= 0 or not allowed:
                continue
            limit = min(room, self.num_ctx - job.n_past - 2)
            if job.options.num_predict >= 0:
                limit = min(limit, job.options.num_predict - job.generated - 1)
            if job.draft_by_model:
                wanted = job.drafter.budget(min(limit, MODEL_MAX_DRAFT))
                if wanted > 0:
                    by_model.append((job, DraftRequest(job.slot, job.drafter.history, wanted)))
                    room -= wanted
                continue
            job.draft = job.drafter.draft(limit, busy=len(generating) > 1)
            room -= len(job.draft)
        if not by_model or self.draft_model is None:
            return False
        guesses = self.draft_model.draft([request for _, request in by_model])
        for (job, _), guess in zip(by_model, guesses, strict=True):
            job.draft = guess
        return True

    def _verify(self, job: Job, row: int, events: list[Event]) -> None:
        """Sample each fed position in order, as plain decoding would have: position i's
        logits are valid while the drafts before it were the tokens sampled. Keep the
        cells of what was valid, drop the rest."""
        slot = self.slots[job.slot]
        draft = job.draft
        job.draft = []
        drafter = job.drafter
        assert drafter is not None
        # Counted before the tokens go out: the done event may be among them.
        drafter.drafted += len(draft)
        self.stats.draft_tokens += len(draft)
        fed = [job.last_token, *draft]
        accepted = 0
        for i, token_in in enumerate(fed):
            slot.tokens.append(token_in)
            job.n_past += 1
            assert job.sampler is not None
            token = job.sampler.sample(self.context, row + i)
            kept = i < len(draft) and token == draft[i]
            if kept:
                accepted += 1
                drafter.accepted += 1
                self.stats.draft_accepted += 1
            self._on_token(job, token, events, row + i)
            if job.id not in self.jobs or not kept:  # finished (stop, length, failed)
                break
        # Cells past the last valid position hold rejected drafts.
        self.context.seq_rm(job.slot, job.n_past, -1)
        drafter.adapt(len(draft), accepted)

    def _on_token(self, job: Job, token: int, events: list[Event], row: int) -> None:
        if self.model.is_eog(token) and not job.options.ignore_eos:
            self._finish(job, "stop", events)
            return
        if job.logprobs >= 0:
            entry = token_logprob(self.model, self.context.logits(row), token, job.logprobs)
            events.append(LogprobsEvent(job.id, [entry]))
        job.generated += 1
        job.output.append(token)
        job.last_token = token
        if job.drafter is not None:
            job.drafter.push(token)
        self.stats.generated_tokens += 1
        assert job.stops is not None
        assert job.parser is not None
        piece = self.model.piece(token, special=token in job.preserved_tokens)
        text = job.stops.feed(job.utf8.feed(piece))
        if text:
            events.extend(job.parser.feed(text))
        if job.stops.stopped:
            self._finish(job, "stop", events)
        elif 0 <= job.options.num_predict <= job.generated or job.n_past + 1 >= self.num_ctx:
            self._finish(job, "length", events)

    def _finish(self, job: Job, reason: str, events: list[Event]) -> None:
        assert job.stops is not None
        assert job.parser is not None
        tail = job.stops.feed(job.utf8.flush())
        tail += job.stops.flush()
        if reason != "cancel":
            events.extend(job.parser.feed(tail))
            events.extend(job.parser.flush())
        now = time.perf_counter_ns()
        prompt_end = job.prompt_done_ns or now
        events.append(
            DoneEvent(
                id=job.id,
                done_reason=reason,
                prompt_eval_count=len(job.tokens),
                prompt_cached=job.cached,
                prompt_eval_duration=max(0, prompt_end - (job.prompt_started_ns or prompt_end)),
                eval_count=job.generated,
                eval_duration=max(0, now - prompt_end) if job.prompt_done_ns else 0,
                queue_duration=max(0, (job.prompt_started_ns or now) - job.submitted_ns),
                dropped_messages=job.dropped_messages,
                draft_count=job.drafter.drafted if job.drafter else 0,
                draft_accepted=job.drafter.accepted if job.drafter else 0,
                stop_sequence=job.stops.matched,
                # Without media placeholders: a later request cannot send those back.
                context=[t for t in job.tokens if t >= 0] + job.output
                if job.want_context
                else None,
            )
        )
        self._release(job)

    def _fail(self, job: Job, message: str, events: list[Event]) -> None:
        events.append(ErrorEvent(job.id, message))
        if job.slot >= 0:
            # Its cells may hold a half-applied batch: drop them rather than trust them.
            self.cells.clear(self.slots[job.slot])
        self._release(job)

    def _release(self, job: Job) -> None:
        self.cells.drop_scratch(job)
        if job.slot >= 0 and self.slots[job.slot].job is job:
            slot = self.slots[job.slot]
            slot.job = None
            slot.last_used = next(self._clock)
        if job.sampler is not None:
            job.sampler.close()
            job.sampler = None
        self.jobs.pop(job.id, None)


def _progress(job: Job) -> ProgressEvent:
    """How far ``job`` has read its prompt (llama-server's ``prompt_progress``)."""
    started = job.prompt_started_ns or time.perf_counter_ns()
    return ProgressEvent(
        job.id,
        total=len(job.tokens),
        cache=job.cached,
        processed=job.n_past - job.cached,
        time_ms=(time.perf_counter_ns() - started) // 1_000_000,
    )
