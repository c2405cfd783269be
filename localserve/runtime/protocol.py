"""The daemon <-> runner contract: every message on a runner's pipe, typed.

The daemon starts ``python -m localserve.engine.runner`` and writes frames to its stdin
(framing.py: length-prefixed JSON objects); the runner answers on its stdout.

- The first frame is a :class:`LoadRequest` (op ``load``). The runner answers
  ``{"ready": ...}`` (:class:`RunnerInfo`) once the model is loaded, or ``{"fatal":
  ..., "kind": ...}`` (:class:`LoadFailure`) and exits.
- Then one :class:`Request` per frame, ``{"op": ..., "id": "r1", "job": ...}`` (:class:`Op`):
  ``generate``, ``count`` and ``render`` carry a :class:`GenerateJob`, ``embed`` an
  :class:`EmbedJob`, ``rank`` a :class:`RankJob`, ``tokenize`` a :class:`TokenizeJob`, ``detokenize`` a
  :class:`DetokenizeJob`, ``cancel`` and ``stats`` only the id, ``shutdown`` nothing
  (the runner exits).
- The runner writes ``{"events": [...]}`` frames, one per engine step carrying the
  events of every request in that step (text deltas, done, error: :data:`Event`), so a
  busy runner makes one write per step, not one per token. The one answer to an
  ``embed`` (:class:`EmbedResult`), a ``rank`` (:class:`RankResult`), a ``count`` (:class:`TokenCount`), a ``tokenize``
  (:class:`Tokens`), a ``detokenize`` (:class:`Detokenized`), a ``render``
  (:class:`RenderedPrompt`) or a ``stats`` (:class:`RunnerStats`) travels in the same
  frames (the token messages are in runtime/tokens.py). A request that fails gets an
  :class:`ErrorEvent`, whose :class:`ErrorKind` names the exception the daemon raises
  for it (:data:`ERROR_TYPES`, the one table both sides read).

Every layer above the pipe sees these dataclasses: a route builds a GenerateJob from
its wire schema, the scheduler hands it on, and events come back typed. JSON exists
only at the pipe: the ``to_wire``/``from_wire`` methods and functions here, called by
the runner (engine/runner.py) and the daemon's client (scheduler/runner_client.py).
Events are plain dataclasses, not validated models: their frames are the hot path.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, Final, Literal

from localserve.errors import (
    EngineError,
    InvalidOptionError,
    LocalserveError,
    PromptTooLongError,
    TemplateError,
)
from localserve.runtime.framing import ProtocolError
from localserve.runtime.options import LoadOptions, SamplingOptions
from localserve.runtime.tokens import (
    Detokenized,
    DetokenizeJob,
    RenderedPrompt,
    TokenizeJob,
    Tokens,
)


class Op(StrEnum):
    """What a frame from the daemon asks for."""

    LOAD = "load"  # the first frame: a LoadRequest
    GENERATE = "generate"  # events until each answer's DoneEvent (or an ErrorEvent)
    EMBED = "embed"  # one EmbedResult
    RANK = "rank"  # one RankResult
    # One TokenCount: the job's prompt rendered and tokenized, nothing generated.
    COUNT = "count"
    # Between engine steps too, without a slot (server/routes/tokens.py): one Tokens, one
    # Detokenized, or one RenderedPrompt (the job's chat prompt as text).
    TOKENIZE = "tokenize"
    DETOKENIZE = "detokenize"
    RENDER = "render"
    STATS = "stats"  # one RunnerStats
    CANCEL = "cancel"  # no answer of its own: the generation ends with done_reason "cancel"
    SHUTDOWN = "shutdown"  # no answer: the runner exits


# ------------------------------------------------------------------ errors


class ErrorKind(StrEnum):
    """A failed request's category on the wire: which exception the daemon raises."""

    TOO_LONG = "too_long"
    TEMPLATE = "template"
    INVALID = "invalid"
    ENGINE = "engine"


