"""Where a job's KV cells come from: the cached prefix a new job starts from, and what
happens to the cells of sequences that no job is using.

The engine's loop (engine.py) hands each admitted job to ``Cells.place``, which picks a
free slot (a llama.cpp sequence id) and makes it hold the most of the job's prompt that
some cache can give: the slot's own cells, a copy of any slot's prefix (``seq_cp``, free
with the unified KV cache, busy slots included), or a parked sequence brought back. The
loop then reads the rest. Four things make up that job:

**Prefix reuse.** A finished job's cells stay in its slot for the next request with the
same prefix until they are needed (the loop frees the least recently used idle slot's
when llama.cpp finds no room: ``free_idle``).

**Parking.** Idle sequences are parked: when a job is admitted, every other idle slot's
cells are copied to host memory (``llama_state_seq_get_data``) and freed, because
llama.cpp's attention spans every used cell of the unified cache, masked or not; 16 idle
conversations made a cold 540-token prompt 1.3x slower on Gemma 3 270M. A slot that a
job is about to overwrite is copied first too. A later job that continues a parked
conversation gets it back (``llama_state_seq_set_data``) instead of reading it again.
llama-server keeps a host-RAM prompt cache for the same reason. Parked copies hold at
most as many tokens as the KV cache has cells (so host memory for them never exceeds the
KV cache's own size) and at most ``PARK_BYTES``, oldest dropped first.

**Window checkpoints.** A sliding window (llama.cpp's iSWA cache): a position attends to
the n_swa before it, and llama.cpp overwrites cells that fell out of a sequence's window,
so going on from a shorter prefix needs those cells (checked: ``_window_holds``) or a
checkpoint, a copy of the window's cells taken at the end of every prompt and every
``CHECKPOINT_STEP`` tokens of a long one. Checkpoints stay with their sequence when it
is parked or copied (counted by their holders) and take at most ``CHECKPOINT_BYTES``.

**Reuse past a changed span** (``cache_reuse``). Past the common prefix, a run of cached
tokens that the prompt has again a little further on keeps its cells, moved to their
new positions (``seq_add``): in place when a span was removed, else through a free
scratch sequence that joins the job's once the new span is read (``reattach``).

docs/engine.md ("Prefix cache", "Sliding-window models", "Cache reuse past a changed
span") tells the same story with the measurements. Only the engine's thread calls this.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Sequence

from localserve.engine.job import Checkpoint, Chunk, EngineStats, Job, Parked, Slot
from localserve.engine.llama import Context, Model
from localserve.runtime.options import LoadOptions

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


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens ``a`` and ``b`` share."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class Cells:
    """The engine's slots seen as caches: placement, reuse, checkpoints and parking.
    Shares the engine's context, slots and counters; the engine owns the context."""

    def __init__(
        self,
        context: Context,
        model: Model,
        options: LoadOptions,
        slots: list[Slot],
        stats: EngineStats,
        *,
        park_idle: bool,
    ) -> None:
        self.context = context
        self.options = options
        self.slots = slots
        self.stats = stats
        # Off keeps idle sequences in the KV cache (tests of the full pool).
        self.park_idle = park_idle
        # Parked sequences, oldest first: id -> tokens, llama.cpp's copy of the cells.
        self.parked: OrderedDict[int, Parked] = OrderedDict()
        self.parked_bytes = 0
        self.parked_tokens = 0
        self._park_ids = itertools.count(1)
        # The sliding window's length, 0 for none ("Window checkpoints" above).
        self.n_swa = model.n_swa if context.shape.swa_cells else 0
        # Window-sized (not swa_full): checkpoints of the window are taken.
        self.windowed = bool(self.n_swa) and not options.swa_full
        # Cells can move to other positions (cache_reuse): where llama.cpp says so, and
        # with a window-sized cache too where its parts can (not recurrent, not M-RoPE):
        # the engine moves a window with its checkpoints then.
        self.can_move = context.can_shift or (
            self.windowed and not model.is_recurrent and model.rope_shifts
        )
        # Window checkpoints held by slots and parked sequences, oldest first.
        self.checkpoints: OrderedDict[int, Checkpoint] = OrderedDict()
        self.checkpoint_bytes = 0
        self._serials = itertools.count(1)

    # ------------------------------------------------------------ placement

    def place(self, job: Job, free: list[Slot]) -> tuple[Slot, int]:
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
            self.clear(slot)
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
        self.clear(slot)
        return 0

    def _truncate(self, slot: Slot, n: int) -> None:
        """``slot`` now holds its first ``n`` tokens: later checkpoints no longer apply."""
        del slot.tokens[n:]
        later = [cp for cp in slot.checkpoints if cp.n_tokens > n or not cp.data]
        if later:
            self._let_go(later)
            slot.checkpoints = [cp for cp in slot.checkpoints if cp not in later]

    def clear(self, slot: Slot) -> None:
        """Free all of ``slot``'s cells."""
        self.context.seq_rm(slot.index)
        slot.tokens = []
        self._let_go(slot.checkpoints)
        slot.checkpoints = []

    def free_idle(self) -> bool:
        """Drop the cached prefix of the least recently used idle slot, if any."""
        idle = sorted(
            (s for s in self.slots if s.job is None and s.tokens), key=lambda s: s.last_used
        )
        if not idle:
            return False
        self.clear(idle[0])
        return True

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
        self.clear(scratch)
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

    def reattach(self, job: Job) -> None:
        """The new span is read: the chunk waiting in its scratch sequence joins. (If
        its window cannot be made the sequence's own, the prompt is read from the
        start instead.)"""
        assert job.reattach is not None
        scratch, at, length = job.reattach
        slot = self.slots[job.slot]
        self.context.seq_cp(scratch, slot.index, at, at + length)
        self.drop_scratch(job)
        if self.n_swa and not self._own_window(slot.index):
            self.clear(slot)
            job.n_past = job.cached = 0
            return
        slot.tokens.extend(job.tokens[at : at + length])
        job.n_past += length
        job.cached += length
        self.stats.reuse_shifted += length

    def drop_scratch(self, job: Job) -> None:
        if job.reattach is not None:
            scratch = self.slots[job.reattach[0]]
            self.context.seq_rm(scratch.index)
            scratch.job = None
            scratch.tokens = []
            job.reattach = None

    # ---------------------------------------------------- window checkpoints

    def prompt_read(self, slot: Slot, n_past: int, *, at_end: bool) -> None:
        """``slot``'s job has read its prompt up to ``n_past`` (all of it: ``at_end``).
        With a window-sized cache: a checkpoint of the window at the prompt's end (the
        next turn goes on from there), and every CHECKPOINT_STEP tokens of a long one
        (other prompts that share it)."""
        if not self.windowed:
            return
        last = max((cp.n_tokens for cp in slot.checkpoints if cp.data), default=0)
        if at_end or n_past - last >= CHECKPOINT_STEP:
            self._checkpoint(slot)

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

    def park_idle_slots(self) -> None:
        """Park every idle slot that holds cells (a job was just admitted)."""
        for idle in self.slots:
            if self.park_idle and idle.job is None and idle.tokens:
                self._park(idle)

    def _park(self, slot: Slot) -> None:
        """Move an idle slot's cells to host memory and free them."""
        self._set_aside(slot)
        self.clear(slot)

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
        self.clear(slot)
        if not self.context.set_seq_state(slot.index, entry.state):
            self._let_go(entry.checkpoints)
            self.clear(slot)  # no room: read the prompt instead
            return False
        slot.tokens = entry.tokens
        slot.checkpoints = entry.checkpoints  # the parked entry's hold passes to the slot
        self.stats.restored += 1
        return True
