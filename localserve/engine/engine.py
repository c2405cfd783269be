"""The continuous-batching loop: many requests, one llama.cpp context, one thread.

Why our own loop: llama-cpp-python's high-level ``Llama`` runs one sequence at a
time, and its server serialises requests; llama.cpp's throughput comes from
decoding many sequences in one ``llama_decode``. This is that loop, in Python over
the low-level bindings.

Each ``step()``:

1. admits waiting jobs into free slots (a slot is a llama.cpp sequence id). A new
   job starts from the longest cached prefix it can find: the idle slot it lands in,
   or a copy of any slot's prefix (``seq_cp``, free with the unified KV cache);
2. packs one token for every generating job, then prompt chunks of jobs still
   reading their prompt (at most ``prefill_chunk`` tokens while others generate, so
   a long prompt never stalls running streams for long), into a single batch;
3. decodes it, samples one token per job that asked for logits, and turns tokens
   into text events; finished and cancelled jobs leave, their KV stays cached for
   the next request with the same prefix until the cells are needed (LRU).

Idle sequences are parked: when a job is admitted, every other idle slot's cells are
copied to host memory (``llama_state_seq_get_data``) and freed, because llama.cpp's
attention spans every used cell of the unified cache, masked or not; 16 idle
conversations made a cold 540-token prompt 1.3x slower on Gemma 3 270M. A later job
that continues a parked conversation gets it back (``llama_state_seq_set_data``)
instead of reading it again. llama-server keeps a host-RAM prompt cache for the same
reason. Parked copies hold at most as many tokens as the KV cache has cells (so host
memory for them never exceeds the KV cache's own size) and at most ``PARK_BYTES``,
oldest dropped first.

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
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import asdict

from localserve.engine.job import (
    Checkpoint,
    Chunk,
    EngineStats,
    Job,
    OutputParser,
    Parked,
    Slot,
)
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

# Host memory for parked sequences (Gemma 3 270M: ~18 KB a token, so ~29k tokens).
PARK_BYTES = 512 * 1024 * 1024
# A slot about to be overwritten is parked first when the job drops more than this.
PARK_MIN_TOKENS = 16
# Host memory for window checkpoints of sliding-window models (Gemma 3 270M: 7.5 MiB
# each), oldest dropped first; the newest is kept whatever its size.
CHECKPOINT_BYTES = 512 * 1024 * 1024
# A long prompt gets a window checkpoint every this many tokens (and one at its end).
CHECKPOINT_STEP = 2048
# cache_reuse: the longest changed span looked past for a reusable chunk.
MAX_CHANGED_SPAN = 1024
# Prompt tokens per step for a job that wants their log-probabilities: llama.cpp keeps
# a row of logits for each (1 MiB a token for Gemma 3's vocabulary).
PROMPT_LOGPROBS_CHUNK = 64


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


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
        # ``park_idle`` off keeps idle sequences in the KV cache (tests of the full pool).
        self.park_idle = park_idle
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
        # Parked sequences, oldest first: id -> tokens, llama.cpp's copy of the cells.
        self.parked: OrderedDict[int, Parked] = OrderedDict()
        self.parked_bytes = 0
        self.parked_tokens = 0
        self._park_ids = itertools.count(1)
        # A sliding window (llama.cpp's iSWA cache): a position attends to the n_swa
        # before it, and llama.cpp overwrites cells that fell out of a sequence's window,
        # so going on from a shorter prefix needs those cells (checked) or a checkpoint.
        self.n_swa = model.n_swa if shape.swa_cells else 0
        # Window-sized (not swa_full): checkpoints of the window are taken.
        self.windowed = bool(self.n_swa) and not options.swa_full
        # Cells can move to other positions (cache_reuse): where llama.cpp says so, and
        # with a window-sized cache too where its parts can (not recurrent, not M-RoPE):
        # the engine moves a window with its checkpoints then.
        self.can_move = self.context.can_shift or (
            self.windowed and not model.is_recurrent and model.rope_shifts
        )
        # Window checkpoints held by slots and parked sequences, oldest first.
        self.checkpoints: OrderedDict[int, Checkpoint] = OrderedDict()
        self.checkpoint_bytes = 0
        self._serials = itertools.count(1)

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
            parked_sequences=len(self.parked),
            parked_bytes=self.parked_bytes,
            checkpoint_bytes=self.checkpoint_bytes,
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

            slot, reuse = self._place(job, free)
            job.slot = slot.index
            job.n_past = reuse
            job.cached = reuse
            if job.reattach is not None and job.reattach[1] == reuse:
                self._reattach(job)  # a span removed: nothing to read before the chunk
            if reuse:
                self.stats.prefix_hits += 1
                self.stats.prefix_tokens += reuse
            assert job.sampler is not None
            job.sampler.accept_prompt([t for t in job.tokens if t >= 0])
            slot.job = job
            slot.last_used = next(self._clock)
            if job.progress:
                events.append(_progress(job))
            for idle in self.slots:
                if self.park_idle and idle.job is None and idle.tokens:
                    self._park(idle)

    def _place(self, job: Job, free: list[Slot]) -> tuple[Slot, int]:
        """The free slot ``job`` goes to, made to hold the most of its prompt that some
        cache can give (its own, another slot's, a parked one's); and how much."""

        def pos_min(slot: Slot) -> int:
            return self.context.seq_pos_min(slot.index) if slot.tokens else -1

        def reach(slot: Slot) -> tuple[int, Checkpoint | None]:
            return self._reach(self._wanted(job, slot.tokens), pos_min(slot), slot.checkpoints)

        # With cache_reuse, what a cache holds past a changed span counts too.
        chunks: dict[int, Chunk | None] = {}

        def gain(slot: Slot) -> int:
            start = reach(slot)[0]
            if slot.index not in chunks:
                chunks[slot.index] = self._chunk(
                    job, slot.tokens, start, pos_min(slot), slot.checkpoints
                )
            chunk = chunks[slot.index]
            return start + (chunk.length if chunk else 0)

        # The free slot whose cache can give most of this prompt; among equals the
        # least recently used, so hot prefixes stay cached longest.
        slot = max(free, key=lambda s: (gain(s), -s.last_used))
        reuse, reuse_from = reach(slot)
        chunk = chunks.get(slot.index)
        donor = max(self.slots, key=lambda s: reach(s)[0])
        shared, shared_from = reach(donor)
        if not job.prompt_logprobs and self._restore(slot, job, max(gain(slot), shared)):
            reuse, reuse_from = reach(slot)
            chunk = self._chunk(job, slot.tokens, reuse, pos_min(slot), slot.checkpoints)
            donor, shared = slot, reuse
        if shared > reuse + (chunk.length if chunk else 0) and donor is not slot:
            self._set_aside(slot)
            self._clear(slot)
            self.context.seq_cp(donor.index, slot.index, 0, shared)
            slot.tokens = job.tokens[:shared]
            kept = [cp for cp in donor.checkpoints if cp.data and cp.n_tokens <= shared]
            slot.checkpoints = self._hold(kept)
            reuse = self._go_on(slot, shared, shared_from, copied=True)
        else:
            if len(slot.tokens) - reuse > PARK_MIN_TOKENS:
                self._set_aside(slot)  # what this job overwrites stays available
            if chunk is not None:
                scratch = next((s for s in free if s is not slot and not s.tokens), None)
                scratch = scratch or next((s for s in free if s is not slot), None)
                reuse = self._shift(job, slot, reuse, reuse_from, chunk, scratch)
            else:
                reuse = self._go_on(slot, reuse, reuse_from, copied=False)
        return slot, reuse

    # -------------------------------------------- reuse past a changed span

    def _chunk(
        self,
        job: Job,
        cached: Sequence[int],
        start: int,
        pos_min: int,
        checkpoints: Sequence[Checkpoint] = (),
    ) -> Chunk | None:
        """With cache_reuse N: where a cache holding ``cached`` (its window cells from
        ``pos_min`` on, and ``checkpoints``), past the ``start`` tokens it can give
        ``job``'s prompt, holds a run of at least N tokens that the prompt has a little
        further on (after a span that changed, at most MAX_CHANGED_SPAN tokens). None
        where cells cannot move (recurrent state, M-RoPE), for prompts or caches with
        media, and when nothing matches. With a sliding window the run must be at least
        a window long, and the window at its end must be there (the cells, or a
        checkpoint): what follows it attends to that window, and to nothing earlier
        but through the global layers."""
        least = self.options.cache_reuse
        prompt = job.tokens
        end = len(prompt) - 1  # the last prompt token is always read: its logits
        if (
            not least
            or not self.can_move
            or job.media
            or job.prompt_logprobs
            or len(cached) - start < least
            or end - start < least
            or any(t < 0 for t in cached)
        ):
            return None
        least = max(least, self.n_swa)
        k = min(least, 16)
        found: dict[tuple[int, ...], list[int]] = {}
        for i in range(start, len(cached) - k + 1):
            found.setdefault(tuple(cached[i : i + k]), []).append(i)
        for head_p in range(start, min(end - least, start + MAX_CHANGED_SPAN) + 1):
            best = None
            for head_c in found.get(tuple(prompt[head_p : head_p + k]), ())[:8]:
                n = common_prefix(cached[head_c:], prompt[head_p:end])
                if n < least or (best is not None and n <= best.length):
                    continue
                if self._window_holds(head_c + n, pos_min):
                    best = Chunk(head_p, head_c, n)
                    continue
                # The window at the run's end from a checkpoint, the run cut back to it.
                for checkpoint in checkpoints:
                    cut = min(head_c + n, checkpoint.n_tokens) - head_c
                    if (
                        checkpoint.data
                        and cut >= least
                        and (best is None or cut > best.length)
                        and self._window_holds(head_c + cut, checkpoint.pos_min)
                    ):
                        best = Chunk(head_p, head_c, cut, checkpoint)
            if best is not None:
                return best
        return None

    def _shift(
        self,
        job: Job,
        slot: Slot,
        start: int,
        start_from: Checkpoint | None,
        chunk: Chunk,
        scratch: Slot | None,
    ) -> int:
        """Keep ``slot``'s first ``start`` tokens (going on from ``start_from`` if a
        checkpoint) and ``chunk``, moved to where the prompt has it; returns how much
        of the prompt the slot now holds. Without a sliding window, a chunk right after
        the prefix (a span was removed) moves in place. Otherwise the chunk waits in
        ``scratch``, a free sequence (its window cells made its own, moved with it),
        while the new tokens before it are read (llama.cpp appends a sequence's tokens
        only after its last cell), then joins (``_reattach``). Without a free sequence,
        just the prefix."""
        seq, shift = slot.index, chunk.at - chunk.cached_at
        held = (chunk.cached_at, chunk.cached_at + chunk.length)
        if chunk.at == start and not self.n_swa:
            self.context.seq_rm(seq, held[1], -1)
            self.context.seq_rm(seq, start, held[0])
            self.context.seq_add(seq, *held, shift)
            self._truncate(slot, start)
            slot.tokens.extend(job.tokens[start : start + chunk.length])
            self.stats.reuse_shifted += chunk.length
            return start + chunk.length
        if scratch is None:
            return self._go_on(slot, start, start_from, copied=False)
        self._set_aside(scratch)
        self._clear(scratch)
        t = scratch.index
        self.context.seq_rm(seq, held[1], -1)
        self.context.seq_cp(seq, t, *held)
        moved = True
        if chunk.window is not None:  # the window at the run's end, from a checkpoint
            moved = self.context.set_seq_state(t, chunk.window.data, window_only=True)
            self.context.seq_rm(t, held[1], -1)
        start = self._go_on(slot, start, start_from, copied=False)  # the chunk is t's alone
        if moved and self.n_swa:
            moved = self._own_window(t)
        if not moved:
            self.context.seq_rm(t)
            return start
        self.context.seq_add(t, *held, shift)
        scratch.job = job  # reserved until the chunk joins
        job.reattach = (t, chunk.at, chunk.length)
        return start

    def _own_window(self, seq: int) -> bool:
        """Make ``seq``'s sliding-window cells exactly the window before its end (read out
        and written back): after cells were copied or moved in, what it holds there may
        have gaps or be shared. False when llama.cpp found no room (they are gone)."""
        window = self.context.seq_state(seq, window_only=True)
        return bool(window) and self.context.set_seq_state(seq, window, window_only=True)

    def _reattach(self, job: Job) -> None:
        """The new span is read: the chunk waiting in its scratch sequence joins. (If
        its window cannot be made the sequence's own, the prompt is read from the
        start instead.)"""
        assert job.reattach is not None
        scratch, at, length = job.reattach
        slot = self.slots[job.slot]
        self.context.seq_cp(scratch, slot.index, at, at + length)
        self._drop_scratch(job)
        if self.n_swa and not self._own_window(slot.index):
            self._clear(slot)
            job.n_past = job.cached = 0
            return
        slot.tokens.extend(job.tokens[at : at + length])
        job.n_past += length
        job.cached += length
        self.stats.reuse_shifted += length

    def _drop_scratch(self, job: Job) -> None:
        if job.reattach is not None:
            scratch = self.slots[job.reattach[0]]
            self.context.seq_rm(scratch.index)
            scratch.job = None
            scratch.tokens = []
            job.reattach = None

    @staticmethod
    def _wanted(job: Job, cached: Sequence[int]) -> int:
        """How much of ``job``'s prompt a cache holding ``cached`` could spare it: their
        common prefix, less the last prompt token (its logits start generation), never
        ending inside a medium; nothing for a job that wants every prompt token's
        log-probabilities."""
        if job.prompt_logprobs:
            return 0
        return job.media_boundary(min(common_prefix(cached, job.tokens), len(job.tokens) - 1))

    def _reach(
        self, n: int, pos_min: int, checkpoints: Sequence[Checkpoint]
    ) -> tuple[int, Checkpoint | None]:
        """How many of a cached sequence's first ``n`` positions a job can go on from,
        and the checkpoint to load for it (None: the cells as they are). Without a
        sliding window, all ``n``. With one, position ``n`` attends to the window before
        it, which llama.cpp overwrites as the sequence moves on: ``n`` when the cells
        from ``pos_min`` on still hold it, else the longest a checkpoint gives, else 0."""
        if n <= 0 or self._window_holds(n, pos_min):
            return max(n, 0), None
        best, found = 0, None
        for checkpoint in checkpoints:
            at = min(n, checkpoint.n_tokens)
            if checkpoint.data and at > best and self._window_holds(at, checkpoint.pos_min):
                best, found = at, checkpoint
        return best, found

    def _window_holds(self, n: int, pos_min: int) -> bool:
        """Whether cells from ``pos_min`` on hold all that position ``n`` attends to."""
        if not self.n_swa or n <= 0:
            return True
        return 0 <= pos_min <= max(0, n - self.n_swa + 1)

    def _go_on(self, slot: Slot, n: int, checkpoint: Checkpoint | None, *, copied: bool) -> int:
        """Make ``slot`` hold its first ``n`` positions and nothing after, ready for a job
        to go on from there (loading ``checkpoint`` first); returns ``n``, or 0 when it
        cannot (it then holds nothing). ``copied``: its cells were just copied from
        another sequence (``seq_cp``), so the window's cells are shared, and llama.cpp
        never overwrites a shared cell: the slot gets a copy of its own."""
        done = True
        if checkpoint is not None:
            done = self.context.set_seq_state(slot.index, checkpoint.data, window_only=True)
            if done:
                self.stats.checkpoint_restores += 1
        elif copied and self.windowed and n > 0:
            window = self.context.seq_state(slot.index, window_only=True)
            done = self.context.set_seq_state(slot.index, window, window_only=True)
        # Some caches (recurrent state) cannot drop a tail: start over.
        if done and self.context.seq_rm(slot.index, n, -1):
            self._truncate(slot, n)
            return n
        self._clear(slot)
        return 0

    def _truncate(self, slot: Slot, n: int) -> None:
        """``slot`` now holds its first ``n`` tokens: later checkpoints no longer apply."""
        del slot.tokens[n:]
        later = [cp for cp in slot.checkpoints if cp.n_tokens > n or not cp.data]
        if later:
            self._let_go(later)
            slot.checkpoints = [cp for cp in slot.checkpoints if cp not in later]

    def _clear(self, slot: Slot) -> None:
        """Free all of ``slot``'s cells."""
        self.context.seq_rm(slot.index)
        slot.tokens = []
        self._let_go(slot.checkpoints)
        slot.checkpoints = []

    # ---------------------------------------------------- window checkpoints

    def _checkpoint(self, slot: Slot) -> None:
        """Copy ``slot``'s window cells to host memory as a checkpoint at its length."""
        n = len(slot.tokens)
        if any(cp.n_tokens == n and cp.data for cp in slot.checkpoints):
            return
        data = self.context.seq_state(slot.index, window_only=True)
        if not data:
            return
        # llama.cpp copies the cells in the window: from n - n_swa on.
        pos_min = max(self.context.seq_pos_min(slot.index), n - self.n_swa)
        checkpoint = Checkpoint(n, pos_min, data, next(self._serials))
        self.checkpoints[checkpoint.serial] = checkpoint
        self.checkpoint_bytes += len(data)
        slot.checkpoints.append(checkpoint)
        checkpoint.holders = 1
        self.stats.checkpoints += 1
        # Oldest first, the newest always kept: each is one window, a few MiB for a
        # small model, hundreds for a large one.
        while self.checkpoint_bytes > CHECKPOINT_BYTES and len(self.checkpoints) > 1:
            _, oldest = self.checkpoints.popitem(last=False)
            self.checkpoint_bytes -= len(oldest.data)
            oldest.data = b""

    def _hold(self, checkpoints: Sequence[Checkpoint]) -> list[Checkpoint]:
        """``checkpoints`` listed by one more slot or parked sequence."""
        for checkpoint in checkpoints:
            checkpoint.holders += 1
        return list(checkpoints)

    def _let_go(self, checkpoints: Sequence[Checkpoint]) -> None:
        """``checkpoints`` listed by one fewer; dropped when nothing lists them."""
        for checkpoint in checkpoints:
            checkpoint.holders -= 1
            if checkpoint.holders <= 0 and checkpoint.serial in self.checkpoints:
                del self.checkpoints[checkpoint.serial]
                self.checkpoint_bytes -= len(checkpoint.data)
                checkpoint.data = b""

    # --------------------------------------------------------------- parking

    def _park(self, slot: Slot) -> None:
        """Move an idle slot's cells to host memory and free them."""
        self._set_aside(slot)
        self._clear(slot)

    def _set_aside(self, slot: Slot) -> None:
        """Copy a slot's cells to host memory (the newest parked entry), if any."""
        if not self.park_idle or not slot.tokens:
            return
        state = self.context.seq_state(slot.index)
        if not state or len(state) > PARK_BYTES:
            return
        # llama.cpp copies only the window of sliding-window layers.
        pos_min = self.context.seq_pos_min(slot.index)
        if self.n_swa:
            pos_min = max(pos_min, len(slot.tokens) - self.n_swa)
        entry = Parked(list(slot.tokens), state, pos_min, self._hold(slot.checkpoints))
        self.parked[next(self._park_ids)] = entry
        self.parked_bytes += len(state)
        self.parked_tokens += len(slot.tokens)
        self.stats.parked += 1
        cells = self.context.shape.n_ctx
        while self.parked_bytes > PARK_BYTES or self.parked_tokens > cells:
            _, dropped = self.parked.popitem(last=False)
            self.parked_bytes -= len(dropped.state)
            self.parked_tokens -= len(dropped.tokens)
            self._let_go(dropped.checkpoints)

    def _restore(self, slot: Slot, job: Job, have: int) -> bool:
        """Bring back into ``slot`` the parked sequence that can give ``job`` most of its
        prompt, if that is more than ``have`` tokens (what the live cache offers)."""
        best, best_reach = None, have
        for key, entry in self.parked.items():
            reach, _ = self._reach(
                self._wanted(job, entry.tokens), entry.pos_min, entry.checkpoints
            )
            if self.options.cache_reuse and reach + len(entry.tokens) > best_reach:
                # What it holds past a changed span (the window checked once restored).
                chunk = self._chunk(job, entry.tokens, reach, entry.pos_min, entry.checkpoints)
                reach += chunk.length if chunk else 0
            if reach > best_reach:
                best, best_reach = key, reach
        if best is None:
            return False
        entry = self.parked.pop(best)
        self.parked_bytes -= len(entry.state)
        self.parked_tokens -= len(entry.tokens)
        self._set_aside(slot)
        self._clear(slot)
        if not self.context.set_seq_state(slot.index, entry.state):
            self._let_go(entry.checkpoints)
            self._clear(slot)  # no room: read the prompt instead
            return False
        slot.tokens = entry.tokens
        slot.checkpoints = entry.checkpoints  # the parked entry's hold passes to the slot
        self.stats.restored += 1
        return True

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
            if self._free_idle_cache():
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
                self._reattach(job)
            if not job.generating and self.windowed:
                # The window at the prompt's end (the next turn goes on from there), and
                # every CHECKPOINT_STEP tokens of a long one (other prompts that share it).
                last = max((cp.n_tokens for cp in slot.checkpoints if cp.data), default=0)
                if row >= 0 or job.n_past - last >= CHECKPOINT_STEP:
                    self._checkpoint(slot)
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
            if not self._free_idle_cache():
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

    def _free_idle_cache(self) -> bool:
        """Drop the cached prefix of the least recently used idle slot, if any."""
        idle = sorted(
            (s for s in self.slots if s.job is None and s.tokens), key=lambda s: s.last_used
        )
        if not idle:
            return False
        self._clear(idle[0])
        return True

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
            self._clear(self.slots[job.slot])
        self._release(job)

    def _release(self, job: Job) -> None:
        self._drop_scratch(job)
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
