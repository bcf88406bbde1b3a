"""One search's settings, each in one place: space, budget, evaluator, searcher, storage.

Any number of workers build the same :class:`SearchRun` and point it at the same study; the
loop (:mod:`qpruner.search.loop`) and the runner (:mod:`qpruner.search.run`) read everything
from it. Its own module so both can import it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from qpruner.errors import QPrunerError
from qpruner.search.budget import Budget, BudgetSpec, resolve_budget
from qpruner.search.evaluator import Evaluator
from qpruner.search.fidelity import make_pruner
from qpruner.search.searchers import searcher_class
from qpruner.search.searchers.base import Searcher
from qpruner.search.space import SearchSpace


@dataclass
class SearchRun:
    """One search: any number of workers build the same run and point it at the same study.

    ``options`` are the searcher's keyword arguments (``n_initial``, ``importance``, ...).
    ``heartbeat``/``grace`` (seconds, RDB storages) let a live worker fail a dead one's
    trial; ``db_retries``/``db_backoff`` how long a worker waits out a dropped database.
    ``fidelities``: the training steps at which a trial is scored and may be stopped
    (:mod:`qpruner.search.fidelity`; the evaluator needs ``curve``); None: scored once.
    """

    space: SearchSpace
    evaluator: Evaluator
    budget: int | str | BudgetSpec | Budget  # bytes, "6GiB", "nf4", "uniform:4:8", "70%": bytes after init
    storage: str  # optuna storage URL: sqlite:///…, postgresql://…, journal:///…
    method: str = "random"  # the searcher, by ``--method`` name
    trials: int = 40
    study_name: str | None = None  # default: the method's name
    seed: int = 0
    options: dict = field(default_factory=dict)
    model: str | None = None  # the pruned checkpoint, recorded in plans and the study
    heartbeat: int | None = None
    grace: int | None = None
    db_retries: int = 5
    db_backoff: float = 2.0
    fidelities: tuple[int, ...] | None = None  # e.g. (0, 5, 10, 20): multi-fidelity trials
    reduction_factor: int = 2  # successive halving: the share of plans a rung keeps is 1/this
    pruner_kind: str = "halving"  # or "hyperband" (qpruner.search.fidelity.make_pruner)
    # Seconds of trial time (summed over the study's trials and workers) after which no new
    # trial starts; None: only ``trials`` limits. Not part of the identity: a resumed search
    # may be given more time.
    time_budget: float | None = None
    stated_budget: Budget = field(init=False, repr=False)  # the budget as stated, with its bytes

    def __post_init__(self) -> None:
        self.stated_budget = resolve_budget(self.budget, self.space)
        self.budget = self.stated_budget.bytes
        self.study_name = self.study_name or self.method

    @cached_property
    def searcher(self) -> Searcher:
        """The searcher, built once from the run's space, budget, seed and options."""
        cls = searcher_class(self.method)
        try:
            return cls(self.space, self.budget, self.seed, **self.options)
        except TypeError as exc:
            raise QPrunerError(f"{self.method}: bad searcher option ({exc})") from exc

    def pruner(self):
        """optuna's pruner for this run's trials (none when each trial is scored once)."""
        return make_pruner(self.fidelities, self.pruner_kind, self.reduction_factor)

    def identity(self) -> dict:
        """What a study stores of its run; a worker whose run differs is refused."""
        out = {
            "method": self.searcher.name,
            "space": self.space.describe(),
            "searcher": self.searcher.describe(),
            "evaluator": self.evaluator.describe(),
            "budget": self.budget,
            "seed": self.seed,
            "model": self.model,
        }
        if self.fidelities:  # absent when off: studies made before multi-fidelity resume with it off
            out["fidelity"] = {
                "steps": list(self.fidelities),
                "reduction_factor": self.reduction_factor,
                "screen_tokens": getattr(self.evaluator, "screen_tokens", None),
            }
            if self.pruner_kind != "halving":  # absent for the default: older studies still resume
                out["fidelity"]["pruner"] = self.pruner_kind
        return out
