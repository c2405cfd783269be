"""Speculative decoding's policies without llama.cpp: the n-gram drafter and its back-off,
and the cost gate driven with given step times (engine/speculate.py)."""

from __future__ import annotations

from localserve.engine.speculate import GATE_PAUSE, PROBE_EVERY, CostGate, Drafter


def test_drafter_finds_the_latest_earlier_occurrence() -> None:
    drafter = Drafter([1, 2, 3, 4, 5, 6, 9, 1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6])
    assert drafter.draft(3) == [7, 8, 1]  # after the latest earlier "1 2 3"
    assert Drafter([5, 6, 7]).draft(4) == []
    assert Drafter([1, 2, 1, 2]).draft(0) == []


def test_drafter_backs_off_after_failures() -> None:
    drafter = Drafter([1, 2, 3, 4, 5, 6, 1, 2, 3, 4, 5, 6])
    skipped = 0
    for _ in range(40):
        if drafter.draft(3):
            drafter.record(3, 0)
        else:
            skipped += 1
    assert skipped > 25  # pauses grow: most steps draft nothing
    drafter.record(3, 2)
    assert drafter.accepted == 2


def run_gate(
    gate: CostGate, steps: int, on_cost: float, sequences: int = 1, every: int = 1
) -> list[bool]:
    """Feed ``steps`` steps: a plain step costs 1 s per token, a drafting one ``on_cost``;
    the text offers a draft every ``every`` steps. Returns what ``allow`` said."""
    allowed = []
    for i in range(steps):
        ok = gate.allow(sequences)
        allowed.append(ok)
        drafted = ok and i % every == 0
        gate.observe(drafted, on_cost if drafted else 1.0, 1)
    return allowed


def test_the_cost_gate_keeps_drafts_that_pay() -> None:
    gate = CostGate()
    allowed = run_gate(gate, 400, on_cost=0.6)
    # Plain steps only to measure them: about one in PROBE_EVERY.
    plain = allowed.count(False)
    assert 0 < plain <= 400 // PROBE_EVERY + 2
    assert gate.paused_steps == 0
    # Drafts that cost under half: a plain step is forced four times less often.
    cheap = run_gate(CostGate(), 400, on_cost=0.2).count(False)
    assert 0 < cheap <= 400 // (4 * PROBE_EVERY) + 3


def test_plain_steps_that_come_by_themselves_need_no_forcing() -> None:
    # Drafts on every third step (free text): the steps between measure the plain cost.
    assert run_gate(CostGate(), 300, on_cost=0.8, every=3) == [True] * 300


def test_the_cost_gate_pauses_drafts_that_cost() -> None:
    gate = CostGate()
    allowed = run_gate(gate, 2000, on_cost=1.3)
    # It tries, loses, and pauses for longer and longer: few drafting steps in all.
    assert allowed[:4] == [True] * 4
    assert allowed.count(True) < 2000 // 20
    assert gate.paused_steps > 1400
    # The pauses grow: the last drafting steps are further apart than the first.
    on = [i for i, a in enumerate(allowed) if a]
    assert on[-1] - on[-2] > GATE_PAUSE or on[-1] - on[-5] > 4 * GATE_PAUSE


def test_the_cost_gate_measures_afresh_when_the_batch_changes() -> None:
    gate = CostGate()
    run_gate(gate, 30, on_cost=1.3, sequences=1)
    assert not gate.allow(1)  # paused for one stream
    # Four streams: another cost per token, measured on its own.
    assert run_gate(gate, 4, on_cost=0.5, sequences=4) == [True] * 4
    assert run_gate(gate, 200, on_cost=0.5, sequences=4).count(True) > 180
    # Back to one stream: that verdict still stands.
    assert not gate.allow(1)
