"""How fast a model runs on this machine, measured through the running daemon.

``localserve bench MODEL`` drives the daemon with ordinary /api/generate requests,
as any client would, so the numbers include everything a user pays for (HTTP, the
scheduler, the runner pipe), not just llama.cpp:

1. load: the model is loaded first, and the daemon's ``load_duration`` is reported
   on its own (0 when it was already resident);
2. warm-up and calibration: one request with a prompt of about ``prompt_tokens``
   words; the token count the daemon reports sets how many words the measured
   prompts get, so that they come out at about ``prompt_tokens`` tokens whatever
   the tokenizer;
3. prefill: ``prompt_eval_count / prompt_eval_duration`` of a long raw prompt. Each
   prompt is freshly drawn random words, a different first word each time, so no
   request finds its prompt in the daemon's prefix cache (which would make reading
   it look free);
4. decode: ``eval_count / eval_duration`` of one stream generating exactly
   ``decode_tokens`` tokens (``ignore_eos``, so a model that wants to stop cannot);
5. concurrency: for each level, that many streams at once, each with its own short
   prompt and ``decode_tokens`` new tokens. Aggregate throughput is all generated
   tokens over the wall time from the first request to the last final chunk; time
   to first token (TTFT) is measured here, from sending a request to its first
   chunk with text; per-stream rate is each stream's own ``eval_count /
   eval_duration``. Streams beyond the daemon's slots (LOCALSERVE_NUM_PARALLEL)
   wait in its queue, and that wait shows in their TTFT, as it would for users.

6. speculation (``--speculation``): a copy task (a passage, then an instruction to
   write it out again; greedy) and a free-writing task (a story opening; temperature
   0.8, fixed seeds), at 1 and 4 streams, each run twice: with the daemon's drafts
   (LOCALSERVE_SPECULATIVE) and without (the request option ``speculative: false``),
   alternately. Throughput is all tokens over the wall time, as for concurrency;
   the daemon's draft counts give the share of drafted tokens that were kept.

Every measurement is repeated ``reps`` times and the median reported; TTFT
percentiles pool the streams of all repetitions (one stream per repetition at
concurrency 1 would make a p95 meaningless). Every request streams, so cancelling
the benchmark (Ctrl+C) closes the connections and the daemon stops generating.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import statistics
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from localserve.errors import InvalidOptionError, LocalserveError

if TYPE_CHECKING:
    from localserve.client import AsyncClient
    from localserve.config import Settings

T = TypeVar("T")

DEFAULT_PROMPT_TOKENS = 512
DEFAULT_DECODE_TOKENS = 128
DEFAULT_CONCURRENCY = (1, 4, 8)
DEFAULT_REPS = 3
MAX_STREAMS = 256  # the daemon's own cap on slots per model (LOCALSERVE_NUM_PARALLEL)
SHORT_PROMPT_WORDS = 8  # the prompt of decode and concurrency streams
WARMUP_DECODE_TOKENS = 8
SPECULATION_STREAMS = (1, 4)
# The copy task's passage: ordinary prose, about 110 tokens in most tokenizers.
PASSAGE = (
    "The lighthouse keeper climbed the spiral stairs every evening at dusk, carrying a "
    "brass lantern and a notebook. He wrote down the colour of the sea, the direction of "
    "the wind, and the names of the ships that passed the point. In forty years he had "
    "filled two hundred notebooks, and he kept them in wooden crates beneath his bed."
)
# task -> (prompt, temperature)
SPECULATION_TASKS = {
    "copy": (f"Passage:\n{PASSAGE}\n\nCopy the passage above exactly.\n\nCopy:\n", 0.0),
    "free": ("Once upon a time, in a village at the edge of a great forest,", 0.8),
}

# Common English words: one token each in most tokenizers (after a space), so a
# prompt of N words is close to N tokens before any calibration.
_WORD_TEXT = (
    "the of and to in is you that it he was for on are as with his they at be this have "
    "from or one had by word but not what all were we when your can said there use an each "
    "which she do how their if will up other about out many then them these so some her "
    "would make like him into time has look two more write go see number no way could people "
    "my than first water been call who oil its now find long down day did get come made may part"
)
WORDS = tuple(_WORD_TEXT.split())


# ----------------------------------------------------------------- settings


@dataclass(frozen=True)
class BenchConfig:
    """What to measure; every value is checked when the object is made."""

    prompt_tokens: int = DEFAULT_PROMPT_TOKENS
    decode_tokens: int = DEFAULT_DECODE_TOKENS
    concurrency: tuple[int, ...] = DEFAULT_CONCURRENCY
    reps: int = DEFAULT_REPS
    speculation: bool = False  # also measure speculative decoding (drafts on and off)

    def __post_init__(self) -> None:
        if self.prompt_tokens < 1:
            raise InvalidOptionError(
                f"--prompt-tokens must be at least 1, got {self.prompt_tokens}"
            )
        if self.decode_tokens < 2:
            # The first token comes out of the prefill: a rate needs one more.
            raise InvalidOptionError(
                f"--decode-tokens must be at least 2, got {self.decode_tokens}"
            )
        if self.reps < 1:
            raise InvalidOptionError(f"--reps must be at least 1, got {self.reps}")
        if not self.concurrency:
            raise InvalidOptionError("--concurrency needs at least one level")
        for streams in self.concurrency:
            if not 1 <= streams <= MAX_STREAMS:
                raise InvalidOptionError(
                    f"--concurrency levels must be between 1 and {MAX_STREAMS}, got {streams}"
                )


def parse_concurrency(text: str) -> tuple[int, ...]:
    """``"1,4,8"`` -> ``(1, 4, 8)``: positive integers, sorted, duplicates dropped."""
    levels: set[int] = set()
    for part in text.split(","):
        try:
            value = int(part.strip())
        except ValueError:
            raise InvalidOptionError(
                f"--concurrency takes positive integers separated by commas, got {text!r}",
                hint="e.g. --concurrency 1,4,8,16",
            ) from None
        if not 1 <= value <= MAX_STREAMS:
            raise InvalidOptionError(
                f"--concurrency levels must be between 1 and {MAX_STREAMS}, got {value}"
            )
        levels.add(value)
    return tuple(sorted(levels))


# ------------------------------------------------------------------ results


@dataclass(frozen=True)
class StreamSample:
    """One streamed request: what the client saw and what the daemon reported."""

    ttft_s: float  # from sending the request to its first chunk with text
    end_s: float  # when the final chunk arrived (perf_counter)
    prompt_tokens: int
    prompt_eval_ns: int
    tokens: int  # generated tokens (eval_count)
    eval_ns: int
    drafted: int = 0  # speculative tokens drafted for this request
    accepted: int = 0  # of them, the ones kept

    @property
    def prefill_rate(self) -> float:
        return rate(self.prompt_tokens, self.prompt_eval_ns)

    @property
    def decode_rate(self) -> float:
        return rate(self.tokens, self.eval_ns)


@dataclass(frozen=True)
class LevelResult:
    """One concurrency level: medians over the repetitions."""

    streams: int
    tokens_per_stream: int  # median generated tokens per stream
    aggregate_tokens_per_s: float
    per_stream_tokens_per_s: float
    ttft_p50_ms: float
    ttft_p95_ms: float


@dataclass(frozen=True)
class SpeculationResult:
    """One task at one stream count, drafts on and off: medians over the repetitions."""

    task: str
    streams: int
    off_tokens_per_s: float
    on_tokens_per_s: float
    drafted: int  # all repetitions' drafted tokens
    accepted: int  # of them, the ones kept

    @property
    def speedup(self) -> float:
        return self.on_tokens_per_s / max(self.off_tokens_per_s, 1e-9)

    @property
    def acceptance(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0


@dataclass(frozen=True)
class BenchResult:
    model: str
    reps: int
    load_s: float  # the daemon's load_duration; 0 when the model was already loaded
    already_loaded: bool
    prompt_tokens: int  # median prompt tokens the daemon counted
    prefill_tokens_per_s: float
    decode_tokens: int  # median tokens generated by the decode stream
    decode_tokens_per_s: float
    levels: tuple[LevelResult, ...]
    speculation: tuple[SpeculationResult, ...] = ()

    def to_json(self) -> dict[str, Any]:
        found: dict[str, Any] = {
            "model": self.model,
            "reps": self.reps,
            "load": {"seconds": self.load_s, "already_loaded": self.already_loaded},
            "prefill": {
                "prompt_tokens": self.prompt_tokens,
                "tokens_per_s": self.prefill_tokens_per_s,
            },
            "decode": {"tokens": self.decode_tokens, "tokens_per_s": self.decode_tokens_per_s},
            "concurrency": [asdict(level) for level in self.levels],
        }
        if self.speculation:
            found["speculation"] = [
                {**asdict(s), "speedup": s.speedup, "acceptance": s.acceptance}
                for s in self.speculation
            ]
        return found


def rate(count: int, ns: int) -> float:
    """Tokens per second (a zero duration counts as one nanosecond, never a division error)."""
    return count / (max(ns, 1) / 1e9)


def percentile(values: Sequence[float], q: int) -> float:
    """The ``q``-th percentile (1..99), interpolated between ranks as numpy does by default."""
    if not values:
        raise ValueError("percentile of no values")
    if not 1 <= q <= 99:
        raise ValueError(f"percentile must be between 1 and 99, got {q}")
    if len(values) == 1:
        return float(values[0])
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def summarize_level(
    streams: int, runs: Sequence[tuple[float, Sequence[StreamSample]]]
) -> LevelResult:
    """A concurrency level from its repetitions: ``(start, samples)`` for each run."""
    aggregates = [
        sum(s.tokens for s in samples) / max(max(s.end_s for s in samples) - start, 1e-9)
        for start, samples in runs
    ]
    every = [s for _, samples in runs for s in samples]
    ttfts_ms = [s.ttft_s * 1000 for s in every]
    return LevelResult(
        streams=streams,
        tokens_per_stream=round(statistics.median(s.tokens for s in every)),
        aggregate_tokens_per_s=statistics.median(aggregates),
        per_stream_tokens_per_s=statistics.median(s.decode_rate for s in every),
        ttft_p50_ms=percentile(ttfts_ms, 50),
        ttft_p95_ms=percentile(ttfts_ms, 95),
    )


# -------------------------------------------------------------- measuring


def words_prompt(words: int, rng: random.Random, first: str | None = None) -> str:
    """``words`` random common words; ``first`` fixes the leading one."""
    drawn = [rng.choice(WORDS) for _ in range(words)]
    if first is not None:
        drawn[0] = first
    return " ".join(drawn)


def make_client(settings: Settings | None = None, *, streams: int = 1) -> AsyncClient:
    """An async client that can hold ``streams`` connections at once (httpx's pool
    holds 100 by default: more would queue here and show as TTFT)."""
    import httpx

    from localserve.client import AsyncClient

    size = max(streams, 1) + 4
    limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
    return AsyncClient.from_settings(settings, transport=httpx.AsyncHTTPTransport(limits=limits))


async def gather_all(coroutines: Sequence[Coroutine[Any, Any, T]]) -> list[T]:
    """Run all at once; the first failure cancels the rest and is raised as itself
    (not as an ExceptionGroup, which the CLI's error edge would not recognise)."""
    tasks: list[asyncio.Task[T]] = []
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(c) for c in coroutines]
    except BaseExceptionGroup as failed:
        raise _first_leaf(failed) from None
    return [task.result() for task in tasks]


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


