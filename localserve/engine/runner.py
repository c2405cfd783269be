"""The runner process: ``python -m localserve.engine.runner``, one per loaded model.

It owns one llama.cpp model. The daemon starts it, sends a ``load`` frame on
stdin, and then requests; events go back on the original stdout (protocol.py).
File descriptor 1 is pointed at stderr right away so that nothing printed by
llama.cpp or a stray ``print`` can corrupt the protocol stream.

One thread does everything: wait for input (blocking only when idle), hand
requests to the engine, run one engine step, write that step's events in one
frame. If llama.cpp crashes or aborts, only this process dies; the daemon sees
its pipe close and fails the requests it had in flight. If the daemon dies, the
kernel kills this process too (PR_SET_PDEATHSIG), so no orphan keeps RAM or VRAM.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import ctypes
import logging
import os
import select
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from localserve.config import debug_enabled
from localserve.errors import (
    InvalidOptionError,
    LocalserveError,
    PromptTooLongError,
    TemplateError,
)
from localserve.runtime.protocol import (
    ErrorEvent,
    FrameReader,
    GenerateJob,
    encode,
    event_to_wire,
)

log = logging.getLogger("localserve.runner")


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


def error_kind(exc: Exception) -> str:
    """The error's category on the wire; the daemon maps it back to an exception type."""
    if isinstance(exc, PromptTooLongError):
        return "too_long"
    if isinstance(exc, TemplateError):
        return "template"
    if isinstance(exc, ValueError):
        return "invalid"
    return "engine"


