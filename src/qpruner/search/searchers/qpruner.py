"""QPruner (Zhou et al., NAACL Findings 2025): bits from layer importance, refined by Bayesian optimisation.

1. Each layer's importance to the task (mutual information between its output and the
   model's prediction on calibration data, or Taylor; :mod:`qpruner.search.layer_importance`).
2. An initial allocation meeting the budget (:mod:`qpruner.search.allocation`): with measured
   sensitivity, the plan the sensitivity predicts least damaged; else the paper's greedy rule,
   every layer from the fewest bits, the most important raised first, level by level.
3. Bayesian optimisation seeded with that allocation: optuna's ``GPSampler`` (a Gaussian
   process with log expected improvement, maintained by optuna) minimises the error, with
   the memory budget as a constraint. Plans the GP proposes over budget are refused before
   any training and told to it as infeasible, so it learns where the budget lies.

Importance and the allocation are stored as study attributes, so a resumed search or a
second worker uses the same ones without recomputing.
"""

from __future__ import annotations

from qpruner.errors import QPrunerError
from qpruner.search.allocation import allocate_bits
from qpruner.search.records import TrialRecord
from qpruner.search.searchers.base import Proposal, Searcher
from qpruner.search.searchers.importance import ImportanceSource, load_importance, stored_sensitivity
from qpruner.search.space import SearchSpace

ALLOCATION_ATTR = "initial_allocation"
INITIAL = "initial allocation"


class QPrunerSearcher(Searcher):
    name = "qpruner"
    default_space = "bits"

    def __init__(
        self,
        space: SearchSpace,
        budget: int,
        seed: int = 0,
        importance: ImportanceSource | None = None,
        importance_method: str = "mi",
        n_startup: int = 4,
    ):
        super().__init__(space, budget, seed)
        if not space.searches_bits:
            raise QPrunerError("the qpruner searcher allocates bits: use a bits or joint space")
        self.importance_source, self.importance_method = importance, importance_method
        self.n_startup = n_startup
        self.importance: list[float] = []
        self.allocation: dict[str, int] = {}

    def sampler(self):
        import optuna

        # The memory constraint reaches the GP through ``trial.set_constraint`` (see run.py).
        return optuna.samplers.GPSampler(seed=self.seed, n_startup_trials=self.n_startup)

    def setup(self, study) -> None:
        self.importance = load_importance(study, self.importance_source, self.importance_method)
        stored = study.user_attrs.get(ALLOCATION_ATTR)
        if stored is None:
            sens = stored_sensitivity(study) if self.importance_method == "sensitivity" else None
            bits = allocate_bits(self.space, self.importance, self.budget, sensitivity=sens)
            stored = self.space.choices_from(bits, self.space.layer_ranks({}))
            study.set_user_attr(ALLOCATION_ATTR, stored)
        self.allocation = {k: int(v) for k, v in stored.items()}

    def propose(self, records: list[TrialRecord]) -> Proposal | None:
        if not any(r.proposed_by == INITIAL for r in records):
            return Proposal(dict(self.allocation), INITIAL)
        return self.unstick(records, self.allocation)  # None: the GP sampler proposes

    def describe(self) -> dict:
        return {"method": self.name, "importance_method": self.importance_method, "n_startup": self.n_startup}
