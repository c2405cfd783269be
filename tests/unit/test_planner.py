"""The memory planner against fake machines and generated GGUF shapes, the device probe's
NVML fallback, sizes, and the header read over HTTP Range requests.
(tests/engine/test_planner_llama.py checks the estimates against llama.cpp.)"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from localserve.engine.devices import probe
from localserve.errors import InvalidOptionError
from localserve.plan import GPU, Devices, ModelTooLargeError, Plan, parse_size
from localserve.plan.devices import probe_ram
from localserve.plan.planner import KV_PAD, processor_label
from localserve.plan.source import load_header, read_hub_header
from localserve.store.gguf import GGUFInfo, read_gguf
from localserve.store.refs import parse_ref
from tests.support.fakehub import FakeHub
from tests.support.planning import RAM, GiB, MiB, blocks, fake_pynvml, header, plan_of

# Generated shapes: (n_layer, n_embd, n_head, n_head_kv, n_ff, dtype)
SHAPES = [
    (2, 64, 4, 2, 128, "f32"),
    (8, 256, 8, 2, 512, "f16"),
    (5, 128, 4, 4, 256, "f32"),
    (3, 128, 8, 1, 384, "f16"),
]


@pytest.fixture(scope="module")
def gemma(gemma_gguf_path: Path) -> GGUFInfo:
    return read_gguf(gemma_gguf_path)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> list[GGUFInfo]:
    from tests.support.tiny_gguf import write_tiny_gguf

    root = tmp_path_factory.mktemp("shapes")
    infos = []
    for i, (n_layer, n_embd, n_head, n_head_kv, n_ff, dtype) in enumerate(SHAPES):
        path = write_tiny_gguf(
            root / f"shape{i}.gguf",
            n_layer=n_layer,
            n_embd=n_embd,
            n_head=n_head,
            n_head_kv=n_head_kv,
            n_ff=n_ff,
            dtype=dtype,  # type: ignore[arg-type]
        )
        infos.append(read_gguf(path))
    return infos


def gpus(*sizes: int, ram: int = RAM) -> Devices:
    return Devices.with_gpus(*sizes, ram_bytes=ram)


def on_gpu(p: Plan) -> list[int]:
    return [layer.index for layer in p.layers if layer.device != "CPU"]


def test_n_layers_is_blocks_plus_the_output_layer(shapes: list[GGUFInfo], gemma: GGUFInfo) -> None:
    for info, shape in zip(shapes, SHAPES, strict=True):
        assert plan_of(info, gpus()).n_layers == shape[0] + 1
    assert plan_of(gemma, gpus()).n_layers == 19  # 18 blocks + output


def test_num_gpu_counts_from_the_output_layer_down(gemma: GGUFInfo) -> None:
    """llama.cpp puts layers [n_layer + 1 - k, n_layer] on the GPU for n_gpu_layers = k:
    k = 1 is the output layer alone, k = 2 adds the last block, and the input layer
    (token embeddings) never moves."""
    big = gpus(80 * GiB)
    assert on_gpu(plan_of(gemma, big, num_gpu=1)) == [18]
    assert on_gpu(plan_of(gemma, big, num_gpu=2)) == [17, 18]
    assert on_gpu(plan_of(gemma, big, num_gpu=19)) == list(range(19))
    full = plan_of(gemma, big, num_gpu=19)
    first = full.layers[0]
    assert (first.index, first.kind, first.device) == (-1, "input", "CPU")
    assert full.layers[-1].kind == "output"


def test_no_gpu_means_no_layers(gemma: GGUFInfo) -> None:
    p = plan_of(gemma, Devices.cpu_only(RAM))
    assert (p.gpu_layers, p.processor, p.gpu_bytes, p.size_vram) == (0, "100% CPU", 0, 0)
    assert p.cpu_bytes == p.total_bytes
    forced = plan_of(gemma, Devices.cpu_only(RAM), num_gpu=10)
    assert forced.gpu_layers == 0
    assert any("ignored" in note for note in forced.notes)


def test_cpu_only_build_uses_no_gpu(gemma: GGUFInfo) -> None:
    devices = Devices(
        ram_total_bytes=RAM,
        ram_available_bytes=RAM,
        gpus=(GPU("CUDA0", 80 * GiB, 80 * GiB),),
        can_offload=False,
    )
    assert devices.usable_gpus == ()
    p = plan_of(gemma, devices)
    assert (p.gpu_layers, p.processor) == (0, "100% CPU")


def test_huge_card_takes_every_layer(gemma: GGUFInfo, shapes: list[GGUFInfo]) -> None:
    for info in [gemma, *shapes]:
        p = plan_of(info, gpus(80 * GiB))
        assert p.gpu_layers == p.n_layers
        assert p.processor == "100% GPU"
        assert p.size_vram == p.total_bytes
        assert p.fits


def test_card_big_enough_for_part_gives_partial_offload(gemma: GGUFInfo) -> None:
    p = plan_of(gemma, gpus(1300 * MiB), num_ctx=4096)
    assert 0 < p.gpu_layers < p.n_layers
    assert re.fullmatch(r"\d+%/\d+% CPU/GPU", p.processor)
    gpu = p.devices[1]
    assert gpu.fits and gpu.layers == p.gpu_layers
    # One more layer would not have fitted: the choice is the largest that does.
    more = plan_of(gemma, gpus(1300 * MiB), num_ctx=4096, num_gpu=p.gpu_layers + 1)
    assert not more.devices[1].fits
    assert any("loading may fail" in note for note in more.notes)
    # The last layers went, the first stayed.
    assert on_gpu(p) == list(range(p.n_layers - p.gpu_layers, p.n_layers))


def test_processor_is_the_cpu_share_of_the_bytes(gemma: GGUFInfo) -> None:
    p = plan_of(gemma, gpus(1300 * MiB), num_ctx=4096)
    cpu_share = round(p.cpu_bytes / p.total_bytes * 100)
    assert p.processor == f"{cpu_share}%/{100 - cpu_share}% CPU/GPU"
    assert p.size_vram == p.gpu_bytes
    assert p.gpu_bytes + p.cpu_bytes == p.total_bytes


@pytest.mark.parametrize("model", ["gemma", *range(len(SHAPES))])
def test_more_gpu_memory_never_means_fewer_layers(
    model: str | int, gemma: GGUFInfo, shapes: list[GGUFInfo]
) -> None:
    info = gemma if model == "gemma" else shapes[int(model)]
    # Small overheads for the tiny shapes, so that their few MB of layers matter.
    overhead = {} if model == "gemma" else {"gpu_overhead": 0, "cpu_overhead": 0}
    top = plan_of(info, gpus(80 * GiB), num_gpu=info.block_count + 1, **overhead)  # type: ignore[operator]
    need = top.devices[1].total_bytes
    steps = 60
    previous = -1
    counts = []
    for i in range(steps + 2):
        size = need * i // steps
        n = plan_of(info, gpus(size), **overhead).gpu_layers
        assert n >= previous, f"{size} bytes gave {n} layers, less than {previous}"
        previous = n
        counts.append(n)
    assert counts[0] == 0
    assert counts[-1] == top.n_layers
    assert any(0 < n < top.n_layers for n in counts), counts  # some size is a partial offload


def test_explicit_num_gpu_wins(gemma: GGUFInfo) -> None:
    small = plan_of(gemma, gpus(1 * GiB), num_gpu=19)
    assert small.gpu_layers == 19  # even when it overcommits the card (a note says so)
    assert not small.devices[1].fits
    clamped = plan_of(gemma, gpus(80 * GiB), num_gpu=500)
    assert clamped.gpu_layers == 19
    assert any("more than" in note for note in clamped.notes)
    assert plan_of(gemma, gpus(80 * GiB), num_gpu=0).gpu_layers == 0
    assert plan_of(gemma, gpus(80 * GiB), num_gpu=5).gpu_layers == 5


def test_layers_fill_the_largest_device_first(gemma: GGUFInfo) -> None:
    # A model that fits one card goes to one card: the larger, or the first of equals.
    even = plan_of(gemma, gpus(24 * GiB, 24 * GiB))
    assert [d.layers for d in even.devices] == [0, 19, 0]
    later = plan_of(gemma, gpus(8 * GiB, 24 * GiB))
    assert [d.layers for d in later.devices] == [0, 0, 19]
    assert later.tensor_split == (0, 19)  # what the runner hands llama.cpp
    assert later.layers[-1].device == "GPU1" and later.processor == "100% GPU"

    # Too big for either card: the larger takes what it alone would take, the smaller
    # as much of the rest as fits, the rest stays on the CPU.
    # (swa_full: a full-size window cache, as the card sizes here were chosen for)
    alone = plan_of(gemma, gpus(1300 * MiB), num_ctx=4096, swa_full=True)
    both = plan_of(gemma, gpus(700 * MiB, 1300 * MiB), num_ctx=4096, swa_full=True)
    cpu, small, large = (d.layers for d in both.devices)
    assert large == alone.gpu_layers
    assert small > 0 and cpu > 0
    assert all(d.fits for d in both.devices)
    assert both.gpu_layers == small + large and both.tensor_split == (small, large)
    # Layers stay in order: CPU first, then the cards in device order, output last.
    assert [layer.device for layer in both.layers[1:]] == (
        ["CPU"] * cpu + ["GPU0"] * small + ["GPU1"] * large
    )
    # Two cards that hold the model only together: the later one in device order takes
    # the output layer (the heaviest), and the larger, freed of it, every other layer.
    pair = plan_of(gemma, gpus(1300 * MiB, 1200 * MiB), num_ctx=4096, swa_full=True)
    assert pair.gpu_layers == pair.n_layers and all(d.fits for d in pair.devices)
    assert pair.tensor_split[0] > pair.tensor_split[1] > 0

    # An explicit num_gpu beyond what fits: the extra layers go to the largest card,
    # overcommitting it (a note warns).
    more = plan_of(
        gemma,
        gpus(700 * MiB, 1300 * MiB),
        num_ctx=4096,
        num_gpu=both.gpu_layers + 2,
        swa_full=True,
    )
    assert more.tensor_split == (small, large + 2)
    assert more.devices[1].fits and not more.devices[2].fits
    assert any("GPU1 needs" in note and "loading may fail" in note for note in more.notes)


def test_spread_cuts_in_proportion_to_free_memory(gemma: GGUFInfo) -> None:
    even = plan_of(gemma, gpus(24 * GiB, 24 * GiB), spread=True)
    assert even.gpu_layers == 19
    # Layer j of the 19 offloaded goes to GPU0 while j/19 < 0.5: j = 0..9.
    assert [d.layers for d in even.devices] == [0, 10, 9]
    uneven = plan_of(gemma, gpus(24 * GiB, 8 * GiB), spread=True)
    assert [d.layers for d in uneven.devices] == [0, 15, 4]  # j/19 < 0.75: j = 0..14
    # The output layer goes with the last card, and that card holds the logits.
    assert uneven.layers[-1].device == "GPU1"
    assert uneven.devices[2].compute_bytes > uneven.devices[1].compute_bytes
    assert uneven.processor == "100% GPU"
    # Two cards, each too small for the whole model: together they hold more than one.
    one = plan_of(gemma, gpus(1300 * MiB), num_ctx=4096, spread=True)
    two = plan_of(gemma, gpus(1300 * MiB, 1300 * MiB), num_ctx=4096, spread=True)
    assert two.gpu_layers > one.gpu_layers


def llama_cpp_placement(n_layers: int, n_gpu: int, split: list[float]) -> list[int | None]:
    """llama.cpp's load_tensors placement, written out from llama-model.cpp: cumulative
    split points normalized in single precision, then upper_bound per offloaded layer."""
    import bisect
    import struct

    def f32(x: float) -> float:
        return float(struct.unpack("f", struct.pack("f", x))[0])

    points, total = [], 0.0
    for value in split:
        total = f32(total + value)
        points.append(total)
    points = [f32(point / total) for point in points]
    start = n_layers - n_gpu
    return [
        None if il < start else bisect.bisect_right(points, f32((il - start) / n_gpu))
        for il in range(n_layers)
    ]


@pytest.mark.parametrize(
    "sizes", [(700, 1300), (1300, 700), (700, 1300, 800), (600, 600, 600, 2000), (1300, 1200)]
)
def test_the_tensor_split_makes_llama_cpp_place_layers_as_planned(
    gemma: GGUFInfo, sizes: tuple[int, ...]
) -> None:
    p = plan_of(gemma, gpus(*(size * MiB for size in sizes)), num_ctx=4096)
    planned = [
        None if layer.device == "CPU" else int(layer.device.removeprefix("GPU"))
        for layer in p.layers[1:]
    ]
    assert p.gpu_layers > 0  # a placement worth checking
    split = [float(n) for n in p.tensor_split]
    assert llama_cpp_placement(p.n_layers, p.gpu_layers, split) == planned
    assert all(d.fits for d in p.devices)


def test_gpu_without_room_for_its_overhead_gets_nothing(gemma: GGUFInfo) -> None:
    p = plan_of(gemma, gpus(256 * MiB))
    assert (p.gpu_layers, p.processor) == (0, "100% CPU")
    assert p.devices[1].total_bytes == 0


def test_kv_grows_linearly_with_context_and_parallel(gemma: GGUFInfo) -> None:
    cpu = Devices.cpu_only(RAM)
    full = plan_of(gemma, cpu, num_ctx=1024, num_parallel=1, swa_full=True).kv_bytes
    # Gemma 3 270M: 18 layers x 1 KV head x (256 + 256) x f16 per cell.
    assert full == 18 * 1 * (256 + 256) * 2 * 1024
    for factor in (2, 4, 8):
        for num_ctx, num_parallel in ((1024 * factor, 1), (1024, factor)):
            planned = plan_of(gemma, cpu, num_ctx=num_ctx, num_parallel=num_parallel, swa_full=True)
            assert planned.kv_bytes == factor * full
            # With the window's own cache, only the 3 global layers grow with the pool;
            # the 15 sliding ones hold 512 positions a sequence and a micro-batch.
            windowed = plan_of(gemma, cpu, num_ctx=num_ctx, num_parallel=num_parallel)
            window = min(1024 * factor, -(-(512 * num_parallel + 512) // 256) * 256)
            assert windowed.swa_cells == window
            assert windowed.kv_bytes == (3 * 1024 * factor + 15 * window) * 1024


def test_kv_cells_are_padded_like_llama_cpp(shapes: list[GGUFInfo]) -> None:
    p = plan_of(shapes[0], Devices.cpu_only(RAM), num_ctx=100, num_parallel=3)
    assert p.kv_cells == 512  # 300 rounded up to a multiple of 256
    assert KV_PAD == 256


def test_kv_per_layer_follows_the_shape(shapes: list[GGUFInfo]) -> None:
    for info, (n_layer, n_embd, n_head, n_head_kv, _, _) in zip(shapes, SHAPES, strict=True):
        p = plan_of(info, Devices.cpu_only(RAM), num_ctx=512, num_parallel=2)
        head_dim = n_embd // n_head
        assert p.kv_bytes == 2 * n_layer * 1024 * n_head_kv * head_dim * 2
        assert {layer.kv_bytes for layer in p.layers if layer.kind == "repeating"} == {
            p.kv_bytes // n_layer
        }


def test_quantized_kv_cache(gemma: GGUFInfo) -> None:
    f16 = plan_of(gemma, Devices.cpu_only(RAM), num_ctx=1024, num_parallel=1)
    q8 = plan_of(gemma, Devices.cpu_only(RAM), num_ctx=1024, num_parallel=1, kv_type="q8_0")
    q4 = plan_of(gemma, Devices.cpu_only(RAM), num_ctx=1024, num_parallel=1, kv_type="Q4_0")
    # q8_0: 34 bytes per 32 values; q4_0: 18 bytes per 32; f16: 64 bytes per 32.
    assert q8.kv_bytes == f16.kv_bytes * 34 // 64
    assert q4.kv_bytes == f16.kv_bytes * 18 // 64
    with pytest.raises(InvalidOptionError, match="KV cache type"):
        plan_of(gemma, Devices.cpu_only(RAM), kv_type="q3_k")


def test_context_is_capped_at_the_training_context(shapes: list[GGUFInfo]) -> None:
    p = plan_of(shapes[0], Devices.cpu_only(RAM), num_ctx=100_000, num_parallel=1)
    assert p.num_ctx == 2048
    assert any("training context" in note for note in p.notes)


@pytest.mark.parametrize(
    "bad", [{"num_ctx": 0}, {"num_parallel": 0}, {"num_ubatch": 0}, {"num_gpu": -2}]
)
def test_bad_options_are_refused(gemma: GGUFInfo, bad: dict[str, int]) -> None:
    with pytest.raises(InvalidOptionError):
        plan_of(gemma, Devices.cpu_only(RAM), **bad)


def test_per_layer_kv_heads_and_different_key_value_lengths() -> None:
    info = header(
        "llama",
        {
            "block_count": 4,
            "embedding_length": 512,
            "attention.head_count": 8,
            "attention.head_count_kv": [8, 2, 0, 4],
            "attention.key_length": 192,
            "attention.value_length": 128,
            "context_length": 4096,
        },
        blocks(4),
    )
    p = plan_of(info, Devices.cpu_only(RAM), num_ctx=256, num_parallel=1)
    per_layer = [layer.kv_bytes for layer in p.layers if layer.kind == "repeating"]
    cells = 256
    assert per_layer == [cells * h * (192 + 128) * 2 for h in (8, 2, 0, 4)]


def test_sliding_window_layers_hold_the_window() -> None:
    """Gemma 3's pattern: five sliding-window layers in six, each holding the window of
    every sequence and a micro-batch (llama.cpp's iSWA cache); the sixth the pool."""
    meta = {
        "block_count": 12,
        "embedding_length": 256,
        "attention.head_count": 4,
        "attention.head_count_kv": 1,
        "context_length": 32768,
    }
    cpu = Devices.cpu_only(RAM)
    plain = plan_of(header("gemma3", meta, blocks(12)), cpu, num_ctx=8192)
    windowed = header("gemma3", {**meta, "attention.sliding_window": 512}, blocks(12))
    swa = plan_of(windowed, cpu, num_ctx=8192)
    per_cell = 1 * (64 + 64) * 2  # a layer's K and V, f16
    assert plain.swa_cells == 0 and plain.kv_bytes == 12 * 32768 * per_cell
    assert swa.swa_cells == 2560  # 512 x 4 sequences + 512, a multiple of 256
    assert swa.kv_bytes == (2 * 32768 + 10 * 2560) * per_cell
    assert [layer.kv_bytes for layer in swa.layers[1:7]] == [2560 * per_cell] * 5 + [
        32768 * per_cell
    ]
    assert swa.compute_bytes > plain.compute_bytes  # a second attention mask
    # swa_full (LOCALSERVE_SWA_FULL): the window's layers as large as the pool.
    full = plan_of(windowed, cpu, num_ctx=8192, swa_full=True)
    assert (full.swa_cells, full.kv_bytes) == (32768, plain.kv_bytes)
    # The window never holds more than the pool; a GGUF's own pattern wins.
    assert plan_of(windowed, cpu, num_ctx=256, num_parallel=1).swa_cells == 256
    flags = [True, False] * 6
    patterned = header(
        "gemma3",
        {**meta, "attention.sliding_window": 512, "attention.sliding_window_pattern": flags},
        blocks(12),
    )
    assert plan_of(patterned, cpu, num_ctx=8192).kv_bytes == (6 * 32768 + 6 * 2560) * per_cell
    # An architecture llama.cpp never windows keeps every layer whole, whatever its GGUF.
    qwen = header("qwen2", {**meta, "attention.sliding_window": 512}, blocks(12))
    assert plan_of(qwen, cpu, num_ctx=8192).swa_cells == 0


def test_mla_stores_keys_only() -> None:
    meta = {
        "block_count": 2,
        "embedding_length": 1024,
        "attention.head_count": 16,
        "attention.head_count_kv": 1,
        "attention.key_length": 576,
        "attention.value_length": 512,
        "attention.key_length_mla": 192,
        "context_length": 4096,
    }
    p = plan_of(header("deepseek2", meta, blocks(2)), Devices.cpu_only(RAM), num_ctx=1024)
    assert p.kv_bytes == 2 * 4096 * 576 * 2  # 2 layers, 4096 cells, K only


def test_recurrent_model_is_planned_without_kv_cache() -> None:
    meta = {
        "block_count": 3,
        "embedding_length": 768,
        "attention.head_count": 0,
        "attention.head_count_kv": 0,
        "ssm.conv_kernel": 4,
        "ssm.inner_size": 1536,
        "ssm.state_size": 16,
        "ssm.time_step_rank": 48,
        "context_length": 1 << 20,
    }
    info = header("mamba", meta, blocks(3))
    small = plan_of(info, Devices.cpu_only(RAM), num_ctx=512, num_parallel=2)
    large = plan_of(info, Devices.cpu_only(RAM), num_ctx=65536, num_parallel=2)
    state = (4 - 1) * 1536 + 16 * 1536  # conv + ssm state, F32, per sequence
    assert small.kv_bytes == large.kv_bytes == 3 * state * 4 * 2
    assert plan_of(info, gpus(80 * GiB)).gpu_layers == 4


def test_hybrid_model_mixes_kv_and_recurrent_state() -> None:
    meta = {
        "block_count": 4,
        "embedding_length": 512,
        "attention.head_count": 8,
        "attention.head_count_kv": [0, 0, 0, 2],
        "ssm.conv_kernel": 4,
        "ssm.inner_size": 1024,
        "ssm.state_size": 128,
        "ssm.group_count": 1,
        "context_length": 8192,
    }
    p = plan_of(header("granitehybrid", meta, blocks(4)), Devices.cpu_only(RAM), num_ctx=1024)
    kv = [layer.kv_bytes for layer in p.layers if layer.kind == "repeating"]
    recurrent = ((4 - 1) * (1024 + 2 * 128) + 128 * 1024) * 4 * 4
    assert kv == [recurrent] * 3 + [4096 * 2 * 64 * 2 * 2]


def test_a_header_without_block_count_still_plans() -> None:
    info = header("llama", {"embedding_length": 64}, blocks(3))
    p = plan_of(info, gpus(80 * GiB))
    assert p.n_layers == 4
    assert p.kv_bytes == 0  # no head counts: nothing to size, nothing crashes


def test_tied_embeddings_are_copied_to_the_gpu_with_the_output_layer(
    gemma: GGUFInfo, shapes: list[GGUFInfo]
) -> None:
    embd = gemma.non_layer_bytes["token_embd.weight"]
    cpu = plan_of(gemma, Devices.cpu_only(RAM))
    gpu = plan_of(gemma, gpus(80 * GiB))
    assert cpu.weights_bytes == gemma.weights_bytes
    assert gpu.weights_bytes == gemma.weights_bytes + embd  # Gemma 3 has no output.weight
    assert gpu.layers[-1].weights_bytes == gemma.non_layer_bytes["output_norm.weight"] + embd
    tiny = shapes[0]  # has its own output.weight: nothing is duplicated
    assert plan_of(tiny, gpus(80 * GiB)).weights_bytes == tiny.weights_bytes


def test_weights_by_layer_add_up(gemma: GGUFInfo) -> None:
    p = plan_of(gemma, gpus(1300 * MiB), num_ctx=4096)
    assert sum(layer.weights_bytes for layer in p.layers) == p.weights_bytes
    assert sum(layer.kv_bytes for layer in p.layers) == p.kv_bytes
    for device in p.devices:
        placed = [layer for layer in p.layers if layer.device == device.name]
        assert sum(layer.weights_bytes for layer in placed) == device.weights_bytes


def test_refuses_when_ram_cannot_hold_the_cpu_part(gemma: GGUFInfo) -> None:
    p = plan_of(gemma, Devices.cpu_only(4 * GiB, available_bytes=300 * MiB))
    assert not p.fits
    assert p.reason is not None and "RAM" in p.reason
    with pytest.raises(ModelTooLargeError) as caught:
        p.require_fit()
    assert caught.value.hint is not None and "num_ctx" in caught.value.hint
    assert caught.value.needed_bytes == p.cpu_bytes
    assert caught.value.available_bytes == 300 * MiB


def test_a_gpu_takes_load_off_ram(gemma: GGUFInfo) -> None:
    ram = 700 * MiB
    assert not plan_of(gemma, Devices.cpu_only(ram)).fits
    offloaded = plan_of(gemma, gpus(80 * GiB, ram=ram))
    assert offloaded.fits
    assert offloaded.require_fit() is offloaded


def test_processor_labels() -> None:
    assert processor_label(100, 0) == "100% CPU"
    assert processor_label(100, 100) == "100% GPU"
    assert processor_label(100, 65) == "35%/65% CPU/GPU"
    assert processor_label(0, 0) == "100% CPU"


def test_plan_as_json_and_log_line(gemma: GGUFInfo) -> None:
    p = plan_of(gemma, gpus(1300 * MiB), num_ctx=4096)
    data = json.loads(json.dumps(p.to_dict()))
    for key in (
        "weights_bytes",
        "kv_bytes",
        "compute_bytes",
        "overhead_bytes",
        "total_bytes",
        "gpu_layers",
        "n_layers",
        "processor",
        "gpu_bytes",
        "cpu_bytes",
        "size_vram",
    ):
        assert key in data
    assert data["total_bytes"] == sum(d["total_bytes"] for d in data["devices"])
    assert len(data["layers"]) == p.n_layers + 1  # plus the input layer
    line = p.summary()
    assert f"{p.gpu_layers}/19 layers on GPU" in line and p.processor in line


def test_parse_size() -> None:
    assert parse_size("24GiB") == 24 * GiB
    assert parse_size("512MiB") == 512 * MiB
    assert parse_size("512 mib") == 512 * MiB
    assert parse_size("8GB") == 8 * 10**9
    assert parse_size("1.5GiB") == 3 * GiB // 2
    assert parse_size("0") == 0
    assert parse_size("4096B") == 4096
    for bad in ("", "24", "-1GiB", "GiB", "24XB", "1e3GiB", "nan", "24 GiB extra", "0x10MiB"):
        with pytest.raises(InvalidOptionError, match="invalid size"):
            parse_size(bad)
    with pytest.raises(InvalidOptionError, match="too large"):
        parse_size("2000TiB")


def test_probe_ram_reads_meminfo(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:  16384 kB\nMemFree:  1024 kB\nMemAvailable:  8192 kB\n")
    assert probe_ram(str(meminfo)) == (16384 * 1024, 8192 * 1024)
    total, available = probe_ram(str(tmp_path / "missing"))  # falls back to sysconf
    assert total > 0 and 0 < available <= total


def test_probe_falls_back_to_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from localserve.engine import devices as devices_module

    def no_llama_cpp(base: Devices) -> Devices:
        raise ImportError("no llama_cpp here")

    monkeypatch.setattr(devices_module, "_probe_ggml", no_llama_cpp)
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(("NVIDIA L4", 24 * GiB, 20 * GiB)))
    found = probe()
    assert found.source == "nvml"
    assert [(g.name, g.description, g.total_bytes, g.free_bytes) for g in found.usable_gpus] == [
        ("CUDA0", "NVIDIA L4", 24 * GiB, 20 * GiB)
    ]
    monkeypatch.delitem(sys.modules, "pynvml")
    monkeypatch.setattr(sys, "path", [])  # nothing importable: no GPU at all
    assert probe().gpus == ()


def test_simulated_card() -> None:
    base = Devices.cpu_only(RAM)
    assert base.simulate_gpu(0).usable_gpus == ()
    card = base.simulate_gpu(24 * GiB).usable_gpus
    assert [(g.total_bytes, g.free_bytes) for g in card] == [(24 * GiB, 24 * GiB)]


def served_bytes(hub: FakeHub) -> int:
    """Bytes of file data the fake hub sent, from the Range headers of its 206 answers."""
    total = 0
    for record in hub.requests:
        if record.method != "GET" or "/api/" in record.path or record.status not in (200, 206):
            continue
        start, end = (int(x) for x in (record.range or "").removeprefix("bytes=").split("-"))
        total += end - start + 1
    return total


def test_remote_plan_equals_the_local_plan(
    fake_hub: FakeHub, gemma_gguf_path: Path, gemma: GGUFInfo
) -> None:
    fake_hub.add_repo("tester/gemma-GGUF", {"gemma-3-270m-Q4_K_M.gguf": gemma_gguf_path})
    remote = read_hub_header(parse_ref("hf.co/tester/gemma-GGUF:Q4_K_M"))
    assert remote.source == "hub"
    assert remote.size == gemma_gguf_path.stat().st_size
    for devices in (Devices.cpu_only(RAM), gpus(1300 * MiB), gpus(80 * GiB)):
        assert plan_of(remote.info, devices) == plan_of(gemma, devices)
    # 253 MB file, 6.5 MB header: 256 KiB, then doubling reads, about 8 MB in all.
    assert remote.bytes_read == served_bytes(fake_hub)
    assert gemma.data_offset <= remote.bytes_read < 10 * 10**6
    assert remote.requests <= 8


def test_remote_plan_when_the_server_ignores_range(
    fake_hub: FakeHub, make_gguf: Callable[..., Path]
) -> None:
    path = make_gguf("big.gguf", n_embd=256, n_ff=4096, n_layer=4)  # about 36 MB
    fake_hub.add_repo("tester/big-GGUF", {"big-F32.gguf": path})
    fake_hub.faults.ignore_range = True
    remote = read_hub_header(parse_ref("tester/big-GGUF"))
    local = read_gguf(path)
    assert plan_of(remote.info, gpus(8 * GiB)) == plan_of(local, gpus(8 * GiB))
    assert remote.bytes_read < path.stat().st_size // 4  # stopped reading early


def test_load_header_prefers_the_store(
    fake_hub: FakeHub, tiny_gguf_path: Path, isolated_home: Path
) -> None:
    from localserve.store.importing import import_gguf
    from localserve.store.store import ModelStore

    store = ModelStore(isolated_home / "models")
    list(import_gguf(store, tiny_gguf_path, "tiny"))
    stored = load_header("tiny", store)
    assert (stored.source, stored.bytes_read, stored.name) == ("store", 0, "tiny:latest")
    fake_hub.add_repo("tester/tiny-GGUF", {"tiny-F32.gguf": tiny_gguf_path})
    remote = load_header("hf.co/tester/tiny-GGUF", store)
    assert remote.source == "hub"
    assert plan_of(remote.info, gpus(GiB)) == plan_of(stored.info, gpus(GiB))