# The one translation between exceptions (errors.py) and kinds, read both ways: the
# runner names an exception by the first type it is an instance of (error_kind), the
# daemon raises a kind's type (ErrorEvent.error, LoadFailure.error).
ERROR_TYPES: Final[dict[ErrorKind, type[LocalserveError]]] = {
    ErrorKind.TOO_LONG: PromptTooLongError,
    ErrorKind.TEMPLATE: TemplateError,
    ErrorKind.INVALID: InvalidOptionError,
    ErrorKind.ENGINE: EngineError,
}


def error_kind(exc: BaseException) -> ErrorKind:
    """The kind of a request's failure (see ERROR_TYPES)."""
    for kind, error_type in ERROR_TYPES.items():
        if isinstance(exc, error_type):
            return kind
    # Any other bad value (a ValueError not of the types above) is the request's too.
    return ErrorKind.INVALID if isinstance(exc, ValueError) else ErrorKind.ENGINE


# ------------------------------------------------------------------ the load


@dataclass(frozen=True)
class LoadRequest:
    """The first frame: what the runner loads.

    The GGUF parts and the load options; besides them the multimodal projector, LoRA
    adapters with their scales, a Modelfile's chat template (None: the GGUF's own),
    and a draft model for speculative decoding (LOCALSERVE_SPECULATIVE names it): its
    GGUF parts and its name, for messages.
    """

    paths: tuple[Path, ...]
    options: LoadOptions = field(default_factory=LoadOptions)
    projector: Path | None = None
    adapters: tuple[tuple[Path, float], ...] = ()
    template: str | None = None
    draft: tuple[Path, ...] = ()
    draft_name: str = ""

    def to_wire(self) -> dict[str, Any]:
        return {
            "op": Op.LOAD.value,
            "paths": [str(p) for p in self.paths],
            "options": self.options.to_dict(),
            "projector": str(self.projector) if self.projector else None,
            "adapters": [{"path": str(path), "scale": scale} for path, scale in self.adapters],
            "template": self.template,
            "draft": [str(p) for p in self.draft],
            "draft_name": self.draft_name,
        }

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> LoadRequest:
        """The load, its options validated (InvalidOptionError)."""
        if data.get("op") != Op.LOAD:
            raise ProtocolError(f"the first frame must be a load, not {data.get('op')!r}")
        adapters = []
        for adapter in data.get("adapters") or ():
            scale = adapter.get("scale", 1.0)
            if isinstance(scale, bool) or not isinstance(scale, int | float):
                raise InvalidOptionError(f"an adapter's scale must be a number, not {scale!r}")
            adapters.append((Path(adapter["path"]), float(scale)))
        return cls(
            paths=tuple(Path(p) for p in data["paths"]),
            options=LoadOptions.from_dict(data.get("options") or {}),
            projector=Path(data["projector"]) if data.get("projector") else None,
            adapters=tuple(adapters),
            template=data.get("template"),
            draft=tuple(Path(p) for p in data.get("draft") or ()),
            draft_name=str(data.get("draft_name") or ""),
        )


@dataclass(frozen=True)
class DeviceShare:
    """A device holding part of the model: its name, where it is (a worker's address),
    the layers placed there and their bytes."""

    name: str
    description: str
    layers: int
    size: int


@dataclass(frozen=True)
class RunnerInfo:
    """The ready reply: the loaded model and where it went (RunnerClient.info)."""

    pid: int
    load_duration: int  # ns
    num_ctx: int  # per sequence, never more than the model was trained for
    num_parallel: int  # sequences decoded together (slots)
    n_ctx_train: int
    n_vocab: int
    n_embd: int
    n_threads: int
    has_template: bool  # a chat template of its own (or the Modelfile's)
    capabilities: tuple[str, ...]  # "tools", "thinking", "vision", "audio"...
    gpu_offload: bool  # this llama.cpp build can offload to a GPU
    plan: str  # the memory plan in one line, with retries and RPC notes: the daemon log
    gpu_layers: int  # layers loaded onto GPUs
    n_layers: int  # offloadable layers
    size: int  # bytes the plan says the model takes (a draft model's included)
    size_vram: int  # of them, on GPUs
    adapters: int  # LoRA adapters applied
    # Layers per device, only when RPC workers took some (/api/ps, `localserve ps`).
    devices: tuple[DeviceShare, ...] = ()
    # Why num_ctx is what it is: "set" (by the request, the model or the settings), or
    # the planner's choice (plan/context.py): "trained", "cap" or "memory".
    context_reason: str = "set"

    def to_wire(self) -> dict[str, Any]:
        return {"ready": asdict(self)}