class Bench:
    """One benchmark of one model through ``client``; ``run()`` does every step."""

    def __init__(
        self,
        client: AsyncClient,
        model: str,
        config: BenchConfig,
        *,
        progress: Callable[[str], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.client = client
        self.model = model
        self.config = config
        self.progress = progress or (lambda _: None)
        # Fresh randomness per run, so a second `bench` does not hit the first's cache.
        self.rng = rng or random.Random()
        self.prompt_words = config.prompt_tokens

    async def run(self) -> BenchResult:
        config = self.config
        self.progress(f"loading {self.model}")
        loaded = await self.client.load(self.model)
        load_ns = loaded.load_duration or 0
        await self.check_context()

        # Distinct first words: the long prompts share at most their BOS with each other.
        firsts = self.rng.sample(WORDS, min(config.reps + 1, len(WORDS)))
        self.progress("warming up")
        await self.calibrate(first=firsts[-1])

        prefills: list[StreamSample] = []
        for rep in range(config.reps):
            self.progress(f"prefill {rep + 1}/{config.reps}")
            prompt = words_prompt(self.prompt_words, self.rng, firsts[rep % len(firsts)])
            prefills.append(await self.stream(prompt, num_predict=1))

        decodes: list[StreamSample] = []
        for rep in range(config.reps):
            self.progress(f"decode {rep + 1}/{config.reps}")
            decodes.append(await self.stream(self.short_prompt(), config.decode_tokens))

        levels = []
        for streams in config.concurrency:
            runs = []
            for rep in range(config.reps):
                self.progress(f"{streams} concurrent streams {rep + 1}/{config.reps}")
                runs.append(await self.concurrent(streams))
            levels.append(summarize_level(streams, runs))

        speculation = []
        if config.speculation:
            for task in SPECULATION_TASKS:
                for streams in SPECULATION_STREAMS:
                    speculation.append(await self.speculate(task, streams))

        return BenchResult(
            model=self.model,
            reps=config.reps,
            load_s=load_ns / 1e9,
            already_loaded=load_ns == 0,
            prompt_tokens=round(statistics.median(s.prompt_tokens for s in prefills)),
            prefill_tokens_per_s=statistics.median(s.prefill_rate for s in prefills),
            decode_tokens=round(statistics.median(s.tokens for s in decodes)),
            decode_tokens_per_s=statistics.median(s.decode_rate for s in decodes),
            levels=tuple(levels),
            speculation=tuple(speculation),
        )

    def short_prompt(self) -> str:
        return words_prompt(SHORT_PROMPT_WORDS, self.rng)

    async def check_context(self) -> None:
        """Refuse token counts the loaded context cannot hold (the daemon would cut the
        output short, or refuse the prompt, after minutes of measuring)."""
        from localserve.store.refs import parse_ref

        name = str(parse_ref(self.model))
        running = [m for m in await self.client.ps() if m.name == name]
        if not running or not running[0].context_length:
            return  # named differently by the daemon: let it judge each request
        context = running[0].context_length
        hint = "lower it, or raise LOCALSERVE_CONTEXT_LENGTH (capped at the model's own)"
        # Calibration may add a few words; keep a margin for them and for BOS/EOS.
        if self.config.prompt_tokens + 8 > context:
            raise InvalidOptionError(
                f"--prompt-tokens {self.config.prompt_tokens} does not fit {self.model}'s "
                f"context of {context} tokens",
                hint=hint,
            )
        if self.config.decode_tokens + 4 * SHORT_PROMPT_WORDS > context:
            raise InvalidOptionError(
                f"--decode-tokens {self.config.decode_tokens} does not fit {self.model}'s "
                f"context of {context} tokens",
                hint=hint,
            )

    async def calibrate(self, first: str) -> None:
        """Warm the prefill and decode paths up, and size the prompt in words so that it
        comes out at about ``prompt_tokens`` tokens with this model's tokenizer."""
        target = self.config.prompt_tokens
        prompt = words_prompt(target, self.rng, first)
        sample = await self.stream(prompt, num_predict=WARMUP_DECODE_TOKENS)
        if sample.prompt_tokens > 0:
            self.prompt_words = max(1, round(target * target / sample.prompt_tokens))

    async def concurrent(self, streams: int) -> tuple[float, list[StreamSample]]:
        prompts = [self.short_prompt() for _ in range(streams)]
        start = time.perf_counter()
        samples = await gather_all([self.stream(p, self.config.decode_tokens) for p in prompts])
        return start, samples

    async def speculate(self, task: str, streams: int) -> SpeculationResult:
        """``task`` at ``streams`` streams, with drafts and without, alternately."""
        prompt, temperature = SPECULATION_TASKS[task]
        rates: dict[bool, list[float]] = {True: [], False: []}
        drafted = accepted = 0
        for rep in range(self.config.reps):
            for drafts in (True, False):
                self.progress(
                    f"speculation: {task}, {streams} stream(s), drafts "
                    f"{'on' if drafts else 'off'} {rep + 1}/{self.config.reps}"
                )
                # The same seeds with drafts and without: the same text, as sampling
                # with drafts is exact.
                extra = [
                    {"temperature": temperature, "seed": rep * 100 + i, "speculative": drafts}
                    for i in range(streams)
                ]
                start = time.perf_counter()
                samples = await gather_all(
                    [self.stream(prompt, self.config.decode_tokens, e) for e in extra]
                )
                wall = max(s.end_s for s in samples) - start
                rates[drafts].append(sum(s.tokens for s in samples) / max(wall, 1e-9))
                drafted += sum(s.drafted for s in samples)
                accepted += sum(s.accepted for s in samples)
        return SpeculationResult(
            task=task,
            streams=streams,
            off_tokens_per_s=statistics.median(rates[False]),
            on_tokens_per_s=statistics.median(rates[True]),
            drafted=drafted,
            accepted=accepted,
        )

    async def stream(
        self, prompt: str, num_predict: int, extra: dict[str, Any] | None = None
    ) -> StreamSample:
        """One raw, streamed generation of exactly ``num_predict`` tokens (``extra``:
        more options, which win)."""
        options: dict[str, Any] = {"num_predict": num_predict, "ignore_eos": True, "temperature": 0}
        options.update(extra or {})
        sent = time.perf_counter()
        first: float | None = None
        chunks = await self.client.generate(
            self.model, prompt, raw=True, options=options, stream=True
        )
        final = None
        # Closing the stream (also when cancelled) closes its connection at once, and
        # that is what makes the daemon stop generating.
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                if first is None and chunk.response:
                    first = time.perf_counter()
                if chunk.done:
                    final = chunk
        end = time.perf_counter()
        if final is None:
            raise LocalserveError("the daemon ended a stream without its final chunk")
        return StreamSample(
            # A stream whose tokens were all invisible (no text) "arrives" with its end.
            ttft_s=(first if first is not None else end) - sent,
            end_s=end,
            prompt_tokens=final.prompt_eval_count or 0,
            prompt_eval_ns=final.prompt_eval_duration or 0,
            tokens=final.eval_count or 0,
            eval_ns=final.eval_duration or 0,
            drafted=final.draft_count or 0,
            accepted=final.draft_accepted_count or 0,
        )


async def run_bench(
    model: str,
    config: BenchConfig,
    *,
    settings: Settings | None = None,
    progress: Callable[[str], None] | None = None,
) -> BenchResult:
    """The whole benchmark against the daemon ``settings`` point at."""
    async with make_client(settings, streams=max(config.concurrency)) as client:
        return await Bench(client, model, config, progress=progress).run()
