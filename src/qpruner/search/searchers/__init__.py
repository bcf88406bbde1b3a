"""The interchangeable searchers, by the name ``--method`` uses (imported on first use)."""

from __future__ import annotations

import importlib

from qpruner.errors import QPrunerError

#: ``--method`` name → (module, class).
METHODS: dict[str, tuple[str, str]] = {
    "qpruner": ("qpruner.search.searchers.qpruner", "QPrunerSearcher"),
    "automixq": ("qpruner.search.searchers.automixq", "AutoMixQSearcher"),
    "rankadaptor": ("qpruner.search.searchers.rankadaptor", "RankAdaptorSearcher"),
    "joint": ("qpruner.search.searchers.joint", "JointSearcher"),
    "random": ("qpruner.search.searchers.random_search", "RandomSearcher"),
    "nsga2": ("qpruner.search.searchers.nsga2", "NSGA2Searcher"),
}
#: Searchers that rank layers by importance (they use calibration data).
USES_IMPORTANCE = ("qpruner", "joint")
#: Searchers whose performance model can take the measured sensitivity as its prior
#: (``--performance-prior``; the joint search always does, where its profile measured it).
USES_PRIOR = ("automixq", "joint")


def searcher_class(method: str):
    if method not in METHODS:
        raise QPrunerError(f"unknown search method {method!r}; choose from {', '.join(METHODS)}")
    module, cls = METHODS[method]
    return getattr(importlib.import_module(module), cls)
