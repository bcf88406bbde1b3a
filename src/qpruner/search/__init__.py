"""Stage 4: search the per-layer plan (bits, LoRA ranks) under a memory budget.

- :mod:`~qpruner.search.space` — per-layer choices, their plan and price;
- :mod:`~qpruner.search.budget` — the memory budget as stated (a size, a reference plan, a share) → bytes;
- :mod:`~qpruner.search.searchers` — QPruner, AutoMixQ, RankAdaptor, joint, random;
- :mod:`~qpruner.search.evaluator` — a plan's error and measured memory after a short fine-tune
  (:mod:`~qpruner.search.recipe`: the one training recipe of a trial);
- :mod:`~qpruner.search.fidelity` — multi-fidelity trials: scored as they train, weak plans stopped
  early by optuna's successive halving;
- :mod:`~qpruner.search.layer_importance` — per-layer scores for QPruner's bit allocation;
- :mod:`~qpruner.search.study` — optuna storage (SQLite, PostgreSQL, journal file), resume;
- :mod:`~qpruner.search.records` — what a trial stores, its :class:`Status`, the chosen trial;
- :mod:`~qpruner.search.search_run` — :class:`SearchRun` (space, budget, evaluator, searcher, storage);
  :mod:`~qpruner.search.run` runs it
  and ``run_search``; :mod:`~qpruner.search.loop` — one trial and one loop iteration;
  :mod:`~qpruner.search.from_model` — ``qpruner search``;
- :mod:`~qpruner.search.report` — HTML report with the Pareto front and per-layer charts.
"""

import importlib

# Loaded on first use: the CLI builds its parser from this package without paying for
# sklearn, optuna and matplotlib.
_LAZY = {
    "Budget": "qpruner.search.budget",
    "parse_budget": "qpruner.search.budget",
    "resolve_budget": "qpruner.search.budget",
    "SearchConfig": "qpruner.search.from_model",
    "SearchRun": "qpruner.search.search_run",
    "run_search": "qpruner.search.run",
    "trial_training": "qpruner.search.recipe",
    "search_model": "qpruner.search.from_model",
    "InfeasibleBudget": "qpruner.search.space",
    "SearchSpace": "qpruner.search.space",
    "parse_size": "qpruner.search.space",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'qpruner.search' has no attribute {name!r}")


__all__ = [
    "Budget",
    "InfeasibleBudget",
    "SearchConfig",
    "SearchRun",
    "SearchSpace",
    "parse_budget",
    "parse_size",
    "resolve_budget",
    "run_search",
    "search_model",
    "trial_training",
]