@dataclass(frozen=True)
class LoadFailure:
    """The answer to a load that failed; the runner exits after it."""

    message: str
    kind: ErrorKind = ErrorKind.ENGINE

    @classmethod
    def of(cls, exc: LocalserveError) -> LoadFailure:
        # Only an option the model cannot take (a KV cache type, say) is the caller's to
        # fix; anything else that stops a load (a damaged file, too little memory, a
        # template) is the engine's.
        invalid = isinstance(exc, ERROR_TYPES[ErrorKind.INVALID])
        return cls(str(exc), ErrorKind.INVALID if invalid else ErrorKind.ENGINE)

    def error(self) -> LocalserveError:
        """The exception the daemon raises for it."""
        return ERROR_TYPES[self.kind](f"the model failed to load: {self.message}")

    def to_wire(self) -> dict[str, Any]:
        return {"fatal": self.message, "kind": self.kind.value}


def load_reply_from_wire(data: dict[str, Any]) -> RunnerInfo | LoadFailure:
    """The runner's first frame (``RunnerInfo.to_wire`` or ``LoadFailure.to_wire``), typed."""
    try:
        if "ready" in data:
            ready = data["ready"]
            return RunnerInfo(
                **{
                    **ready,
                    "capabilities": tuple(ready["capabilities"]),
                    "devices": tuple(DeviceShare(**d) for d in ready["devices"]),
                }
            )
        if "fatal" in data:
            return LoadFailure(str(data["fatal"]), ErrorKind(data.get("kind", "engine")))
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"malformed answer to the load: {exc!r}") from None
    raise ProtocolError(f"not an answer to the load: {sorted(data)}")


# ------------------------------------------------------------------ the job

Think = bool | str | None  # True, False, "low", "medium", "high" (schemas/tools.py)
# "auto" | "none" | "required", or the name of the one function to call.
ToolChoice = str


