"""Joint search (beyond the papers): bits and ranks together under one memory budget.

AutoMixQ's machinery (performance model, NSGA-II front, optimistic hypervolume pick) over
the joint space, started from QPruner's importance-based bit allocation at the base rank —
so the first plan evaluated is already a sensible one, and the model learns how bits and
ranks trade against each other (a layer may be worth 8 bits and a small rank, or 4 bits and
a large one).
"""

from __future__ import annotations

from qpruner.search.allocation import allocate_bits
from qpruner.search.records import TrialRecord
from qpruner.search.searchers.automixq import AutoMixQSearcher
from qpruner.search.searchers.base import Proposal
from qpruner.search.searchers.qpruner import INITIAL
from qpruner.search.space import SearchSpace


class JointSearcher(AutoMixQSearcher):
    name = "joint"
    default_space = "joint"

    def __init__(self, space: SearchSpace, budget: int, seed: int = 0, **kwargs):
        super().__init__(space, budget, seed, **kwargs)
        self.allocation: dict[str, int] | None = None

    def setup(self, study) -> None:
        super().setup(study)  # the importance, measured or read back; its sensitivity the prior
        if self.importance is None:
            return  # no calibration data: plain random initial design
        bits = None
        if self.space.searches_bits:  # the sensitivity the prior is, where it was measured
            bits = allocate_bits(self.space, self.importance, self.budget, sensitivity=self.space.sensitivity)
        self.allocation = self.space.choices_from(bits, self.space.layer_ranks({}))

    def initial_design(self, records: list[TrialRecord]) -> Proposal | None:
        if self.allocation is not None and not any(r.proposed_by == INITIAL for r in records):
            return Proposal(dict(self.allocation), INITIAL)
        return super().initial_design(records)
