"""The memory planner: how many bytes a model needs, where they go, and whether they fit.

From a GGUF header (tensor sizes, head counts) and the load options, the planner sizes
what llama.cpp will allocate, places layers the way llama.cpp places them for a given
``n_gpu_layers``, and picks the largest ``n_gpu_layers`` whose GPU share fits each card's
free memory. It refuses, before anything is loaded, when not even RAM can hold what
stays on the CPU. Pure Python: no llama.cpp call; sizes follow the vendored llama.cpp
sources (llama-model.cpp ``load_tensors``, llama-kv-cache.cpp, llama-context.cpp).

The sizes are worked out in plan/sizes.py (the formulas are there), where layers go in
plan/placement.py (how llama.cpp numbers them; largest device first, or spread);
``plan`` puts the two together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final

from localserve.config import KV_CACHE_TYPES
from localserve.errors import InvalidOptionError, ModelTooLargeError
from localserve.plan.devices import Devices
from localserve.plan.placement import (
    DevicePlan,
    LayerPlan,
    by_size,
    counts_placement,
    device_loads,
    largest_first,
    spread_placement,
)
from localserve.plan.sizes import (
    PlanOptions,
    adapters_by_layer,
    check_kv_blocks,
    compute_buffer,
    kv_per_layer,
    model_shape,
    projector_need,
    swa_cells,
)
from localserve.store.adapter import AdapterInfo
from localserve.store.gguf import GGUFInfo, ProjectorInfo

__all__ = [
    "CPU_OVERHEAD_BYTES",
    "GPU_OVERHEAD_BYTES",
    "KV_TYPES",
    "ModelTooLargeError",
    "Plan",
    "plan",
    "processor_label",
]

MiB: Final = 1 << 20
GiB: Final = 1 << 30
# Per GPU with layers on it: the CUDA context and cuBLAS workspace take 300-500 MiB on
# current cards before llama.cpp allocates anything (Ollama reserves about as much).
GPU_OVERHEAD_BYTES: Final = 512 * MiB
# The runner process itself: Python, numpy, llama.cpp's code and small allocations.
CPU_OVERHEAD_BYTES: Final = 256 * MiB
# llama.cpp pads the context (the KV cell count) to a multiple of 256.
KV_PAD: Final = 256
# The cache types llama.cpp accepts for type_k / type_v.
KV_TYPES: Final = KV_CACHE_TYPES


@dataclass(frozen=True)
class Plan:
    """Where a model's bytes go for one set of load options."""

    architecture: str | None
    num_ctx: int  # per sequence, after capping at the training context
    num_parallel: int
    num_batch: int
    num_ubatch: int
    kv_type: str
    kv_cells: int  # the KV pool: pad256(num_ctx x num_parallel, or the pool asked for)
    n_layers: int  # offloadable layers: block_count + 1 (the output layer)
    gpu_layers: int  # the n_gpu_layers to load with
    weights_bytes: int
    kv_bytes: int
    compute_bytes: int
    overhead_bytes: int
    gpu_bytes: int
    cpu_bytes: int
    fits: bool  # RAM holds what stays on the CPU
    reason: str | None  # why not, when it does not fit
    layers: tuple[LayerPlan, ...]
    devices: tuple[DevicePlan, ...]
    notes: tuple[str, ...] = ()  # adjustments and warnings worth showing
    projector_bytes: int = 0  # weights and encode buffer of the multimodal projector
    adapter_bytes: int = 0  # LoRA adapters' weights, wherever their layers went
    # Cells of the sliding-window layers' cache (llama.cpp's iSWA cache); 0: no window.
    swa_cells: int = 0

    @property
    def total_bytes(self) -> int:
        return (
            self.weights_bytes
            + self.kv_bytes
            + self.compute_bytes
            + self.overhead_bytes
            + self.projector_bytes
            + self.adapter_bytes
        )

    @property
    def processor(self) -> str:
        """Where the bytes are, as ``ollama ps`` says it: "100% CPU", "100% GPU",
        "35%/65% CPU/GPU" (CPU share of total_bytes first)."""
        return processor_label(self.total_bytes, self.size_vram)

    @property
    def cpu_layers(self) -> int:
        return self.n_layers - self.gpu_layers

    @property
    def size_vram(self) -> int:
        """What Ollama's ``/api/ps`` reports as ``size_vram`` (with ``size`` = total_bytes):
        everything when all layers are offloaded (the input embeddings left on the CPU
        are not counted against "100% GPU", as in Ollama), none when no layer is."""
        if self.gpu_layers == 0:
            return 0
        if self.gpu_layers >= self.n_layers:
            return self.total_bytes
        return self.gpu_bytes

    @property
    def tensor_split(self) -> tuple[int, ...]:
        """Offloaded layers per device (local GPUs and workers' devices), in llama.cpp's
        device order: the ``tensor_split`` that makes llama.cpp place them as planned."""
        return tuple(d.layers for d in self.devices if d.is_gpu)

    def require_fit(self) -> Plan:
        """This plan, or ModelTooLargeError when RAM cannot hold the CPU's share."""
        if not self.fits:
            cpu = next(d for d in self.devices if not d.is_gpu)
            raise ModelTooLargeError(
                self.reason or "the model does not fit in memory",
                needed_bytes=cpu.total_bytes,
                available_bytes=cpu.free_bytes,
                hint=(
                    "use a smaller quantization, a shorter context (num_ctx, "
                    "LOCALSERVE_CONTEXT_LENGTH) or fewer parallel slots "
                    "(LOCALSERVE_NUM_PARALLEL); `localserve plan MODEL` shows the sizes"
                ),
            )
        return self

    def summary(self) -> str:
        """One line for the daemon log."""
        where = ", ".join(f"{d.name} {d.layers}" for d in self.devices if d.is_gpu and d.layers)
        return (
            f"{self.gpu_layers}/{self.n_layers} layers on GPU"
            f"{f' ({where})' if where else ''}, {self.processor}; weights "
            f"{_mib(self.weights_bytes)}, KV {_mib(self.kv_bytes)} ({self.kv_cells} cells "
            f"{self.kv_type}"
            + (f", {self.swa_cells} in the sliding window" if self.swa_cells else "")
            + f"), compute {_mib(self.compute_bytes)}, overhead "
            f"{_mib(self.overhead_bytes)}"
            + (f", projector {_mib(self.projector_bytes)}" if self.projector_bytes else "")
            + (f", adapters {_mib(self.adapter_bytes)}" if self.adapter_bytes else "")
            + f", total {_mib(self.total_bytes)} "
            f"(GPU {_mib(self.gpu_bytes)}, CPU {_mib(self.cpu_bytes)})"
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["total_bytes"] = self.total_bytes
        data["size_vram"] = self.size_vram
        data["processor"] = self.processor
        data["layers"] = [
            {**asdict(layer), "total_bytes": layer.total_bytes} for layer in self.layers
        ]
        data["devices"] = [
            {**asdict(d), "total_bytes": d.total_bytes, "fits": d.fits} for d in self.devices
        ]
        data["notes"] = list(self.notes)
        return data


def processor_label(size: int, size_vram: int) -> str:
    """Ollama's PROCESSOR column from ``size`` and ``size_vram`` (the same rule as ``ps``)."""
    if size_vram <= 0 or size <= 0:
        return "100% CPU"
    if size_vram >= size:
        return "100% GPU"
    cpu = round((size - size_vram) / size * 100)
    return f"{cpu}%/{100 - cpu}% CPU/GPU"


def _mib(n: int) -> str:
    return f"{n / GiB:.2f} GiB" if n >= GiB else f"{n / MiB:.1f} MiB"


def plan(
    info: GGUFInfo,
    *,
    num_ctx: int,
    num_parallel: int,
    num_batch: int = 2048,
    num_ubatch: int = 512,
    kv_type: str = "f16",
    flash_attention: bool = True,
    devices: Devices,
    num_gpu: int = -1,
    gpu_overhead: int = GPU_OVERHEAD_BYTES,
    cpu_overhead: int = CPU_OVERHEAD_BYTES,
    projector: ProjectorInfo | None = None,
    adapters: Sequence[AdapterInfo] = (),
    spread: bool = False,
    kv_cells: int | None = None,
    swa_full: bool = False,
) -> Plan:
    """Plan a load of ``info`` with these options on ``devices``.

    ``num_ctx`` is per sequence and is capped at the model's training context, as the
    runner caps it. ``num_gpu`` -1 picks the most layers that fit every GPU's free
    memory; a value >= 0 is used as given (clamped to the layer count), even when it
    overcommits a card (a note says so). Never raises for lack of memory: check
    ``fits`` or call ``require_fit()``. Raises InvalidOptionError for bad options.
    ``projector``: the model's multimodal projector, planned with it. ``adapters``: the
    LoRA adapters loaded on top of it (check them first: store/adapter.py).
    ``kv_type``: the K and V cache's type (a quantized one must divide the heads into
    whole blocks). ``flash_attention`` False only adds a note: the compute buffer is
    sized for flash attention, and without it llama.cpp needs more. ``spread``: cut the
    offloaded layers across all devices in proportion to free memory (llama.cpp's
    default) instead of filling the largest device first. ``kv_cells``: the KV pool the
    sequences share, when it is not ``num_ctx`` x ``num_parallel`` (an automatic context,
    plan/context.py: one sequence may then use more than its share). ``swa_full``: keep
    sliding-window layers' cache as large as the pool (LOCALSERVE_SWA_FULL) instead of
    llama.cpp's window-sized one.
    """
    for name, value, low in (
        ("num_ctx", num_ctx, 1),
        ("num_parallel", num_parallel, 1),
        ("num_batch", num_batch, 1),
        ("num_ubatch", num_ubatch, 1),
        ("num_gpu", num_gpu, -1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise InvalidOptionError(f"{name} must be an integer >= {low}, got {value!r}")
    kv_type = kv_type.lower()
    if kv_type not in KV_TYPES:
        raise InvalidOptionError(
            f"unknown KV cache type {kv_type!r}", hint=f"use one of {', '.join(KV_TYPES)}"
        )
    notes: list[str] = list(devices.notes)
    if not flash_attention:
        notes.append(
            "flash attention is off: llama.cpp's compute buffer will be larger than planned "
            "(it holds a micro-batch's attention scores)"
        )
    train = info.context_length
    if train and num_ctx > train:
        notes.append(f"num_ctx {num_ctx} capped at the model's training context {train}")
        num_ctx = train

    shape = model_shape(info)
    check_kv_blocks(shape, kv_type)
    options = PlanOptions(num_parallel, num_batch, num_ubatch, gpu_overhead, cpu_overhead)
    n_layers = shape.n_layer + 1
    cells = -(-(kv_cells or num_ctx * num_parallel) // KV_PAD) * KV_PAD
    window = swa_cells(shape, cells, options, swa_full=swa_full)
    kv = kv_per_layer(shape, cells, num_parallel, kv_type, window)
    compute = compute_buffer(shape, cells, num_ctx, options, window)
    gpus = devices.usable_gpus
    ram = devices.ram_available_bytes
    projector_bytes = projector_need(projector) if projector else 0
    adapter_layers = adapters_by_layer(adapters, shape.n_layer)

    def loads(placement: list[int | None]) -> tuple[list[LayerPlan], list[DevicePlan]]:
        return device_loads(
            shape, kv, compute, placement, gpus, ram, options, projector_bytes, adapter_layers
        )

    def fits(counts: list[int], device: int) -> bool:
        return loads(counts_placement(n_layers, counts))[1][device + 1].fits

    if not gpus:
        if num_gpu > 0:
            notes.append(f"num_gpu {num_gpu} ignored: no GPU llama.cpp can offload to")
        placement: list[int | None] = [None] * n_layers
    elif spread:
        if num_gpu >= 0:
            gpu_layers = min(num_gpu, n_layers)
        else:
            # The most layers whose share fits every device. One device: more free
            # memory never means fewer layers, since a larger one fits every count a
            # smaller one does.
            gpu_layers = next(
                (
                    n
                    for n in range(n_layers, 0, -1)
                    if all(
                        d.fits for d in loads(spread_placement(n_layers, n, gpus))[1] if d.is_gpu
                    )
                ),
                0,
            )
        placement = spread_placement(n_layers, gpu_layers, gpus)
    else:
        wanted = n_layers if num_gpu < 0 else min(num_gpu, n_layers)
        counts = largest_first(wanted, gpus, fits)
        if num_gpu < 0:
            # A device that took layers earlier in device order than one decided before
            # it moves that one's layers away from the output layer, which only makes
            # it lighter; still, check every device and hand back what does not fit.
            while bad := [i for i, c in enumerate(counts) if c and not fits(counts, i)]:
                counts[bad[0]] -= 1
        elif sum(counts) < wanted:
            # An explicit num_gpu is used as given: the rest goes to the largest device,
            # overcommitting it (a note below says so).
            counts[by_size(gpus)[0]] += wanted - sum(counts)
        placement = counts_placement(n_layers, counts)
    if gpus and num_gpu > n_layers:
        notes.append(f"num_gpu {num_gpu} is more than the model's {n_layers} layers")
    gpu_layers = sum(1 for d in placement if d is not None)
    layers, device_plans = loads(placement)
    for d in device_plans:
        if d.is_gpu and not d.fits:
            notes.append(
                f"{d.name} needs {_mib(d.total_bytes)} for {d.layers} layers but has "
                f"{_mib(d.free_bytes)} free: loading may fail"
            )

    cpu = device_plans[0]
    gpu_bytes = sum(d.total_bytes for d in device_plans if d.is_gpu)
    reason = None
    if not cpu.fits:
        on_gpu = f" ({gpu_layers} of {n_layers} layers on the GPU)" if gpu_layers else ""
        reason = (
            f"the model needs {_mib(cpu.total_bytes)} of RAM for what stays on the CPU"
            f"{on_gpu} but only {_mib(cpu.free_bytes)} is available"
        )
    return Plan(
        architecture=info.architecture,
        num_ctx=num_ctx,
        num_parallel=num_parallel,
        num_batch=num_batch,
        num_ubatch=num_ubatch,
        kv_type=kv_type,
        kv_cells=cells,
        n_layers=n_layers,
        gpu_layers=gpu_layers,
        weights_bytes=sum(d.weights_bytes for d in device_plans),
        kv_bytes=sum(d.kv_bytes for d in device_plans),
        compute_bytes=sum(d.compute_bytes for d in device_plans),
        overhead_bytes=sum(d.overhead_bytes for d in device_plans),
        gpu_bytes=gpu_bytes,
        cpu_bytes=cpu.total_bytes,
        fits=cpu.fits,
        reason=reason,
        layers=tuple(layers),
        devices=tuple(device_plans),
        notes=tuple(notes),
        projector_bytes=projector_bytes,
        adapter_bytes=sum(d.adapter_bytes for d in device_plans),
        swa_cells=window,
    )
