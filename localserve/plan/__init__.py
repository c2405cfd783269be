"""The memory plan: how much a model needs where, decided before anything is loaded.

``planner`` turns a GGUF header (tensor sizes, head counts) and the load options into
byte counts (``sizes``) and a layer placement (``placement``), llama.cpp's way;
``devices`` holds what memory there is, as a value handed in (the real machine's comes
from the engine's probe, engine/devices.py; tests and ``plan --gpu-memory`` make one
up); ``source`` finds the header of a stored model or, over HTTP Range requests, of one
still on the Hub.
Pure Python: nothing here loads a model.
"""

from __future__ import annotations

from localserve.plan.devices import GPU, Devices, parse_size, probe_ram, ram_only
from localserve.plan.placement import DevicePlan, LayerPlan
from localserve.plan.planner import KV_TYPES, ModelTooLargeError, Plan, plan

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
    "probe_ram",
    "ram_only",
]
