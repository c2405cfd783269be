"""The memory planner: how many bytes a model needs, where they go, and whether they fit.

From a GGUF header (tensor sizes, head counts) and the load options, the planner sizes
what llama.cpp will allocate, places layers the way llama.cpp places them for a given
``n_gpu_layers``, and picks the largest ``n_gpu_layers`` whose GPU share fits each card's
free memory. It refuses, before anything is loaded, when not even RAM can hold what
stays on the CPU. Pure Python: no llama.cpp call; sizes follow the vendored llama.cpp
sources (llama-model.cpp ``load_tensors``, llama-kv-cache.cpp, llama-context.cpp).

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

**Formulas** (bytes; docs/gpu.md has the long form):

- weights: each tensor's size from the header, summed per layer.
- KV cache: cells = pad256(num_ctx x num_parallel) (one unified pool, padded as
  llama.cpp pads n_ctx); per attention layer il
  ``cells x n_head_kv(il) x (key_length + value_length) x bytes(kv_type)``, i.e.
  2 x n_layer x cells x n_head_kv x head_dim x bytes when K and V agree. Sliding-window
  layers are full size (the engine sets ``swa_full``). MLA models (``key_length_mla``)
  store K only. Layers with no KV heads hold recurrent state instead (Mamba, RWKV,
  LFM2 short convolutions): (r + s) x 4 bytes x num_parallel.
- compute buffer: llama.cpp reserves its graph for one micro-batch of
  t = min(num_ctx x num_parallel, num_batch, num_ubatch) tokens with every token an
  output, and the allocator reuses memory between phases, so the buffer is the larger of
  the attention phase, ``masks + t x 4 x (4 n_embd + n_head hd_k + n_head_kv (hd_k + hd_v)
  + 2 n_ff)`` with masks = (1, or 2 with a sliding window) x cells x t x 2 (f16, flash
  attention), and the output phase, ``t x 4 x (n_vocab + 2 n_embd)``; plus the host
  logits buffer ``n_vocab x num_parallel x 4``. Against llama.cpp's own log (CPU) this is
  within a few percent or half a MiB for the tiny test model and Gemma 3 270M
  (tests/test_planner.py; the numbers are in docs/gpu.md).
- projector (a model that reads images): its weights (the mmproj file's tensors) plus
  an encode buffer for one image, ``P x 4 x (4 W + 2 F) + H x P^2 x 4`` for P patches
  of a W-wide, F-FFN, H-head vision tower (the attention scores without flash
  attention: an upper bound). mtmd puts it on the first GPU when the model's layers
  went to a GPU (the runner asks for that), else on the CPU.
- LoRA adapters: each pair of low-rank factors (``W.lora_a``, ``W.lora_b``) as stored,
  on the device of the layer of the base tensor ``W`` it updates (llama-adapter.cpp
  allocates it in the buffer type of ``W``; CPU "extra" buffer types, the repacked
  ones, fall back to plain CPU memory, which is the same device). ``token_embd``
  updates stay on the CPU with the input layer. The extra compute of the low-rank
  products (``t x (rank + n_out)`` floats per updated matrix, inside a layer's
  phase) is not counted: an approximation, small next to the layer's activations.
- overhead: a fixed ``GPU_OVERHEAD_BYTES`` per GPU used (CUDA context, cuBLAS
  workspace, allocator slack) and ``CPU_OVERHEAD_BYTES`` for the runner process.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final, Literal

from localserve.config import KV_CACHE_TYPES
from localserve.errors import InvalidOptionError, ModelTooLargeError
from localserve.plan.devices import GPU, Devices
from localserve.store.adapter import AdapterInfo
from localserve.store.gguf import GGML_TYPES, GGMLType, GGUFInfo, ProjectorInfo

__all__ = [
    "CPU_OVERHEAD_BYTES",
    "GPU_OVERHEAD_BYTES",
    "KV_TYPES",
    "DevicePlan",
    "LayerPlan",
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
_F32: Final = 4
_F16: Final = 2

# Encoder-only architectures have no output projection, so nothing is duplicated.
_ENCODER_ARCHS: Final = frozenset(
    {
        "bert",
        "nomic-bert",
        "nomic-bert-moe",
        "jina-bert-v2",
        "jina-bert-v3",
        "neo-bert",
        "modern-bert",
        "eurobert",
        "gemma-embedding",
    }
)
# Tensors of llama.cpp's input layer (LLM_TENSOR_LAYER_INPUT): always on the CPU.
_INPUT_TENSORS: Final = ("token_embd.", "position_embd.", "token_types.", "per_layer_token_embd.")


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


@dataclass(frozen=True)
class Plan:
    """Where a model's bytes go for one set of load options."""

    architecture: str | None
    num_ctx: int  # per sequence, after capping at the training context
    num_parallel: int
    num_batch: int
    num_ubatch: int
    kv_type: str
    kv_cells: int  # the KV pool: pad256(num_ctx x num_parallel)
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
            f"{self.kv_type}), compute {_mib(self.compute_bytes)}, overhead "
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


