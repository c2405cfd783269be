"""Where each layer of a model goes: the CPU or one of the devices, llama.cpp's way.

**Layers, as llama.cpp's n_gpu_layers counts them.** A model with ``block_count`` = N
has N + 1 offloadable layers: the repeating blocks ``blk.0`` .. ``blk.N-1`` (layer
index il = 0..N-1) and the output layer (il = N: ``output_norm``, ``output``). The input
layer (``token_embd``) always stays on the CPU. With ``n_gpu_layers`` = k llama.cpp puts
il in [N + 1 - k, N] on the GPUs: k = 1 offloads only the output layer, k = N + 1 (or any
negative value) everything. A model with tied embeddings (no ``output.weight``) gets a
copy of ``token_embd`` in the output layer's buffer, so offloading the output layer costs
the embedding matrix again on the GPU.

**Placement on several devices** (local GPUs and RPC workers' devices; split mode
"layer"): the largest device first. The device with the most free memory takes as many
of the offloaded layers as fit, then the next largest takes what is left, and so on;
the layers still left stay on the CPU. Each device boundary costs a copy of the
activations per token (over the network for a worker), so a model that fits one device
goes to one device, as Ollama does with GPUs. The runner hands the layer counts to
llama.cpp as ``tensor_split`` (``Plan.tensor_split``), which cuts the offloaded layers
in device order: layer il goes to the first device whose cumulative share exceeds
(il - first_gpu_layer) / k. ``spread`` (LOCALSERVE_SCHED_SPREAD, as OLLAMA_SCHED_SPREAD)
instead cuts them in proportion to each device's free memory, llama.cpp's own default:
every device computes a part, for batch throughput over many streams.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from localserve.plan.devices import GPU
from localserve.plan.sizes import ComputeBuffer, PlanOptions, Shape

__all__ = [
    "DevicePlan",
    "LayerPlan",
    "by_size",
    "counts_placement",
    "device_loads",
    "largest_first",
    "spread_placement",
]


@dataclass(frozen=True)
class LayerPlan:
    """One layer and where it goes. ``index`` -1 is the input layer (token embeddings),
    0..n_layer-1 the repeating blocks, n_layer the output layer."""

    index: int
    kind: Literal["input", "repeating", "output"]
    weights_bytes: int  # on its device (the output layer's includes a tied-embedding copy on a GPU)
    kv_bytes: int  # KV cache, or recurrent state, kept with the layer
    device: str  # "CPU" or the GPU's name
    adapter_bytes: int = 0  # LoRA factors of the layer's tensors

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_bytes + self.adapter_bytes


@dataclass(frozen=True)
class DevicePlan:
    """What one device holds under the plan, against what it has free."""

    name: str  # "CPU", "CUDA0"
    is_gpu: bool
    free_bytes: int  # free memory (RAM available for the CPU)
    layers: int  # offloadable layers placed here (the input layer is not counted)
    weights_bytes: int
    kv_bytes: int
    compute_bytes: int
    overhead_bytes: int
    description: str = ""
    projector_bytes: int = 0  # the multimodal projector, when it is placed here
    adapter_bytes: int = 0  # LoRA adapters' factors of the layers placed here

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
    def fits(self) -> bool:
        return self.total_bytes <= self.free_bytes


def _f32(x: float) -> float:
    """Round to a C float: llama.cpp computes the split points in single precision."""
    return float(struct.unpack("<f", struct.pack("<f", x))[0])


def counts_placement(n_layers: int, counts: Sequence[int]) -> list[int | None]:
    """The device of each offloadable layer (None = CPU) when device i takes counts[i]
    of the last sum(counts) layers, in device order: what llama.cpp does with
    n_gpu_layers = sum(counts) and tensor_split = counts."""
    devices: list[int | None] = [None] * (n_layers - sum(counts))
    for i, count in enumerate(counts):
        devices += [i] * count
    return devices


def spread_placement(n_layers: int, n_gpu: int, gpus: Sequence[GPU]) -> list[int | None]:
    """llama.cpp's default device for each offloadable layer (None = CPU) with
    n_gpu_layers = n_gpu and no tensor_split: in proportion to free memory."""
    devices: list[int | None] = [None] * n_layers
    if n_gpu <= 0 or not gpus:
        return devices
    # Cumulative shares of free memory, in single precision as llama.cpp computes them.
    cumulative: list[float] = []
    total = 0.0
    for gpu in gpus:
        total = _f32(total + _f32(float(gpu.free_bytes)))
        cumulative.append(total)
    shares = [_f32(c / total) if total > 0 else 1.0 for c in cumulative]
    start = n_layers - n_gpu
    for il in range(start, n_layers):
        position = _f32(float(il - start) / n_gpu)
        devices[il] = min(bisect.bisect_right(shares, position), len(gpus) - 1)
    return devices


def by_size(gpus: Sequence[GPU]) -> list[int]:
    """Device indices, the most free memory first (ties in device order)."""
    return sorted(range(len(gpus)), key=lambda i: -gpus[i].free_bytes)


def largest_first(
    wanted: int, gpus: Sequence[GPU], fits: Callable[[list[int], int], bool]
) -> list[int]:
    """Layers per device: the largest device takes as many of ``wanted`` as fit, then
    the next largest, and so on; the sum is less than ``wanted`` when they all fill up.
    ``fits(counts, i)``: device i holds its share of the placement ``counts`` gives."""
    counts = [0] * len(gpus)
    grew = True
    while grew and sum(counts) < wanted:
        # Again while a device took more: a device later in device order that took
        # layers took the output layer (the heaviest) from the ones before it, which
        # may now hold more.
        grew = False
        for device in by_size(gpus):
            # A device's need grows with its layer count: search for the most that fit.
            low, high = counts[device], counts[device] + wanted - sum(counts)
            while low < high:
                middle = (low + high + 1) // 2
                trial = counts.copy()
                trial[device] = middle
                if fits(trial, device):
                    low = middle
                else:
                    high = middle - 1
            grew = grew or low > counts[device]
            counts[device] = low
    return counts


def device_loads(
    shape: Shape,
    kv: Sequence[int],
    compute: ComputeBuffer,
    placement: Sequence[int | None],
    gpus: Sequence[GPU],
    ram_available: int,
    options: PlanOptions,
    projector_bytes: int = 0,
    adapters: Sequence[int] = (),
) -> tuple[list[LayerPlan], list[DevicePlan]]:
    """``adapters``: LoRA bytes by layer, the input layer first (``sizes.adapters_by_layer``)."""
    n_layer = shape.n_layer
    adapter = list(adapters) or [0] * (len(placement) + 1)
    layers = [LayerPlan(-1, "input", shape.input_weights, 0, "CPU", adapter[0])]
    weights = [0] * (len(gpus) + 1)  # slot 0: the CPU
    kv_bytes = [0] * (len(gpus) + 1)
    counts = [0] * (len(gpus) + 1)
    adapter_bytes = [0] * (len(gpus) + 1)
    weights[0] = shape.input_weights
    adapter_bytes[0] = adapter[0]
    for il, device in enumerate(placement):
        slot = 0 if device is None else device + 1
        kind: Literal["repeating", "output"]
        if il < n_layer:
            w, k, kind = shape.layer_weights[il], kv[il], "repeating"
        else:
            w = shape.output_weights + (shape.tied_output if device is not None else 0)
            k, kind = 0, "output"
        weights[slot] += w
        kv_bytes[slot] += k
        counts[slot] += 1
        adapter_bytes[slot] += adapter[il + 1]
        name = "CPU" if device is None else gpus[device].name
        layers.append(LayerPlan(il, kind, w, k, name, adapter[il + 1]))

    output_device = placement[n_layer] if placement else None
    used_gpus = [d for d in placement if d is not None]
    projector_slot = min(used_gpus) + 1 if used_gpus else 0
    repeating_on_cpu = any(d is None for d in placement[:n_layer])
    if output_device is None:
        cpu_compute = compute.full
    else:
        cpu_compute = compute.masks + compute.embd + (compute.layer if repeating_on_cpu else 0)
    plans = [
        DevicePlan(
            name="CPU",
            is_gpu=False,
            free_bytes=ram_available,
            layers=counts[0],
            weights_bytes=weights[0],
            kv_bytes=kv_bytes[0],
            compute_bytes=cpu_compute + compute.host_output,
            overhead_bytes=options.cpu_overhead,
            projector_bytes=projector_bytes if projector_slot == 0 else 0,
            adapter_bytes=adapter_bytes[0],
        )
    ]
    for i, gpu in enumerate(gpus):
        used = counts[i + 1] > 0
        if not used:
            gpu_compute = 0
        elif output_device == i:
            gpu_compute = compute.full
        else:
            gpu_compute = compute.masks + compute.layer
        plans.append(
            DevicePlan(
                name=gpu.name,
                is_gpu=True,
                free_bytes=gpu.free_bytes,
                layers=counts[i + 1],
                weights_bytes=weights[i + 1],
                kv_bytes=kv_bytes[i + 1],
                compute_bytes=gpu_compute,
                overhead_bytes=options.gpu_overhead if used else 0,
                description=gpu.description,
                projector_bytes=projector_bytes if projector_slot == i + 1 else 0,
                adapter_bytes=adapter_bytes[i + 1],
            )
        )
    return layers, plans