@dataclass(frozen=True)
class NamedTool:
    """A function the model may call: its name and its parameters' JSON schema."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GenerateJob:
    """One generation request, as every wire API says it (routes build it).

    Exactly one of ``prompt`` (a completion) and ``messages`` (a chat) is set.
    ``tools`` are the request's tool definitions as the client sent them (the
    template renders them); ``think`` None means the model's default.
    """

    prompt: str | None = None
    suffix: str | None = None  # fill-in-the-middle: the text after the insertion point
    messages: list[dict[str, Any]] | None = None
    system: str | None = None
    raw: bool = False
    tools: list[dict[str, Any]] | None = None
    tool_choice: ToolChoice = "auto"
    parallel_tool_calls: bool = True
    format: str | dict[str, Any] | None = None
    think: Think = None
    template_kwargs: dict[str, Any] = field(default_factory=dict)
    options: SamplingOptions = field(default_factory=SamplingOptions)
    context: list[int] | None = None  # Ollama's token ids of an earlier answer
    want_context: bool = False  # return prompt + output ids in the done event
    logprobs: bool = False  # a LogprobsEvent for every generated token
    top_logprobs: int = 0  # with that many likeliest alternatives (0-20)
    n: int = 1  # answers to generate from the one prompt (OpenAI's ``n``)
    prompt_logprobs: bool = False  # also the prompt tokens' (completions' ``echo``)
    # ProgressEvents while the prompt is read: when it was admitted, and after each chunk.
    progress: bool = False
    # Base64 images or sounds for a completion (a chat's are its messages' ``images``),
    # checked by the route (schemas/media.py); the runner decodes them.
    images: list[str] = field(default_factory=list)

    def media_count(self) -> int:
        return len(self.images) + sum(len(m.get("images") or ()) for m in self.messages or ())

    def to_wire(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["options"] = self.options.to_dict()
        return data

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> GenerateJob:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["options"] = SamplingOptions.from_dict(data.get("options") or {})
        return cls(**values)


# ---------------------------------------------------------------- the events


@dataclass(frozen=True)
class TextEvent:
    """Answer text, as soon as it is safe to show."""

    id: str
    text: str
    choice: int = 0  # which of the request's ``n`` answers
    type: Literal["text"] = "text"


@dataclass(frozen=True)
class ThinkingEvent:
    """Reasoning text (inside ``<think>`` or the model family's equivalent)."""

    id: str
    text: str
    choice: int = 0  # which of the request's ``n`` answers
    type: Literal["thinking"] = "thinking"


@dataclass(frozen=True)
class ToolCallEvent:
    """One complete tool call; ``index`` counts the calls of this answer from 0."""

    id: str
    index: int
    name: str
    arguments: dict[str, Any]
    call_id: str = ""  # the model's own id for the call, where its format has one
    choice: int = 0  # which of the request's ``n`` answers
    type: Literal["tool_call"] = "tool_call"


@dataclass(frozen=True)
class LogprobsEvent:
    """Log-probabilities of generated tokens (engine/logprobs.py), sent before the
    text they belong to; routes attach them to the next chunk they write."""

    id: str
    entries: list[dict[str, Any]]
    prompt: bool = False  # entries of prompt tokens (the first one's logprob is None)
    choice: int = 0  # which of the request's ``n`` answers
    type: Literal["logprobs"] = "logprobs"


@dataclass(frozen=True)
class ProgressEvent:
    """How far the reading of a prompt has got (for jobs that ask: ``progress``): sent
    when the job gets its slot (``processed`` 0: the cached part is known then) and after
    each chunk of the prompt, the last one just before the first token's events. Fields
    as llama-server's ``prompt_progress``: tokens in all, found in the cache, read so far
    (beyond the cache), and milliseconds since reading began."""

    id: str
    total: int
    cache: int
    processed: int
    time_ms: int
    choice: int = 0  # which of the request's ``n`` answers
    type: Literal["progress"] = "progress"


@dataclass(frozen=True)
class DoneEvent:
    """The end of a generation, with its counts and timings (nanoseconds)."""

    id: str
    done_reason: str  # "stop" | "length" | "cancel" | "tool_calls"
    prompt_eval_count: int = 0
    prompt_cached: int = 0
    prompt_eval_duration: int = 0
    eval_count: int = 0
    eval_duration: int = 0
    queue_duration: int = 0
    load_duration: int = 0  # set by the scheduler: how long this request waited for a load
    dropped_messages: int = 0  # old chat turns left out to fit the context
    context: list[int] | None = None
    choice: int = 0  # which of the request's ``n`` answers
    # Speculative decoding: tokens drafted, and of them those the sampler picked
    # (eval_count is still every generated token).
    draft_count: int = 0
    draft_accepted: int = 0
    # The stop string that ended it ("" when none did): Anthropic's ``stop_sequence``.
    stop_sequence: str = ""
    type: Literal["done"] = "done"

    def with_load(self, load_duration: int) -> DoneEvent:
        return replace(self, load_duration=load_duration)


@dataclass(frozen=True)
class ErrorEvent:
    """A request that failed; ``kind`` names the exception's type (ERROR_TYPES)."""

    id: str
    message: str
    kind: ErrorKind = ErrorKind.ENGINE
    choice: int = 0  # which of the request's ``n`` answers
    # A prompt too long for the context: its length and the context's, in tokens.
    tokens: int | None = None
    limit: int | None = None
    type: Literal["error"] = "error"

    @classmethod
    def of(cls, request_id: str, exc: BaseException) -> ErrorEvent:
        """The event for a request that failed with ``exc``."""
        if isinstance(exc, PromptTooLongError):
            return cls(request_id, str(exc), ErrorKind.TOO_LONG, tokens=exc.tokens, limit=exc.limit)
        return cls(request_id, str(exc), error_kind(exc))

    def error(self) -> LocalserveError:
        """The exception the daemon raises for it."""
        message = self.message or "runner error"
        if self.kind == ErrorKind.TOO_LONG:
            return PromptTooLongError(message, tokens=self.tokens, limit=self.limit)
        return ERROR_TYPES[self.kind](message)


# ------------------------------------------------------------- the requests


@dataclass(frozen=True)
class EmbedJob:
    """An embedding request: the texts, and whether one longer than the context is cut
    to fit (else it is refused)."""

    inputs: list[str]
    truncate: bool = True

    def to_wire(self) -> dict[str, Any]:
        return {"inputs": self.inputs, "truncate": self.truncate}

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> EmbedJob:
        inputs = data.get("inputs")
        if not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs):
            raise InvalidOptionError("inputs must be a list of strings")
        return cls(inputs, truncate=bool(data.get("truncate", True)))