def _f32(x: float) -> float:
    """Round to a C float: llama.cpp computes the split points in single precision."""
    return float(struct.unpack("<f", struct.pack("<f", x))[0])


# ---------------------------------------------------------------------- model shape


@dataclass(frozen=True)
class _Shape:
    """The numbers the sizes depend on, read once from the header."""

    n_layer: int
    n_embd: int
    n_vocab: int
    n_head: int
    head_kv: tuple[int, ...]  # per layer
    key_length: int
    value_length: int
    n_ff: int
    n_expert: int
    n_expert_used: int
    n_ff_expert: int
    swa: bool
    mla: bool
    recurrent_floats: int  # recurrent state per layer without KV heads, per sequence
    ssm_inner: int
    layer_weights: tuple[int, ...]
    input_weights: int  # token embeddings and other input-layer tensors
    output_weights: int  # output_norm, output and any other non-block tensor
    tied_output: int  # token_embd bytes llama.cpp duplicates into the output layer


def _meta_int(info: GGUFInfo, key: str, default: int = 0) -> int:
    value = info.metadata.get(key)
    if isinstance(value, bool):
        return default
    if isinstance(value, int):
        return value
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        return max(int(v) for v in value)
    return default


def _per_layer(value: int | list[int] | None, n_layer: int) -> tuple[int, ...]:
    if value is None:
        return (0,) * n_layer
    if isinstance(value, int):
        return (value,) * n_layer
    # llama.cpp requires one value per layer; a short array leaves the rest without heads.
    return tuple(int(value[i]) if i < len(value) else 0 for i in range(n_layer))


def _shape(info: GGUFInfo) -> _Shape:
    arch = info.architecture or ""
    layer_bytes = info.layer_bytes
    n_layer = info.block_count
    if n_layer is None:
        n_layer = max(layer_bytes, default=-1) + 1
    n_layer = max(n_layer, 0)
    n_embd = info.embedding_length or 0
    heads = info.head_count
    n_head = max(heads, default=0) if isinstance(heads, list) else heads or 0
    tokens = info.vocab_size
    if tokens is None:
        embd = next((t for t in info.tensors if t.name == "token_embd.weight"), None)
        tokens = embd.shape[-1] if embd is not None and len(embd.shape) > 1 else 0

    inputs = outputs = 0
    names = set()
    for name, size in info.non_layer_bytes.items():
        names.add(name)
        if name.startswith(_INPUT_TENSORS):
            inputs += size
        else:
            # output_norm, output, cls.*: llama.cpp's output layer. Stray extras such as
            # rope_freqs are small; they go with it too.
            outputs += size
    tied = 0
    if "output.weight" not in names and arch not in _ENCODER_ARCHS:
        tied = info.non_layer_bytes.get("token_embd.weight", 0)

    d_conv = _meta_int(info, f"{arch}.ssm.conv_kernel")
    d_inner = _meta_int(info, f"{arch}.ssm.inner_size")
    d_state = _meta_int(info, f"{arch}.ssm.state_size")
    n_group = _meta_int(info, f"{arch}.ssm.group_count")
    wkv_head = _meta_int(info, f"{arch}.wkv.head_size")
    l_cache = _meta_int(info, f"{arch}.shortconv.l_cache")
    if wkv_head:  # RWKV: token shift + wkv state
        recurrent = _meta_int(info, f"{arch}.token_shift_count", 2) * n_embd + n_embd * wkv_head
    elif l_cache:  # LFM2 short convolutions
        recurrent = n_embd * max(l_cache - 1, 0)
    else:  # Mamba 1/2 and the hybrids: conv state + ssm state
        recurrent = max(d_conv - 1, 0) * (d_inner + 2 * n_group * d_state) + d_state * d_inner

    return _Shape(
        n_layer=n_layer,
        n_embd=n_embd,
        n_vocab=tokens,
        n_head=n_head,
        head_kv=_per_layer(info.head_count_kv, n_layer),
        key_length=info.key_length or 0,
        value_length=info.value_length or 0,
        n_ff=_meta_int(info, f"{arch}.feed_forward_length"),
        n_expert=_meta_int(info, f"{arch}.expert_count"),
        n_expert_used=_meta_int(info, f"{arch}.expert_used_count"),
        n_ff_expert=_meta_int(info, f"{arch}.expert_feed_forward_length"),
        swa=bool(info.sliding_window),
        mla=f"{arch}.attention.key_length_mla" in info.metadata,
        recurrent_floats=recurrent,
        ssm_inner=d_inner,
        layer_weights=tuple(layer_bytes.get(i, 0) for i in range(n_layer)),
        input_weights=inputs,
        output_weights=outputs,
        tied_output=tied,
    )


