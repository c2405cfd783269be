"""The context a model gets when nothing sets it: long enough for coding agents, as long
as the memory allows.

Agents send 7k-30k tokens of system prompt and tools before the first user word, so a
fixed 4096 fails them on their first request. When neither the request (``num_ctx``), the
model (a Modelfile's ``PARAMETER num_ctx``) nor ``LOCALSERVE_CONTEXT_LENGTH`` sets it, the
runner asks :func:`choose_context`:

- the longest context one sequence may use: the model's training length, at most
  ``AUTO_CONTEXT_MAX`` (64k, what Ollama recommends for agents);
- the KV pool the parallel sequences share (llama.cpp's unified KV cache): room for that
  one long sequence, and never less than today's ``AUTO_CONTEXT_MIN`` (4096) for each
  sequence; any one sequence may grow to the whole pool (up to that longest);
- capped by memory, weights first: the pool shrinks (to no less than that floor) until the
  plan fits with as many layers on the GPU as the floor's plan has, and, where the KV
  cache is in RAM, leaves a quarter of the available RAM free.

One long conversation can so use the room that several short ones would share; when the
pool fills, the engine frees idle caches first, then fails the longest job.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

from localserve.plan.planner import Plan
from localserve.store.gguf import GGUFInfo

AUTO_CONTEXT_MIN: Final = 4096  # per sequence: the pool never holds less for each
AUTO_CONTEXT_MAX: Final = 65536  # the longest sequence an automatic context allows
POOL_STEP: Final = 1024  # pool sizes tried in steps of this many cells
RAM_KEPT_FREE: Final = 0.25  # of the available RAM, when the KV cache grows there

# Why a context is what it is (shown by ps, /api/ps and plan).
ContextReason = Literal["set", "trained", "cap", "memory"]


@dataclass(frozen=True)
class ContextChoice:
    num_ctx: int  # the longest sequence
    kv_cells: int  # the pool the sequences share
    reason: ContextReason


def choose_context(
    info: GGUFInfo, *, num_parallel: int, plan_for: Callable[[int, int], Plan]
) -> ContextChoice:
    """The automatic context of ``info`` for ``num_parallel`` sequences; ``plan_for(num_ctx,
    kv_cells)`` plans the load with everything else as it will be."""
    trained = info.context_length or AUTO_CONTEXT_MIN
    longest = min(trained, AUTO_CONTEXT_MAX)
    floor = min(AUTO_CONTEXT_MIN, trained) * num_parallel
    most = max(longest, floor)
    whole: ContextReason = "trained" if longest == trained else "cap"
    base = plan_for(min(longest, floor), floor)
    if not base.fits:  # the load will say what is missing, as for any context
        return ContextChoice(min(longest, floor), floor, "memory")
    if most == floor:
        return ContextChoice(min(longest, floor), floor, whole)
    ram = base.devices[0].free_bytes

    def good(cells: int) -> bool:
        planned = plan_for(min(longest, cells), cells)
        return (
            planned.fits
            and planned.gpu_layers >= base.gpu_layers
            and all(d.fits for d in planned.devices if d.is_gpu)
            and planned.cpu_bytes <= max(base.cpu_bytes, (1 - RAM_KEPT_FREE) * ram)
        )

    if good(most):
        return ContextChoice(longest, most, whole)
    low, high = floor, most  # good(low) (the base), not good(high)
    while high - low > POOL_STEP:
        middle = low + (high - low) // 2 // POOL_STEP * POOL_STEP
        if middle <= low:
            break
        if good(middle):
            low = middle
        else:
            high = middle
    return ContextChoice(min(longest, low), low, "memory")
