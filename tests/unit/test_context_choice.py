"""The automatic context (plan/context.py, issue 28): the model's training length, at most
64k, as far as memory allows, weights first; never below today's 4096 per sequence; one
long conversation may use the room several short ones share. Planned on made-up machines
with Gemma 3 270M's real header (32k trained) and variants of it."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest

from localserve.plan import Devices, Plan, plan
from localserve.plan.context import (
    AUTO_CONTEXT_MAX,
    AUTO_CONTEXT_MIN,
    POOL_STEP,
    RAM_KEPT_FREE,
    ContextChoice,
    choose_context,
)
from localserve.store.gguf import GGUFInfo, read_gguf
from tests.support.planning import GiB, MiB

PARALLEL = 4


@pytest.fixture(scope="module")
def gemma(gemma_gguf_path: Path) -> GGUFInfo:
    return read_gguf(gemma_gguf_path)


def trained_for(info: GGUFInfo, length: int) -> GGUFInfo:
    """The same model, said to be trained for ``length`` tokens."""
    key = f"{info.architecture}.context_length"
    return dataclasses.replace(info, metadata={**info.metadata, key: length})


def planner(info: GGUFInfo, devices: Devices) -> Callable[[int, int], Plan]:
    def plan_for(num_ctx: int, kv_cells: int | None = None) -> Plan:
        return plan(
            info, num_ctx=num_ctx, num_parallel=PARALLEL, devices=devices, kv_cells=kv_cells
        )

    return plan_for


def choose(info: GGUFInfo, devices: Devices) -> tuple[ContextChoice, Callable[[int, int], Plan]]:
    plan_for = planner(info, devices)
    return choose_context(info, num_parallel=PARALLEL, plan_for=plan_for), plan_for


def test_enough_memory_gives_the_training_length(gemma: GGUFInfo) -> None:
    choice, _ = choose(gemma, Devices.cpu_only(64 * GiB))
    assert gemma.context_length == 32768
    assert choice == ContextChoice(32768, 32768, "trained")


def test_a_longer_training_length_is_capped(gemma: GGUFInfo) -> None:
    choice, _ = choose(trained_for(gemma, 131072), Devices.cpu_only(64 * GiB))
    assert choice == ContextChoice(AUTO_CONTEXT_MAX, AUTO_CONTEXT_MAX, "cap")


def test_a_short_training_length_keeps_todays_pool(gemma: GGUFInfo) -> None:
    """2048 trained: each of the 4 sequences up to 2048, as a fixed 4096 gave."""
    choice, _ = choose(trained_for(gemma, 2048), Devices.cpu_only(64 * GiB))
    assert choice == ContextChoice(2048, 2048 * PARALLEL, "trained")


def test_memory_caps_the_pool_and_one_sequence_may_use_all_of_it(gemma: GGUFInfo) -> None:
    floor_plan = planner(gemma, Devices.cpu_only(64 * GiB))(
        AUTO_CONTEXT_MIN, AUTO_CONTEXT_MIN * PARALLEL
    )
    # RAM for the floor and a little more: less than the 32k pool needs.
    ram = int((floor_plan.cpu_bytes + 40 * MiB) / (1 - RAM_KEPT_FREE))
    choice, plan_for = choose(gemma, Devices.cpu_only(ram))
    assert choice.reason == "memory"
    floor = AUTO_CONTEXT_MIN * PARALLEL
    assert floor < choice.kv_cells < 32768
    assert choice.num_ctx == choice.kv_cells  # one conversation can fill the pool
    assert choice.num_ctx > choice.kv_cells // PARALLEL
    chosen = plan_for(choice.num_ctx, choice.kv_cells)
    assert chosen.fits and chosen.cpu_bytes <= (1 - RAM_KEPT_FREE) * ram
    larger = choice.kv_cells + POOL_STEP
    assert plan_for(larger, larger).cpu_bytes > (1 - RAM_KEPT_FREE) * ram  # the largest


def test_the_automatic_pool_is_cheap_with_a_sliding_window(gemma: GGUFInfo) -> None:
    """Gemma 3's 32k pool at 4 sequences: 96 MiB for the 3 global layers, 37.5 MiB for
    the 15 sliding ones at 2560 cells, where a full-size window cache took 576 MiB."""
    choice, plan_for = choose(gemma, Devices.cpu_only(64 * GiB))
    chosen = plan_for(choice.num_ctx, choice.kv_cells)
    assert (chosen.kv_cells, chosen.swa_cells) == (32768, 2560)
    assert chosen.kv_bytes == (3 * 32768 + 15 * 2560) * 1024
    full = plan(
        gemma,
        num_ctx=choice.num_ctx,
        num_parallel=PARALLEL,
        devices=Devices.cpu_only(64 * GiB),
        kv_cells=choice.kv_cells,
        swa_full=True,
    )
    assert (full.swa_cells, full.kv_bytes) == (32768, 576 * MiB)


def test_never_below_the_floor_even_without_room(gemma: GGUFInfo) -> None:
    """Too little memory for even 4096 each: the floor's pool (which one sequence may
    fill), and the load then refuses it as today (require_fit names the shortfall)."""
    choice, plan_for = choose(gemma, Devices.cpu_only(64 * MiB))
    floor = AUTO_CONTEXT_MIN * PARALLEL
    assert (choice.num_ctx, choice.kv_cells) == (floor, floor)
    assert not plan_for(choice.num_ctx, choice.kv_cells).fits


def test_weights_stay_on_the_gpu_before_the_context_grows(gemma: GGUFInfo) -> None:
    """A card that holds every layer at the floor, but not with a 32k cache: the context
    shrinks, the layers stay."""
    roomy = planner(gemma, Devices.with_gpus(64 * GiB, ram_bytes=64 * GiB))
    needs = roomy(AUTO_CONTEXT_MIN, AUTO_CONTEXT_MIN * PARALLEL).devices[1].total_bytes
    # 16k more cells cost Gemma 48 MiB of KV (3 global layers; the window's cache stays
    # 2560 cells) and 16 MiB more of attention mask.
    card = needs + 24 * MiB
    devices = Devices.with_gpus(card, ram_bytes=64 * GiB)
    at_floor = planner(gemma, devices)(AUTO_CONTEXT_MIN, AUTO_CONTEXT_MIN * PARALLEL)
    assert at_floor.gpu_layers == at_floor.n_layers
    choice, plan_for = choose(gemma, devices)
    assert choice.reason == "memory"
    assert AUTO_CONTEXT_MIN * PARALLEL <= choice.kv_cells < 32768
    assert plan_for(choice.num_ctx, choice.kv_cells).gpu_layers == at_floor.n_layers
    assert planner(gemma, devices)(32768, 32768).gpu_layers < at_floor.n_layers