class Runner:
    def __init__(self, out_fd: int) -> None:
        self.out_fd = out_fd
        self.engine: Any = None
        self.embedder: Any = None
        self.builder: Any = None
        self.chat: Any = None  # runtime/chat/formats.py ChatFormat of the template
        self.preserved: frozenset[int] = frozenset()
        self.model: Any = None
        self.projector: Any = None  # engine/media.py Projector, for a model with an mmproj
        self.load_options: Any = None
        self.n_threads = 1
        # RPC workers (engine/rpc.py) that answered before this load, and why others
        # were left out; the guard sets timeouts on ggml's sockets to them.
        self.rpc_workers: tuple[str, ...] = ()
        self.rpc_notes: tuple[str, ...] = ()
        self.rpc_timeout = 120.0
        self.rpc_guard: Any = None
        # Prompts with images or sounds are built on a thread of their own (decoding a
        # photo or a long recording takes from tens of ms to seconds), so that streams
        # already generating keep getting tokens meanwhile; the loop submits the jobs
        # when they are ready. llama-server tokenizes media in its HTTP threads too.
        self.preparing: dict[str, concurrent.futures.Future[list[Any]]] = {}
        self.cancelled_early: set[str] = set()  # cancelled while still being prepared
        self._preparer: concurrent.futures.ThreadPoolExecutor | None = None
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)

    def send(self, message: dict[str, Any]) -> None:
        data = memoryview(encode(message))
        while data:
            written = os.write(self.out_fd, data)
            data = data[written:]

    # ------------------------------------------------------------------ load

    def load(self, message: dict[str, Any]) -> dict[str, Any]:
        from localserve.engine.engine import Engine
        from localserve.engine.llama import supports_gpu_offload
        from localserve.engine.prompt import PromptBuilder
        from localserve.runtime.chat.formats import detect
        from localserve.runtime.options import LoadOptions, default_threads

        started = time.perf_counter_ns()
        options = LoadOptions.from_dict(message.get("options") or {})
        paths = [Path(p) for p in message["paths"]]
        self.n_threads = options.num_thread or default_threads()
        projector = Path(message["projector"]) if message.get("projector") else None
        adapters = message.get("adapters") or []  # [{"path": str, "scale": float}]
        memory = self._plan(paths, options, projector, adapters)
        if self.rpc_workers and memory.gpu_layers:
            from localserve.engine.rpc import use_workers

            self.rpc_guard = use_workers(self.rpc_workers, self.rpc_timeout)
        self.model, gpu_layers, retried = self._load_model(
            paths, memory.gpu_layers, memory.tensor_split
        )
        self._load_adapters(adapters)
        # Never more context per sequence than the model was trained for.
        num_ctx = min(options.num_ctx, self.model.n_ctx_train or options.num_ctx)
        if num_ctx != options.num_ctx:
            options = LoadOptions(**{**options.to_dict(), "num_ctx": num_ctx})
        self.load_options = options
        if projector is not None:
            self.projector = self._load_projector(projector, gpu_layers)
        draft, draft_bytes = self._load_draft(message, options, gpu_layers == memory.n_layers)
        self.engine = Engine(
            self.model,
            options,
            n_threads=self.n_threads,
            projector=self.projector,
            draft_model=draft,
        )
        if self.rpc_guard is not None:
            # Arm the sockets the load opened now, before any generation: a timeout set
            # while ggml already waits in recv() does not apply to that wait (Linux reads
            # it when the call starts), so a worker stopped right after the load would
            # otherwise hang the first request.
            self.rpc_guard.arm()
        # A Modelfile's TEMPLATE replaces the GGUF's own.
        template = message.get("template")
        template = self.model.chat_template() if template is None else template
        self.builder = PromptBuilder(self.model, template, self.projector)
        self.chat = detect(self.builder.template)
        self.preserved = self._preserved_tokens(self.chat.markers)
        return {
            "load_duration": time.perf_counter_ns() - started,
            "num_ctx": self.engine.num_ctx,
            "num_parallel": len(self.engine.slots),
            "n_ctx_train": self.model.n_ctx_train,
            "n_vocab": self.model.n_vocab,
            "n_embd": self.model.n_embd,
            "n_threads": self.n_threads,
            "has_template": self.builder.has_template,
            "capabilities": list(self.chat.capabilities)
            + (self.projector.capabilities if self.projector else []),
            "gpu_offload": supports_gpu_offload(),
            "pid": os.getpid(),
            # Where the model went, for /api/ps and the daemon log.
            "plan": memory.summary()
            + (f"; {retried}" if retried else "")
            + "".join(f"; {note}" for note in self.rpc_notes),
            # Layers per device when RPC workers took some (/api/ps, `localserve ps`).
            "devices": _split(memory) if self.rpc_guard else [],
            "gpu_layers": gpu_layers,
            "n_layers": memory.n_layers,
            "size": memory.total_bytes + draft_bytes,
            "size_vram": memory.size_vram * gpu_layers // max(1, memory.gpu_layers),
            "adapters": len(self.model.adapters),
        }

    def _load_adapters(self, adapters: list[dict[str, Any]]) -> None:
        """Load the LoRA adapters (checked against the model by ``_plan``) onto the
        model: every context made from it applies them, each at its scale, and the
        model frees them when it is closed."""
        from localserve.engine.llama import LoraAdapter

        for adapter in adapters:
            scale = adapter.get("scale", 1.0)
            if isinstance(scale, bool) or not isinstance(scale, int | float):
                raise InvalidOptionError(f"an adapter's scale must be a number, not {scale!r}")
            LoraAdapter(self.model, Path(adapter["path"]), scale=float(scale))

    def _load_draft(self, message: dict[str, Any], options: Any, on_gpu: bool) -> tuple[Any, int]:
        """The draft model for speculative decoding, if the load names one, and the
        memory it takes. It goes where the target went when it fits there (planned
        after the target loaded, so the free memory it sees is what is left); a draft
        whose vocabulary differs from the target's is refused."""
        from localserve.engine.devices import probe
        from localserve.engine.llama import Model
        from localserve.engine.speculate import CATCH_UP_CHUNK, DraftModel, check_vocabularies
        from localserve.plan.planner import plan
        from localserve.store.gguf import read_gguf_model

        paths = [Path(p) for p in message.get("draft") or []]
        if not paths:
            return None, 0
        name = message.get("draft_name") or paths[0].name
        slots = options.num_parallel
        memory = plan(
            read_gguf_model(paths),
            num_ctx=options.num_ctx,
            num_parallel=slots,
            num_batch=CATCH_UP_CHUNK + slots,
            kv_type=options.kv_cache_type,
            flash_attention=options.flash_attention != "off",
            devices=probe(gpus=on_gpu),
            num_gpu=-1 if on_gpu else 0,
            cpu_overhead=0,  # the process's own overhead is in the model's plan
        ).require_fit()
        model = Model(paths, n_gpu_layers=memory.gpu_layers)
        try:
            check_vocabularies(self.model, model, target_name="the model", draft_name=f"'{name}'")
            draft = DraftModel(
                model,
                n_slots=slots,
                num_ctx=options.num_ctx,
                n_threads=self.n_threads,
                kv_cache_type=options.kv_cache_type,
                n_vocab_target=self.model.n_vocab,
                p_min=options.draft_p_min,
            )
        except BaseException:
            model.close()
            raise
        log.info("draft model %s: %s", name, memory.summary())
        return draft, memory.total_bytes

    def _load_projector(self, path: Path, gpu_layers: int) -> Any:
        """The model's projector, on the GPU when the model's layers went there; one
        whose embeddings do not have the model's width is refused with both widths."""
        from localserve.engine.media import Projector
        from localserve.store.gguf import read_projector

        info = read_projector(path)
        if info.n_embd_out is not None and info.n_embd_out != self.model.n_embd:
            raise InvalidOptionError(
                f"the projector {path.name} makes embeddings of width {info.n_embd_out}, "
                f"but the model's are {self.model.n_embd} wide: it belongs to another model"
            )
        return Projector(path, self.model, n_threads=self.n_threads, use_gpu=gpu_layers != 0)

    def _preserved_tokens(self, markers: tuple[str, ...]) -> frozenset[int]:
        """Markers that are one token each: rendered even when llama.cpp calls them
        special (``[TOOL_CALLS]``), or the answer parser would never see them."""
        found = set()
        for marker in markers:
            tokens = self.model.tokenize(marker, add_special=False, parse_special=True)
            if len(tokens) == 1:
                found.add(tokens[0])
        return frozenset(found)

    def _plan(
        self,
        paths: list[Path],
        options: Any,
        projector: Path | None,
        adapters: list[dict[str, Any]] | None = None,
    ) -> Any:
        """The memory plan (plan/planner.py): how many layers go to the GPU for
        ``num_gpu`` -1, or a clear refusal before loading when RAM cannot hold it.
        LoRA ``adapters`` that do not fit the model are refused here, before loading."""
        from localserve.config import load_settings
        from localserve.engine.devices import probe
        from localserve.plan.planner import plan
        from localserve.store.adapter import check_adapter, read_adapter
        from localserve.store.gguf import read_gguf_model, read_projector

        settings = load_settings()  # the daemon's environment, inherited
        info = read_gguf_model(paths)
        lora = [read_adapter(a["path"]) for a in adapters or []]
        for adapter in lora:
            check_adapter(adapter, info)
        return plan(
            info,
            num_ctx=options.num_ctx,
            num_parallel=options.num_parallel,
            num_batch=options.num_batch,
            num_ubatch=options.num_ubatch,
            kv_type=options.kv_cache_type,
            flash_attention=options.flash_attention != "off",
            # num_gpu 0 asks for the CPU alone: asking a GPU for its free memory
            # would create a GPU context in this process for nothing.
            devices=self._devices(probe(gpus=options.num_gpu != 0), options.num_gpu, settings),
            num_gpu=options.num_gpu,
            projector=read_projector(projector) if projector else None,
            adapters=lora,
            spread=settings.sched_spread,
        ).require_fit()

    def _devices(self, local: Any, num_gpu: int, settings: Any) -> Any:
        """``local`` plus the devices of the RPC workers in LOCALSERVE_RPC_WORKERS that
        answer now (engine/devices.py ``with_workers``); none for a CPU-only load."""
        from localserve.engine.devices import with_workers

        if not settings.rpc_workers or num_gpu == 0:
            return local
        self.rpc_timeout = settings.rpc_timeout_seconds
        devices, self.rpc_workers = with_workers(
            local, settings.rpc_workers, timeout=min(5.0, self.rpc_timeout)
        )
        self.rpc_notes = devices.notes[len(local.notes) :]
        return devices

    def _load_model(
        self, paths: list[Path], gpu_layers: int, split: tuple[int, ...]
    ) -> tuple[Any, int, str]:
        """Load with the planned layers, placed on the devices as planned (``split``:
        layers per device); if that fails (out of GPU memory, say), retry once with half
        as many, cut between the devices in the same proportions, and say so."""
        from localserve.engine.llama import Model

        try:
            return Model(paths, n_gpu_layers=gpu_layers, tensor_split=split), gpu_layers, ""
        except LocalserveError:
            if gpu_layers <= 0:
                raise
        fewer = gpu_layers // 2
        log.warning("loading with %d GPU layers failed; retrying with %d", gpu_layers, fewer)
        return (
            Model(paths, n_gpu_layers=fewer, tensor_split=split),
            fewer,
            f"retried with {fewer} GPU layers after the planned {gpu_layers} failed",
        )

    # -------------------------------------------------------------- requests

    def handle(self, message: dict[str, Any]) -> list[dict[str, Any]]:
        """Act on one request; returns wire entries to send at once (errors, replies)."""
        op = message.get("op")
        request_id = str(message.get("id", ""))
        try:
            if op == "generate":
                request = GenerateJob.from_wire(message.get("job") or {})
                # Aside while others generate, or behind a request being prepared.
                if request.media_count() and (self.engine.has_work() or self.preparing):
                    self._prepare_aside(request_id, request)
                else:
                    self._submit(self._jobs(request_id, request))
                return []
            if op == "cancel":
                if request_id in self.preparing:
                    self.cancelled_early.add(request_id)
                for job_id in [j for j in self.engine.jobs if _request_of(j)[0] == request_id]:
                    self.engine.cancel(job_id)
                return []
            if op == "embed":
                return [self._embed(request_id, message)]
            if op in ("stats", "health"):
                return [{"id": request_id, "type": op, **self.engine.describe()}]
            error = ErrorEvent(request_id, f"unknown op {op!r}", "invalid")
        except LocalserveError as exc:
            error = ErrorEvent(request_id, str(exc), error_kind(exc))
        except TypeError as exc:  # a job with fields of the wrong shape: a daemon bug
            error = ErrorEvent(request_id, f"malformed request: {exc}", "invalid")
        return [event_to_wire(error)]

    def _prepare_aside(self, request_id: str, request: GenerateJob) -> None:
        """Build the request's jobs on the preparing thread; ``prepared`` submits them."""
        if self._preparer is None:
            self._preparer = concurrent.futures.ThreadPoolExecutor(1, "prepare")
        future = self._preparer.submit(self._jobs, request_id, request)
        self.preparing[request_id] = future
        future.add_done_callback(lambda _: os.write(self._wake_write, b"."))

    def prepared(self) -> list[dict[str, Any]]:
        """Submit the jobs whose prompts are ready; errors as wire entries."""
        with contextlib.suppress(BlockingIOError):
            os.read(self._wake_read, 1024)
        entries: list[dict[str, Any]] = []
        for request_id, future in list(self.preparing.items()):
            if not future.done():
                continue
            del self.preparing[request_id]
            try:
                self._submit(future.result())
            except Exception as exc:  # one request's failure ends that request only
                self.cancelled_early.discard(request_id)
                entries.append(event_to_wire(ErrorEvent(request_id, str(exc), error_kind(exc))))
                continue
            if request_id in self.cancelled_early:
                self.cancelled_early.discard(request_id)
                self.handle({"op": "cancel", "id": request_id})
        return entries

    def _submit(self, jobs: list[Any]) -> None:
        for job in jobs:
            self.engine.submit(job)

    def _jobs(self, request_id: str, request: GenerateJob) -> list[Any]:
        """The request's engine jobs (one per answer), its prompt rendered and tokenized.
        Touches no llama.cpp context: it may run on the preparing thread."""
        from localserve.engine.engine import Job
        from localserve.engine.grammar import grammar_for

        chat = self.chat
        wants_tools = bool(request.tools) and request.tool_choice != "none"
        if wants_tools and chat.tools is None:
            raise InvalidOptionError("the model does not support tools")
        if request.think and not chat.thinks:
            raise InvalidOptionError("the model does not support thinking")
        kwargs = _template_kwargs(request)
        tools = request.tools if wants_tools else None
        num_ctx = self.engine.num_ctx
        if request.messages is not None:
            prompt = self.builder.chat(
                request.messages,
                num_ctx=num_ctx,
                tools=tools,
                template_kwargs=kwargs,
                images={
                    i: _media_bytes(m.get("images"))
                    for i, m in enumerate(request.messages)
                    if isinstance(m, dict) and m.get("images")
                },
            )
        elif request.suffix is not None:
            prompt = self.builder.infill(request.prompt or "", request.suffix, num_ctx=num_ctx)
        else:
            prompt = self.builder.completion(
                request.prompt or "",
                system=request.system,
                raw=request.raw,
                num_ctx=num_ctx,
                context=request.context,
                template_kwargs=kwargs,
                images=_media_bytes(request.images),
            )
        grammar = grammar_for(request.format)
        triggers: tuple[str, ...] = ()
        opened = bool(chat.thinking) and prompt.tail.rstrip().endswith(chat.thinking.open)
        if tools:
            from localserve.engine.tool_grammar import tool_grammar

            enforced = tool_grammar(
                chat.tools,
                tools,
                choice=request.tool_choice,
                parallel=request.parallel_tool_calls,
                # The prompt opened a thinking block: the call comes after its end.
                after=chat.thinking.close if opened and request.think is not False else "",
            )
            # A format grammar (JSON mode) wins over the lazy one for "auto".
            if enforced is not None and (request.tool_choice != "auto" or grammar is None):
                grammar, triggers = enforced.gbnf, enforced.triggers
        parses = not request.raw and bool(tools or chat.thinks)
        options = request.options
        if prompt.stops:
            options = replace(options, stop=(*options.stop, *prompt.stops))
        first: Job | None = None
        jobs: list[Job] = []
        for choice in range(max(1, request.n)):
            seeded = options
            if choice and options.seed >= 0:  # n answers, not n copies of one
                seeded = replace(options, seed=options.seed + choice)
            job = Job(
                f"{request_id}#{choice}" if choice else request_id,
                prompt.tokens,
                seeded,
                grammar,
                grammar_triggers=triggers,
                dropped_messages=prompt.dropped_messages,
                want_context=request.want_context,
                parser_factory=self._parser_factory(request, tools, opened) if parses else None,
                preserved_tokens=self.preserved if parses else frozenset(),
                logprobs=request.top_logprobs if request.logprobs else -1,
                prompt_logprobs=request.prompt_logprobs,
                # The other answers copy the first one's prompt cells once it has read
                # the prompt: one prefill for all of them.
                parent=first,
                media=prompt.media,
            )
            jobs.append(job)
            first = first or job
        return jobs

    def _parser_factory(
        self, request: GenerateJob, tools: list[dict[str, Any]] | None, opened: bool
    ) -> Callable[[str], Any]:
        from localserve.runtime.chat.parse import AnswerParser, HarmonyParser

        chat = self.chat
        names = [str((t.get("function") or {}).get("name", "")) for t in tools or []]
        show = request.think is not False
        if chat.harmony:
            return lambda job_id: HarmonyParser(job_id, tool_names=names, show_thinking=show)
        return lambda job_id: AnswerParser(
            job_id,
            tools=chat.tools if tools else None,
            tool_names=names,
            thinking=chat.thinking,
            in_thinking=opened,
            show_thinking=show,
        )

    def _embed(self, request_id: str, message: dict[str, Any]) -> dict[str, Any]:
        from localserve.engine.embed import Embedder

        inputs = message.get("inputs")
        if not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs):
            return event_to_wire(
                ErrorEvent(request_id, "inputs must be a list of strings", "invalid")
            )
        started = time.perf_counter_ns()
        if self.embedder is None:
            self.embedder = Embedder(self.model, self.load_options, n_threads=self.n_threads)
        result = self.embedder.embed(inputs, truncate=bool(message.get("truncate", True)))
        return {
            "id": request_id,
            "type": "embeddings",
            "embeddings": result.vectors,
            "prompt_eval_count": result.prompt_tokens,
            "prompt_eval_duration": time.perf_counter_ns() - started,
        }

    # ------------------------------------------------------------------ loop

    def serve(self, in_fd: int, reader: FrameReader) -> None:
        while True:
            busy = self.engine.has_work()
            watched = [in_fd, self._wake_read]
            readable, _, _ = select.select(watched, [], [], 0 if busy else None)
            events: list[dict[str, Any]] = []
            if self._wake_read in readable:
                events.extend(self.prepared())
            if in_fd in readable:
                data = os.read(in_fd, 1 << 20)
                if not data:
                    return  # the daemon closed our stdin: it is gone or wants us gone
                for message in reader.feed(data):
                    if message.get("op") == "shutdown":
                        return
                    events.extend(self.handle(message))
            if self.engine.has_work():
                events.extend(event_to_wire(_as_choice(e)) for e in self.engine.step())
            if events:
                self.send({"events": events})

    def close(self) -> None:
        if self._preparer is not None:  # it may be using the projector and the model
            self._preparer.shutdown(wait=True, cancel_futures=True)
        for part in (self.embedder, self.engine, self.projector, self.model):
            if part is not None:
                part.close()


