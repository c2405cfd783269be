"""A cost gate that never holds drafts back, for engine tests.

The engine's gate (engine/speculate.py ``CostGate``) times steps, so how often it lets
drafts through depends on how fast this machine runs the model; tests that count drafts
or steps must not. tests/unit/test_speculative.py tests the gate itself, with given times.
"""

from __future__ import annotations

from localserve.engine.speculate import CostGate


class AlwaysDraft(CostGate):
    def allow(self, sequences: int) -> bool:
        return True
