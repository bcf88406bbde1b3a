"""RankAdaptor: each layer's LoRA rank chosen by a performance model.

Random rank configurations are evaluated first; then, repeatedly, the performance model is
fitted on every evaluated configuration, thousands of candidates are scored with it, and the
predicted best is evaluated, until its prediction and measurement agree within
``tolerance`` (relative). Candidates never have more trainable parameters than uniform LoRA
at the user's base rank (``--rank``) unless ``param_budget`` says otherwise, and fit the
memory budget.
"""

from __future__ import annotations

import numpy as np

from qpruner.errors import QPrunerError
from qpruner.search.performance import PerformanceModel, PerformanceModelConfig
from qpruner.search.records import TrialRecord, evaluated
from qpruner.search.searchers.base import Proposal, Searcher
from qpruner.search.space import SearchSpace

MODEL = "performance model"


class RankAdaptorSearcher(Searcher):
    name = "rankadaptor"
    default_space = "ranks"

    def __init__(
        self,
        space: SearchSpace,
        budget: int,
        seed: int = 0,
        n_initial: int = 5,
        tolerance: float = 0.01,
        n_candidates: int = 3000,
        param_budget: int | None = None,
        model: PerformanceModelConfig | None = None,
    ):
        super().__init__(space, budget, seed)
        if not space.searches_ranks:
            raise QPrunerError("the rankadaptor searcher chooses ranks: use a ranks or joint space")
        self.n_initial, self.tolerance, self.n_candidates = n_initial, tolerance, n_candidates
        uniform = space.choices_from(space.layer_bits({}), [space.fixed_rank] * space.num_layers)
        self.param_budget = int(param_budget if param_budget is not None else space.lora_params(uniform))
        self.model_config = model or PerformanceModelConfig(seed=seed)

    def describe(self) -> dict:
        return {"method": self.name, "n_initial": self.n_initial, "tolerance": self.tolerance,
                "param_budget": self.param_budget, "model": self.model_config.kind}  # fmt: skip

    def feasible(self, choices: dict[str, int]) -> bool:
        return super().feasible(choices) and self.space.lora_params(choices) <= self.param_budget

    def _neighbours(self, params: dict[str, int], rng: np.random.Generator, n: int) -> list[dict[str, int]]:
        """Plans one or two layers away from ``params`` (local search around the best)."""
        keys = list(self.space.param_choices)
        out = []
        for _ in range(n):
            c = dict(params)
            for k in rng.choice(keys, size=min(2, len(keys)), replace=False):
                opts = self.space.param_choices[str(k)]
                c[str(k)] = int(opts[rng.integers(len(opts))])
            out.append(c)
        return out

    def propose(self, records: list[TrialRecord]) -> Proposal:
        rng, seen = self.rng(records), self.seen(records)
        X, y = self.training_data(records)  # every fidelity's points
        proposed = [r for r in records if r.params and r.status != "rejected" and r.retry_of is None]
        if len(proposed) < self.n_initial or len(y) < 2:
            found = self.random_feasible(rng, seen, accept=self.feasible)
            if not found:
                raise self.exhausted()
            return Proposal(found[0], "initial design")
        model = PerformanceModel(self.model_config).fit(X, y, summary=self.summary_columns())
        n = self.n_candidates
        pool = self.random_feasible(rng, seen, n=n, accept=self.feasible, tries=4 * n)
        for r in sorted(evaluated(records), key=lambda r: r.error)[:3]:
            pool += [c for c in self._neighbours(r.params, rng, 200) if self.feasible(c)]
        pool = list({self.space.key(c): c for c in pool if self.space.key(c) not in seen}.values())
        if not pool:
            raise self.exhausted()
        pred = model.predict(np.stack([self.features(c) for c in pool]))  # at the full budget
        i = int(np.argmin(pred))
        return Proposal(pool[i], MODEL, float(pred[i]))

    def finished(self, records: list[TrialRecord]) -> bool:
        """Converged: the model's last pick measured within ``tolerance`` of its prediction."""
        picks = [r for r in evaluated(records) if r.proposed_by == MODEL and r.predicted_error is not None]
        if not picks:
            return False
        last = max(picks, key=lambda r: r.number)
        return abs(last.predicted_error - last.error) <= self.tolerance * abs(last.error)
