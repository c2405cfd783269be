"""What the batching loop holds per request: a ``Job`` (one answer being generated: its
prompt, options, sampler, position in the KV cache, text so far), a ``Slot`` (one
llama.cpp sequence id and the tokens it caches), and the loop's counters.

engine.py moves jobs through slots; prepare.py makes jobs from a request.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from localserve.engine.text import StopMatcher, Utf8Stream
from localserve.engine.thinking_budget import ThinkingLimit
from localserve.runtime.options import SamplingOptions
from localserve.runtime.protocol import Event, TextEvent

if TYPE_CHECKING:  # types only: importing them loads llama.cpp
    from localserve.engine.media import MediaChunk
    from localserve.engine.sampler import Sampler
    from localserve.engine.speculate import Drafter


class OutputParser:
    """Turns a job's answer text into events. This one passes it through as text;
    runtime/chat/ has the parsers that split out thinking and tool calls."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id

    def feed(self, text: str) -> list[Event]:
        return [TextEvent(self.job_id, text)] if text else []

    def flush(self) -> list[Event]:
        return []


@dataclass
class Job:
    """One generation request inside the engine."""

    id: str
    tokens: list[int]  # the whole prompt
    options: SamplingOptions
    grammar: str | None = None
    grammar_triggers: tuple[str, ...] = ()  # a lazy grammar's trigger regexes
    # The thinking budget (engine/thinking_budget.py): the block is closed for the model
    # once it has thought this long. None: no budget.
    thinking: ThinkingLimit | None = None
    dropped_messages: int = 0  # reported in the done event
    want_context: bool = False  # return prompt + output token ids (Ollama's ``context``)
    # Makes the answer's events; None: plain text. A factory, so that it gets the id.
    parser_factory: Callable[[str], OutputParser] | None = None
    # Tokens whose text the parser needs although llama.cpp calls them special
    # (``[TOOL_CALLS]``, ``<|channel|>``): rendered instead of dropped.
    preserved_tokens: frozenset[int] = frozenset()
    logprobs: int = -1  # -1: none; else log-probabilities with this many alternatives
    # Another answer to the same prompt (OpenAI's ``n``): admitted once that job has
    # read the prompt, whose cells it then copies instead of reading it again.
    parent: Job | None = None
    # Log-probabilities of the prompt's own tokens too (the completions API's ``echo``):
    # logits for every prompt token, so no cached prefix and small prompt chunks.
    prompt_logprobs: bool = False
    # ProgressEvents while the prompt is read (a streamed request: its liveness).
    progress: bool = False
    # Images and sounds, by where they start in ``tokens`` (which holds placeholder
    # ids for them: media.py). Each is decoded in a step of its own.
    media: dict[int, MediaChunk] = field(default_factory=dict)

    # filled in by the engine
    drafter: Drafter | None = None  # speculative drafts (speculate.py); None: off
    # Drafts come from the engine's draft model rather than n-gram lookup.
    draft_by_model: bool = False
    draft: list[int] = field(default_factory=list)  # this step's drafted tokens
    slot: int = -1
    n_past: int = 0  # positions of this job in its slot's KV
    cached: int = 0  # prompt tokens found in the prefix cache
    sampler: Sampler | None = None
    last_token: int = -1
    generated: int = 0
    output: list[int] = field(default_factory=list)
    generating: bool = False
    cancelled: bool = False
    utf8: Utf8Stream = field(default_factory=Utf8Stream)
    stops: StopMatcher | None = None
    parser: OutputParser | None = None
    first_row: int = 0  # where this step's prompt chunk starts in the batch
    # cache_reuse: (scratch sequence, prompt position, length) of cached cells waiting
    # in a free sequence to join this job's once it has read up to that position.
    reattach: tuple[int, int, int] | None = None
    submitted_ns: int = field(default_factory=time.perf_counter_ns)
    prompt_started_ns: int = 0
    prompt_done_ns: int = 0

    def media_boundary(self, position: int) -> int:
        """``position``, or the start of the medium it falls inside: a cached prefix may
        end before an image or after it, never in the middle."""
        for start, chunk in self.media.items():
            if start < position < start + chunk.n_pos:
                return start
        return position

    def text_ahead(self) -> int:
        """Prompt ids from ``n_past`` up to the next medium (or the prompt's end)."""
        following = [start for start in self.media if start >= self.n_past]
        return (min(following) if following else len(self.tokens)) - self.n_past


@dataclass(frozen=True)
class Chunk:
    """Cached tokens a prompt has again after a span that changed (cache_reuse): the
    ``length`` tokens at ``cached_at`` in the cache are the prompt's at ``at``."""

    at: int
    cached_at: int
    length: int
    # With a sliding window: the checkpoint that holds the window at the run's end
    # (None: the sequence's own cells do).
    window: Checkpoint | None = None


@dataclass(eq=False)
class Checkpoint:
    """A copy of a sequence's sliding-window cells (llama.cpp's iSWA cache) taken when it
    held ``n_tokens`` positions: the window, which llama.cpp overwrites as the sequence
    moves on. Loaded back, it lets the sequence go on from ``n_tokens`` (or a little
    before: down to ``pos_min`` + window - 1) with its other layers' cells as cached."""

    n_tokens: int
    pos_min: int  # the lowest position it holds
    data: bytes  # b"" once the engine dropped it for room
    serial: int  # order of creation: the oldest are dropped first
    holders: int = 0  # slots and parked sequences that list it


@dataclass
class Slot:
    index: int
    tokens: list[int] = field(default_factory=list)  # what this sequence id holds in KV
    job: Job | None = None
    last_used: int = 0
    # Window checkpoints of this sequence (sliding-window models), oldest first.
    checkpoints: list[Checkpoint] = field(default_factory=list)


@dataclass
class Parked:
    """An idle sequence copied to host memory (llama_state_seq_get_data) and freed."""

    tokens: list[int]
    state: bytes
    pos_min: int  # the lowest position its window cells hold once restored
    checkpoints: list[Checkpoint] = field(default_factory=list)


@dataclass
class EngineStats:
    steps: int = 0
    prompt_tokens: int = 0  # decoded prompt tokens (cache hits excluded)
    generated_tokens: int = 0
    prefix_hits: int = 0  # jobs that started from a cached prefix
    prefix_tokens: int = 0  # prompt tokens they did not have to decode
    max_jobs_in_step: int = 0  # most jobs that shared one llama_decode
    multi_job_steps: int = 0  # steps that decoded tokens of two jobs or more
    kv_full_retries: int = 0
    media_encoded: int = 0  # images and sounds encoded (cached ones are not)
    draft_tokens: int = 0  # speculative tokens fed for verification
    draft_accepted: int = 0  # of them, the ones the sampler picked (each saved a step)
    parked: int = 0  # idle sequences moved to host memory
    restored: int = 0  # parked sequences a job continued
    checkpoints: int = 0  # window checkpoints taken (sliding-window models)
    checkpoint_restores: int = 0  # jobs that went on from one
    reuse_shifted: int = 0  # cached tokens reused past a changed span (cache_reuse)
