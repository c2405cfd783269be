"""What llama.cpp allocates for a model, in bytes: weights, KV cache, compute buffer,
projector and LoRA adapters, per layer where they belong to one.

Everything is read from the GGUF header (tensor sizes, head counts) and the load
options; the planner (planner.py) adds up what each device holds once placement.py
has decided where each layer goes. Sizes follow the vendored llama.cpp sources
(llama-model.cpp ``load_tensors``, llama-kv-cache.cpp, llama-context.cpp).

**Formulas** (bytes; docs/gpu.md has the long form):

- weights: each tensor's size from the header, summed per layer.
- KV cache: cells = pad256(num_ctx x num_parallel) (one unified pool, padded as
  llama.cpp pads n_ctx); per attention layer il
  ``cells x n_head_kv(il) x (key_length + value_length) x bytes(kv_type)``, i.e.
  2 x n_layer x cells x n_head_kv x head_dim x bytes when K and V agree. Sliding-window
  layers (``swa_layers``: which layers llama.cpp gives a window, by architecture and the
  GGUF's pattern) hold ``swa_cells`` = pad256(min(cells, window x num_parallel +
  ubatch)) cells, llama.cpp's iSWA cache, or the full pool with ``swa_full``. MLA models
  (``key_length_mla``) store K only. Layers with no KV heads hold recurrent state instead (Mamba, RWKV,
  LFM2 short convolutions): (r + s) x 4 bytes x num_parallel.
- compute buffer: llama.cpp reserves its graph for one micro-batch of
  t = min(num_ctx x num_parallel, num_batch, num_ubatch) tokens with every token an
  output, and the allocator reuses memory between phases, so the buffer is the larger of
  the attention phase, ``masks + t x 4 x (4 n_embd + n_head hd_k + n_head_kv (hd_k + hd_v)
  + 2 n_ff)`` with masks = (cells, plus swa_cells with a sliding window) x t x 2 (f16,
  flash attention), and the output phase, ``t x 4 x (n_vocab + 2 n_embd)``; plus the host
  logits buffer ``n_vocab x num_parallel x 4``. Against llama.cpp's own log (CPU) this is
  within a few percent or half a MiB for the tiny test model and Gemma 3 270M
  (tests/unit/test_planner.py; the numbers are in docs/gpu.md).
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
  workspace, allocator slack) and ``CPU_OVERHEAD_BYTES`` for the runner process (both in planner.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from localserve.errors import InvalidOptionError
from localserve.store.adapter import AdapterInfo
from localserve.store.gguf import GGML_TYPES, GGMLType, GGUFInfo, ProjectorInfo

__all__ = [
    "ComputeBuffer",
    "PlanOptions",
    "Shape",
    "adapters_by_layer",
    "check_kv_blocks",
    "compute_buffer",
    "kv_per_layer",
    "model_shape",
    "projector_need",
    "swa_cells",
    "swa_layers",
]

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
# Architectures whose layers llama.cpp gives a sliding window, by its pattern (every
# n-th layer global: the last of each n, or the first with ``dense_first``), as the
# vendored llama.cpp's src/models/*.cpp set it (``load_swa_pattern``). A GGUF's own
# ``attention.sliding_window_pattern`` (a number, or a flag per layer) wins.
_SWA_PATTERNS: Final[dict[str, tuple[int, bool]]] = {
    "gemma2": (2, False),
    "gemma3": (6, False),
    "gemma3n": (5, False),
    "gemma-embedding": (6, False),
    "cohere2": (4, False),
    "cohere2moe": (4, True),
    "gpt-oss": (2, False),
    "llama4": (4, False),
    "exaone4": (4, False),
    "exaone-moe": (4, False),
    "olmo2": (4, False),
    "afmoe": (4, False),
    "smallthinker": (4, True),
    "plamo3": (8, False),
}
# Their window when the GGUF has none (llama.cpp's defaults); the others without one
# have no sliding window at all.
_SWA_DEFAULT_WINDOW: Final[dict[str, int]] = {"gemma2": 4096, "llama4": 8192, "exaone-moe": 128}
# Tensors of llama.cpp's input layer (LLM_TENSOR_LAYER_INPUT): always on the CPU.
_INPUT_TENSORS: Final = ("token_embd.", "position_embd.", "token_types.", "per_layer_token_embd.")


@dataclass(frozen=True)
class PlanOptions:
    """The load options the sizes depend on, and the fixed overheads per device."""

    num_parallel: int
    num_batch: int
    num_ubatch: int
    gpu_overhead: int
    cpu_overhead: int


@dataclass(frozen=True)
class Shape:
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
    swa: bool  # any sliding-window layer
    swa_layers: tuple[bool, ...]  # per layer: a sliding-window layer (llama.cpp's iSWA cache)
    n_swa: int  # the window, in positions
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


def swa_layers(info: GGUFInfo, n_layer: int) -> tuple[tuple[bool, ...], int]:
    """Which layers llama.cpp gives a sliding window, and the window; none for a model
    without one (an architecture llama.cpp never windows, whatever its GGUF says)."""
    arch = info.architecture or ""
    key = f"{arch}.attention.sliding_window"
    # A window of 0 in the GGUF means none (llama4: chunked attention off).
    window = _meta_int(info, key, _SWA_DEFAULT_WINDOW.get(arch, 0))
    pattern = info.metadata.get(f"{arch}.attention.sliding_window_pattern")
    none = (False,) * n_layer
    if window <= 0:
        return none, 0
    if isinstance(pattern, list) and pattern and all(isinstance(v, bool) for v in pattern):
        flags = tuple(bool(pattern[i]) if i < len(pattern) else False for i in range(n_layer))
        return flags, window if any(flags) else 0
    if arch not in _SWA_PATTERNS:
        return none, 0
    every, dense_first = _SWA_PATTERNS[arch]
    if isinstance(pattern, int) and not isinstance(pattern, bool):
        every = pattern
    if dense_first:
        flags = tuple(every == 0 or il % every != 0 for il in range(n_layer))
    else:
        flags = tuple(every == 0 or il % every < every - 1 for il in range(n_layer))
    return flags, window if any(flags) else 0


def swa_cells(shape: Shape, cells: int, options: PlanOptions, *, swa_full: bool) -> int:
    """Cells of the sliding-window layers' cache: llama.cpp's iSWA size for one unified
    pool, ``pad256(min(cells, window x sequences + ubatch))``, or the whole pool with
    ``swa_full``; 0 for a model without a window."""
    if not shape.swa:
        return 0
    if swa_full:
        return cells
    ubatch = min(options.num_batch, options.num_ubatch)
    wanted = shape.n_swa * options.num_parallel + ubatch
    return min(cells, -(-wanted // 256) * 256)


def model_shape(info: GGUFInfo) -> Shape:
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

    windowed, n_swa = swa_layers(info, n_layer)
    return Shape(
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
        swa=bool(n_swa),
        swa_layers=windowed,
        n_swa=n_swa,
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


def kv_per_layer(
    shape: Shape, cells: int, num_parallel: int, kv_type: str, window_cells: int = 0
) -> list[int]:
    """Each layer's KV bytes: ``cells`` per attention layer, ``window_cells`` for a
    sliding-window layer (``swa_cells``), the recurrent state for the others."""
    sizes = []
    for il, n_kv in enumerate(shape.head_kv):
        if n_kv > 0:
            k = _row_bytes(kv_type, n_kv * shape.key_length)
            v = 0 if shape.mla else _row_bytes(kv_type, n_kv * shape.value_length)
            windowed = window_cells and il < len(shape.swa_layers) and shape.swa_layers[il]
            sizes.append((window_cells if windowed else cells) * (k + v))
        else:
            # No attention here: recurrent state (F32), one slot per sequence; 0 for a
            # plain feed-forward layer.
            sizes.append(shape.recurrent_floats * _F32 * max(1, num_parallel))
    return sizes


@dataclass(frozen=True)
class ComputeBuffer:
    """The phases of llama.cpp's reserved graph, in bytes (see the module docstring)."""

    masks: int
    embd: int  # the embedded input tokens
    layer: int  # activations of one repeating layer
    output: int  # the output phase: logits for every token of the micro-batch
    host_output: int  # the logits llama.cpp copies out, one row per sequence

    @property
    def full(self) -> int:
        return max(self.masks + self.layer, self.output)


def compute_buffer(
    shape: Shape, cells: int, num_ctx: int, options: PlanOptions, window_cells: int = 0
) -> ComputeBuffer:
    """``window_cells``: the sliding-window layers' cache (``swa_cells``), whose mask
    is as wide as it."""
    n_batch = min(num_ctx * options.num_parallel, options.num_batch)
    tokens = min(n_batch, options.num_ubatch)
    has_attention = any(n > 0 for n in shape.head_kv)
    window = (window_cells or cells) if shape.swa else 0
    masks = (cells + window) * tokens * _F16 if has_attention else 0
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
    return ComputeBuffer(
        masks=masks,
        embd=tokens * _F32 * shape.n_embd,
        layer=tokens * _F32 * per_token,
        output=tokens * _F32 * (shape.n_vocab + 2 * shape.n_embd),
        host_output=shape.n_vocab * options.num_parallel * _F32,
    )


def check_kv_blocks(shape: Shape, kv_type: str) -> None:
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


def adapters_by_layer(adapters: Sequence[AdapterInfo], n_layer: int) -> list[int]:
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
