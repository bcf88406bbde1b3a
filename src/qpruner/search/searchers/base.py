"""What every searcher is: given the study's trials so far, propose the next plan.

A searcher either returns a :class:`Proposal` (its own choice, queued into the study with
``enqueue_trial`` so any worker evaluates it) or ``None`` (the study's optuna sampler
chooses). Its state is rebuilt from the trials on every call — nothing lives only in one
process — so a resumed search, or another worker, proposes from everything the study knows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from qpruner.errors import QPrunerError
from qpruner.search.records import Status, TrialRecord, choose_trial, training_points, wasted_in_a_row
from qpruner.search.space import InfeasibleBudget, SearchSpace

#: How a plan proposed by :meth:`Searcher.unstick` is labelled in the study and the report.
LOCAL_MOVE = "local move (the sampler repeated tried or over-budget plans)"
#: Trials in a row a sampler may waste (a plan already tried, or over budget) before the
#: searcher proposes a neighbour of the best plan itself.
STALL_AFTER = 3


@dataclass
class Proposal:
    choices: dict[str, int]
    proposed_by: str
    predicted_error: float | None = None


class Searcher:
    name = "base"
    default_space = "joint"

    def __init__(self, space: SearchSpace, budget: int, seed: int = 0):
        self.space, self.budget, self.seed = space, int(budget), int(seed)

    # ---- what the driver calls ------------------------------------------------------------
    def sampler(self):
        """The sampler used when :meth:`propose` returns None."""
        import optuna

        return optuna.samplers.RandomSampler(seed=self.seed)

    def setup(self, study) -> None:
        """Compute (or read back from the study) whatever the searcher needs before trial 1."""

    def propose(self, records: list[TrialRecord]) -> Proposal | None:
        raise NotImplementedError

    def finished(self, records: list[TrialRecord]) -> bool:
        """True when the searcher has converged before the trial budget is spent."""
        return False

    def describe(self) -> dict:
        return {"method": self.name}

    # ---- shared helpers ---------------------------------------------------------------------
    def features(self, choices: dict[str, int], budget: float = 1.0) -> np.ndarray:
        """A plan's performance-model features and its training budget (1: the full trial;
        :func:`~qpruner.search.records.budget_share`). Candidates are scored at 1."""
        return np.append(self.space.features(choices), budget)

    def summary_columns(self) -> list[int]:
        """The space's summary columns and the training budget (the last feature)."""
        return [*self.space.summary_columns, self._budget_column()]

    def prior_columns(self) -> list[int] | None:
        """The sensitivity prior and the training budget, where the study measured sensitivity."""
        col = self.space.prior_column
        return None if col is None else [col, self._budget_column()]

    def _budget_column(self) -> int:
        return len(self.features(self.space.cheapest())) - 1

    def training_data(self, records: list[TrialRecord]) -> tuple[np.ndarray, np.ndarray]:
        """Every measured point of the study, at every fidelity: features → error."""
        points = [(r, b, e) for r, b, e in training_points(records) if self.space.complete(r.params)]
        if not points:
            return np.zeros((0, len(self.features(self.space.cheapest())))), np.zeros(0)
        X = np.stack([self.features(r.params, b) for r, b, _ in points])
        return X, np.array([e for _, _, e in points], dtype=np.float64)

    def feasible(self, choices: dict[str, int]) -> bool:
        return self.space.memory(choices) <= self.budget

    def rng(self, records: list[TrialRecord]) -> np.random.Generator:
        """Seeded by the seed and the study's size: a resumed search draws what it would have."""
        return np.random.default_rng([self.seed, len(records)])

    def seen(self, records: list[TrialRecord]) -> set[tuple[int, ...]]:
        """Plans already evaluated, running or queued (never proposed twice)."""
        return {
            self.space.key(r.params)
            for r in records
            if self.space.complete(r.params) and r.status != Status.REJECTED
        }

    def random_feasible(
        self,
        rng: np.random.Generator,
        seen: set[tuple[int, ...]],
        *,
        n: int = 1,
        accept: Callable[[dict[str, int]], bool] | None = None,
        tries: int = 20_000,
    ) -> list[dict[str, int]]:
        """Up to ``n`` distinct unseen plans drawn uniformly, kept if they fit the budget.

        Uniform draws rarely fit a tight budget, so after half the tries each draw is pulled
        toward the cheapest plan (a random share of its parameters set to their minimum):
        still random, but from the budget's side of the space.
        """
        accept = accept or self.feasible
        cheapest = self.space.cheapest()
        out, keys = [], set(seen)
        for t in range(tries):
            c = self.space.sample(rng)
            if t > tries // 2:
                share = rng.random()
                c = {k: (cheapest[k] if rng.random() < share else v) for k, v in c.items()}
            k = self.space.key(c)
            if k not in keys and accept(c):
                out.append(c)
                keys.add(k)
                if len(out) >= n:
                    break
        return out

    def unstick(self, records: list[TrialRecord], start: dict[str, int]) -> Proposal | None:
        """For searchers whose optuna sampler proposes: None while it proposes new plans; after
        :data:`STALL_AFTER` wasted trials in a row, a budget-fitting neighbour of the best plan
        (of ``start`` before any plan is evaluated).

        Why: samplers over categorical parameters (the GP rounds its relaxed optimum, NSGA-II's
        offspring of a converged population) land on the same tried plan again and again under
        a tight budget, and optuna learns nothing from a duplicate, which is no completed trial.
        On SmolLM2 under an NF4 budget, QPruner's GP proposed 783 duplicates for 1 new plan.
        """
        if wasted_in_a_row(records) < STALL_AFTER:
            return None
        best = choose_trial(records, self.budget)
        rng, seen = self.rng(records), self.seen(records)
        origin = dict(best.params) if best is not None else dict(start)
        choice = self.neighbour(origin, rng, seen) or next(iter(self.random_feasible(rng, seen)), None)
        if choice is None:
            raise self.exhausted()
        return Proposal(choice, LOCAL_MOVE)

    def neighbour(
        self,
        start: dict[str, int],
        rng: np.random.Generator,
        seen: set[tuple[int, ...]],
        *,
        tries: int = 5_000,
    ) -> dict[str, int] | None:
        """An unseen plan that fits, one or two adjacent steps from ``start``, else None.

        A two-parameter move raises one parameter and lowers another, so a plan already at the
        budget can still trade memory between layers: a single raise would not fit, and a
        single cut is almost always worse.
        """
        names = list(self.space.param_choices)
        for _ in range(tries):
            c = dict(start)
            moved = rng.choice(len(names), size=min(len(names), 1 + int(rng.integers(2))), replace=False)
            steps = (1, -1) if rng.random() < 0.5 else (-1, 1)
            for j, step in zip(moved, steps, strict=False):
                levels = self.space.param_choices[names[j]]
                at = levels.index(c[names[j]]) + step
                c[names[j]] = levels[min(max(at, 0), len(levels) - 1)]
            if self.space.key(c) not in seen and self.feasible(c):
                return c
        return None

    def exhausted(self) -> QPrunerError:
        return InfeasibleBudget(
            f"{self.name}: no unevaluated plan of this space fits the budget; the search space is used up "
            "(lower --trials or widen --bits/--ranks)"
        )
