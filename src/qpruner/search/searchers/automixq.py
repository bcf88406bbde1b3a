"""AutoMixQ: a lightweight performance model, a predicted Pareto front, plans chosen from it.

After a few random plans within budget are evaluated, each proposal:

1. fits the performance model (:mod:`qpruner.search.performance`) on every evaluated plan
   of the study (features → measured error; with multi-fidelity trials, every point of every
   trial's curve, its training budget a feature, candidates scored at the full budget);
2. runs NSGA-II (optuna's ``NSGAIISampler``, in memory) on the *model*: thousands of
   candidate plans scored in batches by predicted error and predicted memory, memory over
   the budget as a constraint; its final front is the predicted Pareto front;
3. picks from that front the unevaluated plan that would add most to the measured front's
   hypervolume if it performed optimistically (mean − κ·spread of the ensemble), so the
   search both exploits the model and tests where it is unsure.

The output is the measured Pareto front and the best plan within budget.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np

from qpruner.search.pareto import hypervolume
from qpruner.search.performance import PerformanceModel, PerformanceModelConfig
from qpruner.search.records import TrialRecord, evaluated
from qpruner.search.searchers.base import Proposal, Searcher
from qpruner.search.searchers.importance import (
    IMPORTANCE_ATTR,
    ImportanceSource,
    load_importance,
    stored_sensitivity,
)
from qpruner.search.space import SearchSpace

MODEL = "performance model"
#: Random initial plans when the model has a prior (the measured sensitivity) to start from.
PRIOR_INITIAL = 2


def surrogate_front(
    space: SearchSpace,
    model: PerformanceModel,
    budget: int,
    *,
    features: Callable[[dict[str, int]], np.ndarray],
    seed: int,
    population: int,
    generations: int,
    starts: list[dict[str, int]],
) -> list[tuple[dict[str, int], float, float, int]]:
    """NSGA-II over the performance model: ``[(choices, mean, spread, memory)]`` of its feasible trials."""
    import optuna

    sampler = optuna.samplers.NSGAIISampler(population_size=population, seed=seed)
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
        for c in starts:
            study.enqueue_trial(c)
        dists = space.distributions()
        out: dict[tuple[int, ...], tuple[dict[str, int], float, float, int]] = {}
        for _ in range(generations):
            trials = [study.ask(dists) for _ in range(population)]
            choices = [{k: int(v) for k, v in t.params.items()} for t in trials]
            mean, spread = model.predict_with_spread(np.stack([features(c) for c in choices]))
            for t, c, m, s in zip(trials, choices, mean, spread, strict=True):
                mem = space.memory(c)
                t.set_constraint("memory_over_budget", float(mem - budget))
                study.tell(t, [float(m), float(mem)])
                if mem <= budget:
                    out[space.key(c)] = (c, float(m), float(s), mem)
    finally:
        optuna.logging.set_verbosity(level)
    return list(out.values())


class AutoMixQSearcher(Searcher):
    name = "automixq"
    default_space = "bits"

    def __init__(
        self,
        space: SearchSpace,
        budget: int,
        seed: int = 0,
        n_initial: int = 5,
        model: PerformanceModelConfig | None = None,
        population: int = 40,
        generations: int = 15,
        kappa: float = 1.0,
        importance: ImportanceSource | None = None,
        importance_method: str = "sensitivity",
    ):
        super().__init__(space, budget, seed)
        self.n_initial, self.kappa = n_initial, kappa
        self.population, self.generations = population, generations
        self.model_config = model or PerformanceModelConfig(seed=seed)
        self.importance_source, self.importance_method = importance, importance_method
        self.importance: list[float] | None = None  # the study's layer scores, where it has them

    def setup(self, study) -> None:
        """Measure the layer profile when given a source (``--performance-prior``; once per
        study), and hand its sensitivity, where the study has one, to the model as its prior."""
        if self.importance_source is not None or IMPORTANCE_ATTR in study.user_attrs:
            self.importance = load_importance(study, self.importance_source, self.importance_method)
        self.space = replace(self.space, sensitivity=stored_sensitivity(study))

    def describe(self) -> dict:
        return {
            "method": self.name,
            "n_initial": self.n_initial,
            "population": self.population,
            "generations": self.generations,
            "kappa": self.kappa,
            "model": self.model_config.kind,
            "prior": "measured sensitivity" if self.space.sensitivity is not None else None,
        }

    def initial_design(self, records: list[TrialRecord]) -> Proposal | None:
        """Random plans within budget until ``n_initial`` have been proposed; with a prior only
        PRIOR_INITIAL, which the model needs to scale it (on SmolLM2 random plans under the
        budget read 150-1,100 valid perplexity against 105.6 for uniform NF4: each costs)."""
        proposed = [r for r in records if r.params and r.status != "rejected" and r.retry_of is None]
        wanted = self.n_initial if self.space.sensitivity is None else min(self.n_initial, PRIOR_INITIAL)
        if len(proposed) >= wanted:
            return None
        found = self.random_feasible(self.rng(records), self.seen(records))
        return Proposal(found[0], "initial design") if found else None

    def fit(self, records: list[TrialRecord]) -> PerformanceModel | None:
        """The performance model on every measured point, early ones of stopped plans too."""
        X, y = self.training_data(records)
        if len(y) < 2:
            return None
        return PerformanceModel(self.model_config).fit(
            X, y, summary=self.summary_columns(), prior=self.prior_columns()
        )

    def propose(self, records: list[TrialRecord]) -> Proposal:
        start = self.initial_design(records)
        model = None if start is not None else self.fit(records)
        if model is None or not evaluated(records):
            found = start or Proposal(self._random(records), "initial design")
            return found
        seen = self.seen(records)
        ev = sorted(evaluated(records), key=lambda r: r.error)
        starts = [r.params for r in ev[: self.population // 2]]
        cands = surrogate_front(
            self.space,
            model,
            self.budget,
            features=self.features,
            seed=self.seed + len(records),
            population=self.population,
            generations=self.generations,
            starts=starts,
        )
        cands = [c for c in cands if self.space.key(c[0]) not in seen]
        if not cands:
            return Proposal(self._random(records), "random (model front exhausted)")
        measured = [(r.error, float(self.space.memory(r.params))) for r in ev]
        worst = max(e for e, _ in measured)
        ref = (worst + 0.1 * abs(worst) + 1e-9, float(self.budget) + 1.0)
        base = hypervolume(measured, ref)

        def gain(c: tuple[dict[str, int], float, float, int]) -> tuple[float, float]:
            optimistic = c[1] - self.kappa * c[2]
            return (hypervolume([*measured, (optimistic, float(c[3]))], ref) - base, -optimistic)

        best = max(cands, key=gain)
        return Proposal(best[0], MODEL, best[1])

    def _random(self, records: list[TrialRecord]) -> dict[str, int]:
        found = self.random_feasible(self.rng(records), self.seen(records))
        if not found:
            raise self.exhausted()
        return found[0]
