"""Loading a model in the runner: from a LoadRequest to the engine that serves it.

In order: the memory plan (plan/planner.py) on the devices the probe finds, with the
RPC workers in LOCALSERVE_RPC_WORKERS that answer now, so that a model too large is
refused before llama.cpp loads anything; the model, with the planned layers on the
GPUs (half as many if that fails); its LoRA adapters; the multimodal projector; the
draft model for speculative decoding; the engine; the chat template and its format.
The answer is a :class:`Loaded`, whose ``info`` is the ready reply (RunnerInfo).

The device probe is a parameter (the real machine's by default, engine/devices.py);
tests hand in a made-up machine. llama.cpp is imported only when a load starts:
the runner points its stdout away from the protocol's pipe first.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from localserve.engine import devices
from localserve.errors import InvalidOptionError, LocalserveError
from localserve.runtime.protocol import DeviceShare, LoadRequest, RunnerInfo

if TYPE_CHECKING:
    from localserve.config import Settings
    from localserve.engine.engine import Engine
    from localserve.engine.llama import Model
    from localserve.engine.media import Projector
    from localserve.engine.prompt import PromptBuilder
    from localserve.engine.rpc import SocketGuard
    from localserve.engine.speculate import DraftModel
    from localserve.plan import Devices, Plan
    from localserve.plan.context import ContextChoice
    from localserve.runtime.chat.formats import ChatFormat
    from localserve.runtime.options import LoadOptions

log = logging.getLogger("localserve.runner")


class Probe(Protocol):
    """What the machine has (engine/devices.py ``probe``); ``gpus=False``: RAM only."""

    def __call__(self, *, gpus: bool = True) -> Devices: ...


@dataclass
class Loaded:
    """A loaded model and what was made for it: all the runner serves requests with."""

    model: Model
    engine: Engine
    projector: Projector | None  # engine/media.py, for a model with an mmproj
    builder: PromptBuilder
    chat: ChatFormat  # what the template can do (runtime/chat/formats.py)
    # Markers that are one token each, rendered although llama.cpp calls them special.
    preserved: frozenset[int]
    options: LoadOptions  # as loaded: num_ctx never above the training context
    n_threads: int
    info: RunnerInfo  # the ready reply
    rpc_guard: SocketGuard | None = None  # timeouts on ggml's sockets to RPC workers

    def close(self) -> None:
        self.engine.close()
        if self.projector is not None:
            self.projector.close()
        self.model.close()


class Loader:
    """Loads one model (``load``), planning it on the devices ``probe`` finds."""

    def __init__(self, probe: Probe = devices.probe) -> None:
        self.probe = probe
        self.n_threads = 1
        # RPC workers (engine/rpc.py) that answered before this load, and why others
        # were left out; the guard sets timeouts on ggml's sockets to them.
        self.rpc_workers: tuple[str, ...] = ()
        self.rpc_notes: tuple[str, ...] = ()
        self.rpc_timeout = 120.0
        # LOCALSERVE_CPU_REPACK: off, the CPU computes as an RPC worker does.
        self.cpu_repack = True

    def load(self, request: LoadRequest) -> Loaded:
        from localserve.config import load_settings
        from localserve.engine.engine import Engine
        from localserve.engine.llama import supports_gpu_offload
        from localserve.engine.prompt import PromptBuilder
        from localserve.runtime.chat.formats import detect
        from localserve.runtime.options import default_threads

        started = time.perf_counter_ns()
        options = request.options
        paths = list(request.paths)
        self.n_threads = options.num_thread or default_threads()
        settings = load_settings()  # the daemon's environment, inherited
        self.cpu_repack = settings.cpu_repack
        memory, context = self._plan(paths, options, settings, request.projector, request.adapters)
        if context.reason != "set":  # the planner chose the context: load with its choice
            options = replace(options, num_ctx=context.num_ctx)
        rpc_guard = None
        if self.rpc_workers and memory.gpu_layers:
            from localserve.engine.rpc import use_workers

            rpc_guard = use_workers(self.rpc_workers, self.rpc_timeout)
        model, gpu_layers, retried = self._load_model(paths, memory.gpu_layers, memory.tensor_split)
        self._load_adapters(model, request.adapters)
        # Never more context per sequence than the model was trained for.
        num_ctx = min(options.num_ctx, model.n_ctx_train or options.num_ctx)
        if num_ctx != options.num_ctx:
            options = replace(options, num_ctx=num_ctx)
        projector = None
        if request.projector is not None:
            projector = self._load_projector(model, request.projector, gpu_layers)
        draft, draft_bytes = self._load_draft(
            model, request, options, gpu_layers == memory.n_layers, context.kv_cells or None
        )
        engine = Engine(
            model,
            options,
            n_threads=self.n_threads,
            projector=projector,
            draft_model=draft,
            kv_cells=context.kv_cells or None,
        )
        if rpc_guard is not None:
            # Arm the sockets the load opened now, before any generation: a timeout set
            # while ggml already waits in recv() does not apply to that wait (Linux reads
            # it when the call starts), so a worker stopped right after the load would
            # otherwise hang the first request.
            rpc_guard.arm()
        # A Modelfile's TEMPLATE replaces the GGUF's own.
        template = model.chat_template() if request.template is None else request.template
        builder = PromptBuilder(model, template, projector)
        chat = detect(builder.template)
        preserved = _preserved_tokens(model, chat.markers)
        info = RunnerInfo(
            pid=os.getpid(),
            load_duration=time.perf_counter_ns() - started,
            num_ctx=engine.num_ctx,
            context_reason=context.reason,
            num_parallel=len(engine.slots),
            n_ctx_train=model.n_ctx_train,
            n_vocab=model.n_vocab,
            n_embd=model.n_embd,
            n_threads=self.n_threads,
            has_template=builder.has_template,
            capabilities=(*chat.capabilities, *(projector.capabilities if projector else ())),
            gpu_offload=supports_gpu_offload(),
            # Where the model went, for /api/ps and the daemon log.
            plan=memory.summary()
            + (f"; {retried}" if retried else "")
            + "".join(f"; {note}" for note in self.rpc_notes),
            gpu_layers=gpu_layers,
            n_layers=memory.n_layers,
            size=memory.total_bytes + draft_bytes,
            size_vram=memory.size_vram * gpu_layers // max(1, memory.gpu_layers),
            adapters=len(model.adapters),
            devices=_shares(memory) if rpc_guard else (),
        )
        return Loaded(
            model=model,
            engine=engine,
            projector=projector,
            builder=builder,
            chat=chat,
            preserved=preserved,
            options=options,
            n_threads=self.n_threads,
            info=info,
            rpc_guard=rpc_guard,
        )

    def _plan(
        self,
        paths: list[Path],
        options: LoadOptions,
        settings: Settings,
        projector: Path | None,
        adapters: tuple[tuple[Path, float], ...] = (),
    ) -> tuple[Plan, ContextChoice]:
        """The memory plan (plan/planner.py): how many layers go to the GPU for
        ``num_gpu`` -1, or a clear refusal before loading when RAM cannot hold it; and
        the context, the planner's choice (plan/context.py) when ``num_ctx`` is 0.
        LoRA ``adapters`` that do not fit the model are refused here, before loading."""
        from localserve.plan.context import ContextChoice, choose_context
        from localserve.plan.planner import plan
        from localserve.store.adapter import check_adapter, read_adapter
        from localserve.store.gguf import read_gguf_model, read_projector

        info = read_gguf_model(paths)
        lora = [read_adapter(path) for path, _ in adapters]
        for adapter in lora:
            check_adapter(adapter, info)
        # num_gpu 0 asks for the CPU alone: asking a GPU for its free memory would
        # create a GPU context in this process for nothing.
        found = self._devices(self.probe(gpus=options.num_gpu != 0), options.num_gpu, settings)

        def plan_for(num_ctx: int, kv_cells: int | None = None) -> Plan:
            return plan(
                info,
                num_ctx=num_ctx,
                num_parallel=options.num_parallel,
                num_batch=options.num_batch,
                num_ubatch=options.num_ubatch,
                kv_type=options.kv_cache_type,
                flash_attention=options.flash_attention != "off",
                devices=found,
                num_gpu=options.num_gpu,
                projector=read_projector(projector) if projector else None,
                adapters=lora,
                spread=settings.sched_spread,
                kv_cells=kv_cells,
                swa_full=options.swa_full,
            )

        if options.num_ctx:
            memory = plan_for(options.num_ctx).require_fit()
            return memory, ContextChoice(memory.num_ctx, 0, "set")  # 0: the usual pool
        context = choose_context(info, num_parallel=options.num_parallel, plan_for=plan_for)
        return plan_for(context.num_ctx, context.kv_cells).require_fit(), context

    def _devices(self, local: Devices, num_gpu: int, settings: Settings) -> Devices:
        """``local`` plus the devices of the RPC workers in LOCALSERVE_RPC_WORKERS that
        answer now (engine/devices.py ``with_workers``); none for a CPU-only load."""
        if not settings.rpc_workers or num_gpu == 0:
            return local
        self.rpc_timeout = settings.rpc_timeout_seconds
        found, self.rpc_workers = devices.with_workers(
            local, settings.rpc_workers, timeout=min(5.0, self.rpc_timeout)
        )
        self.rpc_notes = found.notes[len(local.notes) :]
        return found

    def _load_model(
        self, paths: list[Path], gpu_layers: int, split: tuple[int, ...]
    ) -> tuple[Model, int, str]:
        """Load with the planned layers, placed on the devices as planned (``split``:
        layers per device); if that fails (out of GPU memory, say), retry once with half
        as many, cut between the devices in the same proportions, and say so."""
        from localserve.engine.llama import Model

        try:
            model = Model(
                paths, n_gpu_layers=gpu_layers, tensor_split=split, cpu_repack=self.cpu_repack
            )
            return model, gpu_layers, ""
        except LocalserveError:
            if gpu_layers <= 0:
                raise
        fewer = gpu_layers // 2
        log.warning("loading with %d GPU layers failed; retrying with %d", gpu_layers, fewer)
        return (
            Model(paths, n_gpu_layers=fewer, tensor_split=split, cpu_repack=self.cpu_repack),
            fewer,
            f"retried with {fewer} GPU layers after the planned {gpu_layers} failed",
        )

    def _load_adapters(self, model: Model, adapters: tuple[tuple[Path, float], ...]) -> None:
        """Load the LoRA adapters (checked against the model by ``_plan``) onto the
        model: every context made from it applies them, each at its scale, and the
        model frees them when it is closed."""
        from localserve.engine.llama import LoraAdapter

        for path, scale in adapters:
            LoraAdapter(model, path, scale=scale)

    def _load_projector(self, model: Model, path: Path, gpu_layers: int) -> Projector:
        """The model's projector, on the GPU when the model's layers went there; one
        whose embeddings do not have the model's width is refused with both widths."""
        from localserve.engine.media import Projector
        from localserve.store.gguf import read_projector

        info = read_projector(path)
        if info.n_embd_out is not None and info.n_embd_out != model.n_embd:
            raise InvalidOptionError(
                f"the projector {path.name} makes embeddings of width {info.n_embd_out}, "
                f"but the model's are {model.n_embd} wide: it belongs to another model"
            )
        return Projector(path, model, n_threads=self.n_threads, use_gpu=gpu_layers != 0)

    def _load_draft(
        self,
        target: Model,
        request: LoadRequest,
        options: LoadOptions,
        on_gpu: bool,
        kv_cells: int | None,
    ) -> tuple[DraftModel | None, int]:
        """The draft model for speculative decoding, if the load names one, and the
        memory it takes. It goes where the target went when it fits there (planned
        after the target loaded, so the free memory it sees is what is left); a draft
        whose vocabulary differs from the target's is refused. ``kv_cells``: the
        target's KV pool, when the planner chose its context."""
        from localserve.engine.llama import Model
        from localserve.engine.speculate import CATCH_UP_CHUNK, DraftModel, check_vocabularies
        from localserve.plan.planner import plan
        from localserve.store.gguf import read_gguf_model

        paths = list(request.draft)
        if not paths:
            return None, 0
        name = request.draft_name or paths[0].name
        slots = options.num_parallel
        memory = plan(
            read_gguf_model(paths),
            num_ctx=options.num_ctx,
            num_parallel=slots,
            num_batch=CATCH_UP_CHUNK + slots,
            kv_type=options.kv_cache_type,
            flash_attention=options.flash_attention != "off",
            devices=self.probe(gpus=on_gpu),
            num_gpu=-1 if on_gpu else 0,
            cpu_overhead=0,  # the process's own overhead is in the model's plan
            kv_cells=kv_cells,
            swa_full=True,  # a draft model's copies are cut back anywhere (speculate.py)
        ).require_fit()
        model = Model(paths, n_gpu_layers=memory.gpu_layers, cpu_repack=self.cpu_repack)
        try:
            check_vocabularies(target, model, target_name="the model", draft_name=f"'{name}'")
            draft = DraftModel(
                model,
                n_slots=slots,
                num_ctx=options.num_ctx,
                n_threads=self.n_threads,
                kv_cache_type=options.kv_cache_type,
                n_vocab_target=target.n_vocab,
                p_min=options.draft_p_min,
                kv_cells=kv_cells,
            )
        except BaseException:
            model.close()
            raise
        log.info("draft model %s: %s", name, memory.summary())
        return draft, memory.total_bytes


def _preserved_tokens(model: Model, markers: tuple[str, ...]) -> frozenset[int]:
    """Markers that are one token each: rendered even when llama.cpp calls them
    special (``[TOOL_CALLS]``), or the answer parser would never see them."""
    found = set()
    for marker in markers:
        tokens = model.tokenize(marker, add_special=False, parse_special=True)
        if len(tokens) == 1:
            found.add(tokens[0])
    return frozenset(found)


def _shares(memory: Plan) -> tuple[DeviceShare, ...]:
    """The plan's devices that hold layers: name, where (a worker's address), layers, bytes."""
    return tuple(
        DeviceShare(name=d.name, description=d.description, layers=d.layers, size=d.total_bytes)
        for d in memory.devices
        if d.layers or not d.is_gpu
    )
