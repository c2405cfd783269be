"""Made-up models and machines for the memory planner's tests: GGUF headers without files,
layers of given sizes, NVML without a GPU, and the plan with the tests' defaults."""

from __future__ import annotations

from typing import Any

from localserve.plan import Devices, Plan, plan
from localserve.store.gguf import GGUFInfo, TensorInfo

MiB = 1 << 20

GiB = 1 << 30

RAM = 64 * GiB


def plan_of(info: GGUFInfo, devices: Devices, **options: Any) -> Plan:
    options = {"num_ctx": 2048, "num_parallel": 4, **options}
    return plan(info, devices=devices, **options)


def header(arch: str, metadata: dict[str, Any], tensors: dict[str, int]) -> GGUFInfo:
    """A GGUFInfo without a file: F32 tensors of the given element counts."""
    infos = []
    offset = 0
    for name, n in tensors.items():
        infos.append(TensorInfo(name, (n,), 0, "F32", offset, n, 4 * n))
        offset += 4 * n
    meta = {"general.architecture": arch, **{f"{arch}.{k}": v for k, v in metadata.items()}}
    return GGUFInfo(3, offset, 32, 0, meta, tuple(infos))


def blocks(n_layer: int, per_layer: int = 1000) -> dict[str, int]:
    tensors = {"token_embd.weight": 32000, "output_norm.weight": 64, "output.weight": 32000}
    tensors |= {f"blk.{i}.attn_q.weight": per_layer for i in range(n_layer)}
    return tensors


def fake_pynvml(*cards: tuple[str, int, int]) -> Any:
    """A stand-in for nvidia-ml-py: (name, total, free) per card."""
    from types import SimpleNamespace

    return SimpleNamespace(
        nvmlInit=lambda: None,
        nvmlShutdown=lambda: None,
        nvmlDeviceGetCount=lambda: len(cards),
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetName=lambda i: cards[i][0].encode(),
        nvmlDeviceGetMemoryInfo=lambda i: SimpleNamespace(total=cards[i][1], free=cards[i][2]),
    )