def _split(memory: Any) -> list[dict[str, Any]]:
    """The plan's devices that hold layers: name, where (a worker's address), layers, bytes."""
    return [
        {
            "name": d.name,
            "description": d.description,
            "layers": d.layers,
            "size": d.total_bytes,
        }
        for d in memory.devices
        if d.layers or not d.is_gpu
    ]


def _request_of(job_id: str) -> tuple[str, int]:
    """A job id's request id and answer index (``r5#2``: the third answer of ``r5``)."""
    request_id, _, choice = job_id.partition("#")
    return request_id, int(choice or 0)


def _as_choice(event: Any) -> Any:
    """An engine event as the daemon sees it: its request's id and the answer index."""
    request_id, choice = _request_of(event.id)
    return replace(event, id=request_id, choice=choice) if choice else event


def _media_bytes(items: object) -> list[bytes]:
    """A request's base64 media (the route checked them) as bytes."""
    if not items:
        return []
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise InvalidOptionError("images must be a list of base64 strings")
    try:
        return [base64.b64decode(item, validate=True) for item in items]
    except ValueError:
        raise InvalidOptionError("an image is not valid base64") from None


def _template_kwargs(request: GenerateJob) -> dict[str, Any]:
    """Variables for the chat template: the request's own (``chat_template_kwargs``),
    and the thinking switch under the names templates read."""
    kwargs = dict(request.template_kwargs)
    if request.think is not None:
        kwargs.setdefault("enable_thinking", bool(request.think))
        kwargs.setdefault("thinking", bool(request.think))
    if isinstance(request.think, str):
        kwargs.setdefault("reasoning_effort", request.think)
    return kwargs


def main(argv: list[str] | None = None) -> int:
    # The protocol keeps the real stdout; fd 1 becomes stderr for everyone else.
    out_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the daemon decides when we stop
    _die_with_parent()
    level = logging.DEBUG if debug_enabled() else logging.WARNING
    logging.basicConfig(level=level, stream=sys.stderr, format="%(message)s")

    runner = Runner(out_fd)
    reader = FrameReader()
    in_fd = 0
    first: dict[str, Any] | None = None
    while first is None:
        data = os.read(in_fd, 1 << 20)
        if not data:
            return 0
        messages = reader.feed(data)
        if messages:
            first = messages[0]
    try:
        info = runner.load(first)
    except LocalserveError as exc:
        # An option the model cannot take (a KV cache type, say) is the caller's to fix.
        kind = "option" if isinstance(exc, InvalidOptionError) else "engine"
        runner.send({"fatal": str(exc), "kind": kind})
        return 1
    runner.send({"ready": info})
    try:
        runner.serve(in_fd, reader)
    finally:
        runner.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
