"""What memory this machine has for a model: GPUs (total and free) and RAM.

``Devices`` is a plain value, so the planner is tested against made-up machines (no
GPU, a 4 GiB card, two cards) and ``localserve plan --gpu-memory 24GiB`` simulates one.
``probe()`` reads the real machine:

- RAM from ``/proc/meminfo`` (``MemAvailable``: free plus reclaimable page cache),
  else ``os.sysconf``;
- GPUs as llama.cpp itself sees them, through ggml's backend device API
  (``ggml_backend_dev_count/get/name/description/type/memory``) bound with ctypes on
  the library llama-cpp-python loads. That covers CUDA, ROCm, Metal and Vulkan builds
  alike. ``llama_supports_gpu_offload()`` false (a CPU-only build) means no GPU, whatever
  is plugged in: llama.cpp would not use it.
- If llama-cpp-python cannot be imported, NVIDIA cards through nvidia-ml-py (``pynvml``)
  when it is installed; otherwise no GPU.
- RPC workers (``localserve worker`` on other machines, engine/rpc.py) join as one more
  GPU each device they serve (``with_workers``), first in the list as llama.cpp orders
  them, named RPC0, RPC1... with their address as the description.

llama_cpp is imported inside ``probe()`` only (the engine owns llama_cpp; this is the one
read-only exception). On a CUDA build asking a device for its free memory creates a CUDA
context in the calling process (a few hundred MB of VRAM until the process exits), so a
long-lived process such as the daemon should probe in a short-lived child (the runner).
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final

from localserve.errors import InvalidOptionError

__all__ = ["GPU", "Devices", "parse_size", "probe", "probe_ram", "with_workers"]

log = logging.getLogger("localserve.plan")

# ggml_backend_dev_type (ggml-backend.h)
_DEV_CPU: Final = 0
_DEV_GPU: Final = 1
_DEV_IGPU: Final = 2


@dataclass(frozen=True)
class GPU:
    """One accelerator llama.cpp can put layers on."""

    name: str  # llama.cpp's device name: "CUDA0", "Metal", "Vulkan0"
    total_bytes: int
    free_bytes: int
    description: str = ""  # "NVIDIA H100 80GB HBM3"

    def __post_init__(self) -> None:
        if self.total_bytes < 0 or self.free_bytes < 0:
            raise ValueError("GPU memory sizes cannot be negative")


@dataclass(frozen=True)
class Devices:
    """The memory a plan may use. ``gpus`` in llama.cpp's device order."""

    ram_total_bytes: int
    ram_available_bytes: int
    gpus: tuple[GPU, ...] = ()
    # False for a CPU-only build of llama-cpp-python: llama.cpp offloads nothing then.
    can_offload: bool = True
    source: str = "given"  # how the facts were found: "ggml", "nvml", "simulated", "none"...
    notes: tuple[str, ...] = field(default=())

    @property
    def usable_gpus(self) -> tuple[GPU, ...]:
        """The GPUs layers may go to: none when the build cannot offload."""
        return self.gpus if self.can_offload else ()

    @classmethod
    def cpu_only(cls, ram_bytes: int, *, available_bytes: int | None = None) -> Devices:
        avail = ram_bytes if available_bytes is None else available_bytes
        return cls(ram_total_bytes=ram_bytes, ram_available_bytes=avail, source="given")

    @classmethod
    def with_gpus(
        cls, *gpu_bytes: int, ram_bytes: int, available_bytes: int | None = None
    ) -> Devices:
        """Fake machines for tests and simulations: one free, empty card per size."""
        gpus = tuple(
            GPU(name=f"GPU{i}", total_bytes=size, free_bytes=size, description="simulated")
            for i, size in enumerate(gpu_bytes)
            if size > 0
        )
        avail = ram_bytes if available_bytes is None else available_bytes
        return cls(ram_total_bytes=ram_bytes, ram_available_bytes=avail, gpus=gpus)

    def simulate_gpu(self, size: int) -> Devices:
        """These RAM facts with one empty card of ``size`` bytes instead of the real GPUs
        (``size`` 0: no GPU at all)."""
        gpus = (GPU("GPU0", size, size, "simulated"),) if size > 0 else ()
        return replace(self, gpus=gpus, can_offload=True, source="simulated", notes=())


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
    remote = tuple(
        GPU(f"RPC{i}", d.total_bytes, d.free_bytes, d.endpoint) for i, d in enumerate(found)
    )
    answered = tuple(dict.fromkeys(d.endpoint for d in found))
    return (
        replace(
            devices,
            # llama.cpp puts RPC devices before the local GPUs ("to minimize network
            # transfers", llama.cpp's llama_prepare_model_devices).
            gpus=remote + devices.usable_gpus,
            can_offload=bool(remote) or devices.can_offload,
            notes=devices.notes + notes,
        ),
        answered,
    )


# ----------------------------------------------------------------------------- sizes

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_UNITS: Final = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
}
MAX_SIZE: Final = 1 << 50  # 1 PiB: anything larger is a typo


def parse_size(text: str) -> int:
    """Bytes from ``24GiB``, ``512MiB``, ``1.5GB``, ``4096B`` or ``0``.

    Binary (KiB, MiB, GiB, TiB) and decimal (KB, MB, GB, TB) units, any case; a bare
    number other than 0 is refused because "24" could mean bytes or gigabytes.
    """
    match = _SIZE.match(text)
    bad = InvalidOptionError(
        f"invalid size {text!r}",
        hint="write a number and a unit, such as 24GiB, 512MiB or 8GB (or 0 for no GPU)",
    )
    if not match:
        raise bad
    number, unit = match.groups()
    value = float(number)
    if unit is None:
        if value != 0:
            raise bad
        return 0
    size = value * _UNITS[unit.lower()]
    if not math.isfinite(size) or size > MAX_SIZE:
        raise InvalidOptionError(f"size {text!r} is too large", hint="at most 1 PiB")
    return int(size)


# ------------------------------------------------------------------------------- RAM


def probe_ram(meminfo: str = "/proc/meminfo") -> tuple[int, int]:
    """(total, available) RAM in bytes: MemAvailable from /proc, else ``os.sysconf``."""
    try:
        with open(meminfo) as handle:
            values: dict[str, int] = {}
            for line in handle:
                key, _, rest = line.partition(":")
                parts = rest.split()
                if parts and parts[0].isdigit():
                    scale = 1024 if len(parts) > 1 and parts[1].lower() == "kb" else 1
                    values[key.strip()] = int(parts[0]) * scale
        if "MemTotal" in values:
            total = values["MemTotal"]
            available = values.get("MemAvailable", values.get("MemFree", total))
            return total, min(available, total)
    except OSError:
        pass
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        total = page * os.sysconf("SC_PHYS_PAGES")
        try:
            available = page * os.sysconf("SC_AVPHYS_PAGES")
        except (ValueError, OSError):  # not on macOS
            available = total
        return total, available
    except (ValueError, OSError, AttributeError):
        return 0, 0


# ------------------------------------------------------------------------------ GPUs


def probe(*, gpus: bool = True) -> Devices:
    """The real machine: RAM, and the GPUs llama.cpp would use (see the module docstring).

    ``gpus=False`` reads RAM only (for a simulated card: nothing loads llama.cpp then).
    """
    total, available = probe_ram()
    base = Devices(ram_total_bytes=total, ram_available_bytes=available, source="none")
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


def _probe_ggml(base: Devices) -> Devices:
    # The engine owns llama_cpp; this read-only device query is the one exception.
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
    import importlib

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
