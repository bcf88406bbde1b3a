"""NSGA-II directly on measured trials: the method of AutoMixQ's released search, as a baseline.

AutoMixQ's paper puts a performance model between the search and the fine-tunes; its released
code runs optuna's NSGA-II on the fine-tuned trials themselves (accuracy and memory as the two
objectives). Here a study has one objective, the measured error, and the memory budget is the
constraint (``trial.set_constraint``, which optuna's NSGA-II handles by constrained
domination): under a fixed budget, the memory objective's role is the budget's. No
performance model, no importance: what the model-based searchers must beat at equal cost.
"""

from __future__ import annotations

from qpruner.search.records import TrialRecord
from qpruner.search.searchers.base import Proposal, Searcher
from qpruner.search.space import SearchSpace


class NSGA2Searcher(Searcher):
    name = "nsga2"
    default_space = "bits"

    def __init__(self, space: SearchSpace, budget: int, seed: int = 0, population: int = 8):
        super().__init__(space, budget, seed)
        self.population = int(population)

    def sampler(self):
        import optuna

        return optuna.samplers.NSGAIISampler(population_size=self.population, seed=self.seed)

    def propose(self, records: list[TrialRecord]) -> Proposal | None:
        return self.unstick(records, self.space.cheapest())  # None: NSGA-II proposes

    def describe(self) -> dict:
        return {"method": self.name, "population": self.population}
