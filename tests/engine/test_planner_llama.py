"""The memory planner against llama.cpp itself: its estimates against what llama.cpp
allocates (the tiny model, Gemma 3 270M), and the device probe on this machine through
ggml (engine/devices.py). tests/unit/test_planner.py has the planner on made-up machines."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from localserve.engine.devices import probe
from localserve.plan import Devices
from localserve.store.gguf import GGUFInfo, read_gguf
from tests.support.planning import RAM, GiB, MiB, blocks, fake_pynvml, header, plan_of


def llama_cpp_sizes(
    path: Path, caplog: pytest.LogCaptureFixture, configs: list[tuple[int, int, int, int]]
) -> list[dict[str, float]]:
    """What llama.cpp says it allocates on the CPU (MiB) for each (num_ctx, num_parallel,
    num_batch, num_ubatch), with the engine's own context parameters."""
    from localserve.engine.llama import Context, Model
    from localserve.runtime.options import LoadOptions

    pattern = re.compile(r"(KV|compute|output) buffer size =\s+([\d.]+) MiB")
    caplog.set_level(logging.INFO, logger="localserve.llama")
    model = Model([path], n_gpu_layers=0)
    results = []
    try:
        for num_ctx, num_parallel, num_batch, num_ubatch in configs:
            caplog.clear()
            options = LoadOptions(
                num_ctx=num_ctx,
                num_parallel=num_parallel,
                num_batch=num_batch,
                num_ubatch=num_ubatch,
            )
            context = Context(model, options, n_threads=1)
            context.close()
            sizes = {"KV": 0.0, "compute": 0.0, "output": 0.0}
            for record in caplog.records:
                for kind, mib in pattern.findall(record.getMessage()):
                    sizes[kind] += float(mib)
            results.append(sizes)
    finally:
        model.close()
    return results


CONFIGS = [(2048, 1, 2048, 512), (512, 4, 2048, 512), (1024, 2, 2048, 128), (100, 1, 2048, 512)]


@pytest.mark.slow
@pytest.mark.parametrize("which", ["tiny", "gemma"])
def test_estimates_match_what_llama_cpp_allocates(
    which: str,
    tiny_gguf_path: Path,
    gemma_gguf_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = tiny_gguf_path if which == "tiny" else gemma_gguf_path
    configs = CONFIGS if which == "tiny" else [*CONFIGS, (4096, 4, 2048, 512)]
    info = read_gguf(path)
    actual = llama_cpp_sizes(path, caplog, configs)
    for (num_ctx, num_parallel, num_batch, num_ubatch), real in zip(configs, actual, strict=True):
        p = plan_of(
            info,
            Devices.cpu_only(RAM),
            num_ctx=num_ctx,
            num_parallel=num_parallel,
            num_batch=num_batch,
            num_ubatch=num_ubatch,
        )
        cpu = p.devices[0]
        host_output = (info.vocab_size or 0) * num_parallel * 4
        assert real["KV"] == pytest.approx(p.kv_bytes / MiB, abs=0.01)
        assert real["output"] == pytest.approx(host_output / MiB, abs=0.01)
        graph = (cpu.compute_bytes - host_output) / MiB
        assert graph == pytest.approx(real["compute"], rel=0.10, abs=0.5), (num_ctx, real)


def test_probe_on_this_machine() -> None:
    import llama_cpp.llama_cpp as llama

    devices = probe()
    assert devices.ram_total_bytes > 0
    assert 0 < devices.ram_available_bytes <= devices.ram_total_bytes
    assert devices.can_offload == bool(llama.llama_supports_gpu_offload())
    if not devices.can_offload:  # the CPU-only build this suite usually runs on
        assert devices.usable_gpus == ()
    ram_only = probe(gpus=False)
    assert ram_only.gpus == ()


def test_cpu_only_build_says_why_a_card_is_unused(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    import llama_cpp.llama_cpp as llama

    # Behave as a CPU-only build whatever this one is, so the test always runs.
    monkeypatch.setattr(llama, "llama_supports_gpu_offload", lambda: False)
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(("NVIDIA H100", 80 * GiB, 79 * GiB)))
    found = probe()
    assert (found.can_offload, found.usable_gpus) == (False, ())
    assert any("NVIDIA H100" in note and "gpu.md" in note for note in found.notes)
    assert any("gpu.md" in note for note in plan_of(tiny_header(), found).notes)


def tiny_header() -> GGUFInfo:
    return header("llama", {"block_count": 1, "embedding_length": 64}, blocks(1))
