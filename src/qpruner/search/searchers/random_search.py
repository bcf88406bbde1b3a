"""The baseline every searcher is compared against: uniform random plans within budget."""

from __future__ import annotations

from qpruner.search.records import TrialRecord
from qpruner.search.searchers.base import Proposal, Searcher


class RandomSearcher(Searcher):
    name = "random"
    default_space = "joint"

    def propose(self, records: list[TrialRecord]) -> Proposal:
        found = self.random_feasible(self.rng(records), self.seen(records))
        if not found:
            raise self.exhausted()
        return Proposal(found[0], "random")