@dataclass(frozen=True)
class RankJob:
    """A rerank request: the query, and the documents to score against it."""

    query: str
    documents: list[str]

    def to_wire(self) -> dict[str, Any]:
        return {"query": self.query, "documents": self.documents}

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> RankJob:
        query, documents = data.get("query"), data.get("documents")
        if not isinstance(query, str):
            raise InvalidOptionError("query must be a string")
        if not isinstance(documents, list) or not all(isinstance(d, str) for d in documents):
            raise InvalidOptionError("documents must be a list of strings")
        return cls(query, documents)


RequestJob = GenerateJob | EmbedJob | RankJob | TokenizeJob | DetokenizeJob
# The job type each op carries (the others carry none).
_JOB_TYPES: Final[dict[Op, type[RequestJob]]] = {
    Op.GENERATE: GenerateJob,
    Op.COUNT: GenerateJob,
    Op.RENDER: GenerateJob,
    Op.EMBED: EmbedJob,
    Op.RANK: RankJob,
    Op.TOKENIZE: TokenizeJob,
    Op.DETOKENIZE: DetokenizeJob,
}


@dataclass(frozen=True)
class Request:
    """A frame from the daemon after the load: what it asks for, the id every answer to
    it carries (``r1``, ``r2``...; none for ``shutdown``), and the job of an op that
    carries one (``_JOB_TYPES``: a GenerateJob for ``generate``, ``count`` and
    ``render``...)."""

    op: Op
    id: str = ""
    job: RequestJob | None = None

    def to_wire(self) -> dict[str, Any]:
        data: dict[str, Any] = {"op": self.op.value}
        if self.id:
            data["id"] = self.id
        if self.job is not None:
            data["job"] = self.job.to_wire()
        return data

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Request:
        """The request; InvalidOptionError for an op that does not exist (or a bad
        embed), TypeError for a job with fields of the wrong shape."""
        try:
            op = Op(str(data.get("op")))
        except ValueError:
            raise InvalidOptionError(f"unknown op {data.get('op')!r}") from None
        kind = _JOB_TYPES.get(op)
        job = kind.from_wire(data.get("job") or {}) if kind is not None else None
        return cls(op, str(data.get("id", "")), job)


# -------------------------------------------------------------- the answers


@dataclass(frozen=True)
class EmbedResult:
    """The answer to an ``embed``: one vector per input."""

    id: str
    embeddings: list[list[float]]
    prompt_eval_count: int  # tokens read
    prompt_eval_duration: int  # ns
    load_duration: int = 0  # set by the scheduler: how long this request waited for a load
    type: Literal["embeddings"] = "embeddings"

    def with_load(self, load_duration: int) -> EmbedResult:
        return replace(self, load_duration=load_duration)

    def to_wire(self) -> dict[str, Any]:
        # Not asdict: that would copy every vector.
        return {
            "id": self.id,
            "type": self.type,
            "embeddings": self.embeddings,
            "prompt_eval_count": self.prompt_eval_count,
            "prompt_eval_duration": self.prompt_eval_duration,
        }

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> EmbedResult:
        return cls(
            str(data["id"]),
            data["embeddings"],
            int(data["prompt_eval_count"]),
            int(data["prompt_eval_duration"]),
        )


@dataclass(frozen=True)
class RankResult:
    """The answer to a ``rank``: one score per document, in the documents' order."""

    id: str
    scores: list[float]
    prompt_eval_count: int  # tokens read: every pair's
    prompt_eval_duration: int  # ns
    load_duration: int = 0  # set by the scheduler: how long this request waited for a load
    type: Literal["rank"] = "rank"

    def with_load(self, load_duration: int) -> RankResult:
        return replace(self, load_duration=load_duration)

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "scores": self.scores,
            "prompt_eval_count": self.prompt_eval_count,
            "prompt_eval_duration": self.prompt_eval_duration,
        }

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> RankResult:
        return cls(
            str(data["id"]),
            [float(s) for s in data["scores"]],
            int(data["prompt_eval_count"]),
            int(data["prompt_eval_duration"]),
        )