def _ggml_type(kv_type: str) -> GGMLType:
    return next(t for t in GGML_TYPES.values() if t.name == kv_type.upper())


def _row_bytes(kv_type: str, n: int) -> int:
    ggml = _ggml_type(kv_type)
    return -(-n // ggml.block_size) * ggml.type_size


def _kv_per_layer(shape: _Shape, cells: int, num_parallel: int, kv_type: str) -> list[int]:
    sizes = []
    for n_kv in shape.head_kv:
        if n_kv > 0:
            k = _row_bytes(kv_type, n_kv * shape.key_length)
            v = 0 if shape.mla else _row_bytes(kv_type, n_kv * shape.value_length)
            sizes.append(cells * (k + v))
        else:
            # No attention here: recurrent state (F32), one slot per sequence; 0 for a
            # plain feed-forward layer.
            sizes.append(shape.recurrent_floats * _F32 * max(1, num_parallel))
    return sizes


@dataclass(frozen=True)
class _Compute:
    """The phases of llama.cpp's reserved graph, in bytes (see the module docstring)."""

    masks: int
    embd: int  # the embedded input tokens
    layer: int  # activations of one repeating layer
    output: int  # the output phase: logits for every token of the micro-batch
    host_output: int  # the logits llama.cpp copies out, one row per sequence

    @property
    def full(self) -> int:
        return max(self.masks + self.layer, self.output)


def _compute(shape: _Shape, cells: int, num_ctx: int, options: _Options) -> _Compute:
    n_batch = min(num_ctx * options.num_parallel, options.num_batch)
    tokens = min(n_batch, options.num_ubatch)
    has_attention = any(n > 0 for n in shape.head_kv)
    masks = (2 if shape.swa else 1) * cells * tokens * _F16 if has_attention else 0
    ffn = 2 * shape.n_ff
    if shape.n_expert:
        ffn = max(ffn, shape.n_expert + 2 * max(shape.n_expert_used, 1) * shape.n_ff_expert)
    per_token = (
        4 * shape.n_embd
        + shape.n_head * shape.key_length
        + max(shape.head_kv, default=0) * (shape.key_length + shape.value_length)
        + ffn
        + 2 * shape.ssm_inner
    )
    return _Compute(
        masks=masks,
        embd=tokens * _F32 * shape.n_embd,
        layer=tokens * _F32 * per_token,
        output=tokens * _F32 * (shape.n_vocab + 2 * shape.n_embd),
        host_output=shape.n_vocab * options.num_parallel * _F32,
    )


# ---------------------------------------------------------------------- placement


@dataclass(frozen=True)
class _Options:
    num_parallel: int
    num_batch: int
    num_ubatch: int
    gpu_overhead: int
    cpu_overhead: int


def _placement(n_layers: int, counts: Sequence[int]) -> list[int | None]:
    """The device of each offloadable layer (None = CPU) when device i takes counts[i]
    of the last sum(counts) layers, in device order: what llama.cpp does with
    n_gpu_layers = sum(counts) and tensor_split = counts."""
    devices: list[int | None] = [None] * (n_layers - sum(counts))
    for i, count in enumerate(counts):
        devices += [i] * count
    return devices


def _spread(n_layers: int, n_gpu: int, gpus: Sequence[GPU]) -> list[int | None]:
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


def _by_size(gpus: Sequence[GPU]) -> list[int]:
    """Device indices, the most free memory first (ties in device order)."""
    return sorted(range(len(gpus)), key=lambda i: -gpus[i].free_bytes)


def _largest_first(
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
        for device in _by_size(gpus):
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


def _device_loads(
    shape: _Shape,
    kv: Sequence[int],
    compute: _Compute,
    placement: Sequence[int | None],
    gpus: Sequence[GPU],
    ram_available: int,
    options: _Options,
    projector_bytes: int = 0,
    adapters: Sequence[int] = (),
) -> tuple[list[LayerPlan], list[DevicePlan]]:
    """``adapters``: LoRA bytes by layer, the input layer first (``_adapter_layers``)."""
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


# -------------------------------------------------------------------------- the plan


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
    default) instead of filling the largest device first.
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

    shape = _shape(info)
    _check_kv_blocks(shape, kv_type)
    options = _Options(num_parallel, num_batch, num_ubatch, gpu_overhead, cpu_overhead)
    n_layers = shape.n_layer + 1
    cells = -(-num_ctx * num_parallel // KV_PAD) * KV_PAD
    kv = _kv_per_layer(shape, cells, num_parallel, kv_type)
    compute = _compute(shape, cells, num_ctx, options)
    gpus = devices.usable_gpus
    ram = devices.ram_available_bytes
    projector_bytes = projector_need(projector) if projector else 0
    adapter_layers = _adapter_layers(adapters, shape.n_layer)

    def loads(placement: list[int | None]) -> tuple[list[LayerPlan], list[DevicePlan]]:
        return _device_loads(
            shape, kv, compute, placement, gpus, ram, options, projector_bytes, adapter_layers
        )

    def fits(counts: list[int], device: int) -> bool:
        return loads(_placement(n_layers, counts))[1][device + 1].fits

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
                    if all(d.fits for d in loads(_spread(n_layers, n, gpus))[1] if d.is_gpu)
                ),
                0,
            )
        placement = _spread(n_layers, gpu_layers, gpus)
    else:
        wanted = n_layers if num_gpu < 0 else min(num_gpu, n_layers)
        counts = _largest_first(wanted, gpus, fits)
        if num_gpu < 0:
            # A device that took layers earlier in device order than one decided before
            # it moves that one's layers away from the output layer, which only makes
            # it lighter; still, check every device and hand back what does not fit.
            while bad := [i for i, c in enumerate(counts) if c and not fits(counts, i)]:
                counts[bad[0]] -= 1
        elif sum(counts) < wanted:
            # An explicit num_gpu is used as given: the rest goes to the largest device,
            # overcommitting it (a note below says so).
            counts[_by_size(gpus)[0]] += wanted - sum(counts)
        placement = _placement(n_layers, counts)
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
    )


