"""What memory a machine has for a model: GPUs (total and free) and RAM, as plain values.

``Devices`` is what the planner is handed: the real machine's, read by the engine's
probe (engine/devices.py, which asks llama.cpp's ggml for its GPUs and RPC workers for
theirs), or a made-up one, so the planner is tested against machines that are not here
(no GPU, a 4 GiB card, two cards) and ``localserve plan --gpu-memory 24GiB`` simulates one.
RAM is read here (``probe_ram``: ``/proc/meminfo``, else ``os.sysconf``); nothing in this
module loads llama.cpp.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Final

from localserve.errors import InvalidOptionError

__all__ = ["GPU", "Devices", "parse_size", "probe_ram", "ram_only"]


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

    def with_remote(self, remote: Sequence[GPU], notes: Sequence[str] = ()) -> Devices:
        """These devices with ``remote`` ones (RPC workers' devices) ahead of the local
        GPUs, as llama.cpp orders them ("to minimize network transfers",
        llama.cpp's llama_prepare_model_devices), and ``notes`` on workers left out."""
        return replace(
            self,
            gpus=tuple(remote) + self.usable_gpus,
            can_offload=bool(remote) or self.can_offload,
            notes=self.notes + tuple(notes),
        )

    def simulate_gpu(self, size: int) -> Devices:
        """These RAM facts with one empty card of ``size`` bytes instead of the real GPUs
        (``size`` 0: no GPU at all)."""
        gpus = (GPU("GPU0", size, size, "simulated"),) if size > 0 else ()
        return replace(self, gpus=gpus, can_offload=True, source="simulated", notes=())


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


def ram_only() -> Devices:
    """This machine's RAM and no GPU: what a CPU-only load plans against, and the base
    a simulated card (``localserve plan --gpu-memory``) is put on. Loads no library."""
    total, available = probe_ram()
    return Devices(ram_total_bytes=total, ram_available_bytes=available, source="none")
