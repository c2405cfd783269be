"""The device probe: what the real machine has, as llama.cpp will see it.

The planner takes a ``Devices`` value (plan/devices.py) and never looks at the machine
itself; this module fills one in:

- RAM from ``/proc/meminfo`` (plan/devices.py ``probe_ram``);
- GPUs as llama.cpp itself sees them, through ggml's backend device API
  (``ggml_backend_dev_count/get/name/description/type/memory``) bound with ctypes on
  the library llama-cpp-python loads (engine/rpc.py ``ggml_library``). That covers CUDA,
  ROCm, Metal and Vulkan builds alike. ``llama_supports_gpu_offload()`` false (a
  CPU-only build) means no GPU, whatever is plugged in: llama.cpp would not use it.
- If llama-cpp-python cannot be imported, NVIDIA cards through nvidia-ml-py (``pynvml``)
  when it is installed; otherwise no GPU.
- RPC workers (``localserve worker`` on other machines, engine/rpc.py) join as one more
  GPU each device they serve (``with_workers``), first in the list as llama.cpp orders
  them, named RPC0, RPC1... with their address as the description.

On a CUDA build asking a device for its free memory creates a CUDA context in the
calling process (a few hundred MB of VRAM until the process exits), so the daemon never
probes: the runner (a short-lived child per model) and the ``plan`` command do.
"""

from __future__ import annotations

import ctypes
import importlib
import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Final

from localserve.plan.devices import GPU, Devices, ram_only

__all__ = ["probe", "with_workers"]

log = logging.getLogger("localserve.plan")

# ggml_backend_dev_type (ggml-backend.h)
_DEV_GPU: Final = 1
_DEV_IGPU: Final = 2


def probe(*, gpus: bool = True) -> Devices:
    """The real machine: RAM, and the GPUs llama.cpp would use (see the module docstring).

    ``gpus=False`` reads RAM only (a CPU-only load, a simulated card: nothing loads
    llama.cpp then).
    """
    base = ram_only()
    if not gpus:
        return base
    try:
        return _probe_ggml(base)
    except (ImportError, OSError, AttributeError) as exc:
        log.debug("ggml device probe unavailable: %s", exc)
    try:
        found = _probe_nvml()
    except Exception as exc:  # pynvml raises its own NVMLError types
        log.debug("NVML probe unavailable: %s", exc)
        return base
    return replace(base, gpus=found, source="nvml")


def with_workers(
    devices: Devices, endpoints: Sequence[str], *, timeout: float = 5.0
) -> tuple[Devices, tuple[str, ...]]:
    """``devices`` with the devices of the RPC workers at ``endpoints`` that answer
    within ``timeout`` seconds, and those workers' addresses (the ones to load with).
    A worker that does not answer is left out, with a note that says so."""
    from localserve.engine.rpc import probe_workers

    if not endpoints:
        return devices, ()
    found, notes = probe_workers(endpoints, timeout)
    remote = [GPU(f"RPC{i}", d.total_bytes, d.free_bytes, d.endpoint) for i, d in enumerate(found)]
    answered = tuple(dict.fromkeys(d.endpoint for d in found))
    return devices.with_remote(remote, notes), answered


def _probe_ggml(base: Devices) -> Devices:
    import llama_cpp.llama_cpp as llama

    from localserve.engine.rpc import ggml_library

    if not llama.llama_supports_gpu_offload():
        notes: tuple[str, ...] = ()
        try:
            seen = _probe_nvml()
        except Exception:
            seen = ()
        if seen:
            names = ", ".join(g.description or g.name for g in seen)
            notes = (
                f"this llama-cpp-python build cannot offload to a GPU, so {names} is not "
                "used; see docs/gpu.md to install a CUDA build",
            )
        return replace(base, can_offload=False, source="ggml", notes=notes)
    lib = ggml_library()
    discrete: list[GPU] = []
    integrated: list[GPU] = []
    for i in range(int(lib.ggml_backend_dev_count())):
        dev = lib.ggml_backend_dev_get(i)
        kind = int(lib.ggml_backend_dev_type(dev))
        if kind not in (_DEV_GPU, _DEV_IGPU):
            continue  # the CPU, and accelerators (BLAS, AMX) that work with it
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        lib.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        if free.value == 0 and total.value == 0:
            # As llama.cpp does: a device that reports nothing shares host memory.
            free.value, total.value = base.ram_available_bytes, base.ram_total_bytes
        gpu = GPU(
            name=(lib.ggml_backend_dev_name(dev) or b"").decode("utf-8", "replace"),
            total_bytes=int(total.value),
            free_bytes=int(free.value),
            description=(lib.ggml_backend_dev_description(dev) or b"").decode("utf-8", "replace"),
        )
        (discrete if kind == _DEV_GPU else integrated).append(gpu)
    # llama.cpp uses integrated GPUs only when there is no discrete one.
    return replace(base, gpus=tuple(discrete or integrated), source="ggml")


def _probe_nvml() -> tuple[GPU, ...]:
    # nvidia-ml-py is optional and untyped: imported by name so that mypy does not need it.
    pynvml: Any = importlib.import_module("pynvml")
    pynvml.nvmlInit()
    try:
        gpus = []
        for i in range(int(pynvml.nvmlDeviceGetCount())):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            name = pynvml.nvmlDeviceGetName(handle)
            if isinstance(name, bytes):
                name = name.decode("utf-8", "replace")
            gpus.append(GPU(f"CUDA{i}", int(memory.total), int(memory.free), str(name)))
        return tuple(gpus)
    finally:
        pynvml.nvmlShutdown()