def _check_kv_blocks(shape: _Shape, kv_type: str) -> None:
    """A quantized cache stores each head's keys and values in blocks (32 values for
    q8_0 and q4_0): llama.cpp refuses a model whose heads are not a whole number of
    blocks wide (llama_init_from_model); say so before anything loads."""
    ggml = _ggml_type(kv_type)
    if ggml.block_size == 1 or not any(n > 0 for n in shape.head_kv):
        return
    for what, width in (("key", shape.key_length), ("value", shape.value_length)):
        if what == "value" and shape.mla:
            continue
        if width % ggml.block_size:
            raise InvalidOptionError(
                f"a {kv_type} KV cache stores blocks of {ggml.block_size} values, but this "
                f"model's attention heads are {width} wide ({what} length)",
                hint="use kv_cache_type f16 for this model",
            )


def _adapter_layers(adapters: Sequence[AdapterInfo], n_layer: int) -> list[int]:
    """LoRA bytes by layer as llama.cpp places them: with the base tensor each pair
    updates. Index 0 is the input layer, 1 + il the block il, 1 + n_layer the output."""
    by_layer = [0] * (n_layer + 2)
    for adapter in adapters:
        for pair in adapter.pairs:
            name = pair.target
            block, dot, _ = name[4:].partition(".")
            if name.startswith("blk.") and dot and block.isdigit() and int(block) < n_layer:
                by_layer[1 + int(block)] += pair.n_bytes
            elif name.startswith(_INPUT_TENSORS):
                by_layer[0] += pair.n_bytes
            else:
                by_layer[1 + n_layer] += pair.n_bytes
    return by_layer


def projector_need(projector: ProjectorInfo) -> int:
    """A projector's weights and its encode buffer for one image (see the module doc)."""
    info = projector.gguf
    weights = sum(t.n_bytes for t in info.tensors) if info.tensors else projector.size
    prefix = "clip.vision." if projector.has_vision else "clip.audio."
    width = _meta_int(info, prefix + "embedding_length")
    ffn = _meta_int(info, prefix + "feed_forward_length")
    heads = _meta_int(info, prefix + "attention.head_count", 1)
    image = _meta_int(info, "clip.vision.image_size")
    patch = _meta_int(info, "clip.vision.patch_size", 1)
    # Audio encoders see 30 s windows of 1500 frames (Whisper's layout).
    patches = (image // max(1, patch)) ** 2 if projector.has_vision else 1500
    return weights + patches * _F32 * (4 * width + 2 * ffn) + heads * patches * patches * _F32