@dataclass(frozen=True)
class TokenCount:
    """The answer to a ``count``: how many tokens the job's prompt is, rendered and
    tokenized as its generation would be (template, tools, system, media), but whole:
    no old turn is dropped to fit the context."""

    id: str
    tokens: int
    type: Literal["count"] = "count"

    def to_wire(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> TokenCount:
        return cls(str(data["id"]), int(data["tokens"]))


@dataclass(frozen=True)
class RunnerStats:
    """The answer to ``stats``: the engine's slots and caches now (engine/engine.py
    ``describe``), and its counters since the load (``EngineStats``)."""

    id: str = ""
    slots_total: int = 0
    slots_busy: int = 0
    waiting: int = 0  # jobs waiting for a slot
    kv_cells: int = 0
    kv_positions_cached: int = 0
    parked_sequences: int = 0  # idle sequences held in host memory now
    parked_bytes: int = 0
    checkpoint_bytes: int = 0  # window checkpoints held in host memory now
    draft_gate_paused_steps: int = 0  # steps where drafts sat out: they cost more than they saved
    pooled_packs: int = 0  # decodes of embeddings and rerank pairs (engine/pooled.py)
    pooled_shared_packs: int = 0  # of them, those that held two requests' sequences or more
    pooled_waiting: int = 0  # embedding and rerank requests queued now
    # EngineStats
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
    draft_accepted: int = 0  # of them, the ones the sampler picked
    parked: int = 0  # idle sequences moved to host memory
    restored: int = 0  # parked sequences a job continued
    checkpoints: int = 0  # window checkpoints taken (sliding-window models)
    checkpoint_restores: int = 0  # jobs that went on from one
    reuse_shifted: int = 0  # cached tokens reused past a changed span (cache_reuse)
    type: Literal["stats"] = "stats"

    def to_wire(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> RunnerStats:
        return cls(**{k: v for k, v in data.items() if k in _STATS_FIELDS})


_STATS_FIELDS = frozenset(f.name for f in fields(RunnerStats))

Event = (
    TextEvent
    | ThinkingEvent
    | ToolCallEvent
    | LogprobsEvent
    | ProgressEvent
    | DoneEvent
    | ErrorEvent
)
# What the runner sends back in its events frames: a generation's events, or the one
# answer to an embed, a rank, a count, a tokenize, a detokenize, a render or a stats request.
Result = EmbedResult | RankResult | TokenCount | Tokens | Detokenized | RenderedPrompt | RunnerStats
Reply = Event | Result

_EVENT_TYPES: dict[str, type[Any]] = {
    "logprobs": LogprobsEvent,
    "progress": ProgressEvent,
    "text": TextEvent,
    "thinking": ThinkingEvent,
    "tool_call": ToolCallEvent,
    "done": DoneEvent,
    "error": ErrorEvent,
}
_EVENT_FIELDS = {name: frozenset(f.name for f in fields(t)) for name, t in _EVENT_TYPES.items()}


def event_to_wire(event: Event) -> dict[str, Any]:
    data = asdict(event)
    if isinstance(event, DoneEvent) and event.context is None:
        del data["context"]
    return data


def reply_to_wire(reply: Reply) -> dict[str, Any]:
    if isinstance(reply, Result):
        return reply.to_wire()
    return event_to_wire(reply)


def event_from_wire(data: dict[str, Any]) -> Event | None:
    """The typed event of a frame's entry, or None for a one-answer reply (stats...)."""
    name = str(data.get("type"))
    kind = _EVENT_TYPES.get(name)
    if kind is None:
        return None
    known = _EVENT_FIELDS[name]
    values = {k: v for k, v in data.items() if k in known}
    if kind is ErrorEvent:
        values["kind"] = ErrorKind(values.get("kind", ErrorKind.ENGINE))
    event: Event = kind(**values)
    return event
