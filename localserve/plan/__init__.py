"""The memory plan: how much a model needs where, decided before anything is loaded.

``planner`` turns a GGUF header (tensor sizes, head counts) and the load options into
byte counts and a layer placement, llama.cpp's way; ``devices`` says what memory there
is (GPUs through llama.cpp's ggml device API or NVML, RAM from /proc); ``source`` finds
the header of a stored model or, over HTTP Range requests, of one still on the Hub.
Pure Python: nothing here loads a model.
"""

from __future__ import annotations

from localserve.plan.devices import GPU, Devices, parse_size, probe, probe_ram
from localserve.plan.planner import (
    KV_TYPES,
    DevicePlan,
    LayerPlan,
    ModelTooLargeError,
    Plan,
    plan,
)

__all__ = [
    "GPU",
    "KV_TYPES",
    "DevicePlan",
    "Devices",
    "LayerPlan",
    "ModelTooLargeError",
    "Plan",
    "parse_size",
    "plan",
    "probe",
    "probe_ram",
]
