"""Stage 4: search the per-layer plan (bits, LoRA ranks) under a memory budget.

- :mod:`~qpruner.search.space` — per-layer choices, their plan and price;
- :mod:`~qpruner.search.searchers` — QPruner, AutoMixQ, RankAdaptor, joint, random;
- :mod:`~qpruner.search.evaluator` — a plan's error and measured memory after a short fine-tune;
- :mod:`~qpruner.search.study` — optuna storage (SQLite, PostgreSQL, journal file), resume;
- :mod:`~qpruner.search.run` — the loop; :mod:`~qpruner.search.from_model` — ``qpruner search``;
- :mod:`~qpruner.search.report` — HTML report with the Pareto front and per-layer charts.
"""

import importlib

# Loaded on first use: the CLI builds its parser from this package without paying for
# sklearn, optuna and matplotlib.
_LAZY = {
    "SearchConfig": "qpruner.search.from_model",
    "search_model": "qpruner.search.from_model",
    "InfeasibleBudget": "qpruner.search.space",
    "SearchSpace": "qpruner.search.space",
    "parse_size": "qpruner.search.space",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'qpruner.search' has no attribute {name!r}")


__all__ = ["InfeasibleBudget", "SearchConfig", "SearchSpace", "parse_size", "search_model"]
