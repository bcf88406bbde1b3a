"""Multi-fidelity trials: a plan scored as its fine-tune goes, weak plans stopped by optuna.

A trial's one fine-tune is scored at a few training budgets — 0 steps (the quantized model
before any training, a screen on a few thousand held-out tokens), then k, 2k and 4k steps,
the last being the full trial — and each score is reported to optuna (``trial.report``).
optuna's ``SuccessiveHalvingPruner`` compares it with the other trials' scores at the same
rung and stops the plans outside the better share (``trial.should_prune()``), so the study
spends its training on the plans that look good early, and the performance models
(:func:`qpruner.search.records.training_points`) learn from every point, the training budget
being one of their features.

optuna's *step* is the rung's resource, as successive halving expects it: 1 for the screen,
doubling with each rung (2: k steps, 4: 2k, 8: 4k). The training steps of every rung are
stored with the trial (``fidelities``); the scores are optuna's intermediate values and the
rung values the pruner compares are in each trial's system attributes — all in the storage,
so a resumed search or a second worker prunes and learns from the same curves.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qpruner.errors import QPrunerError
from qpruner.search.records import Status

if TYPE_CHECKING:  # at run time this module stays light: the study and the report read it
    from qpruner.plan import Plan
    from qpruner.search.evaluator import Evaluation

#: Trial attribute: the training steps of each rung, in order.
FIDELITIES_ATTR = "fidelities"


def fidelity_steps(total: int, rungs: int = 3) -> tuple[int, ...]:
    """``(0, total/2^(rungs-1), …, total/2, total)``: 20 steps → ``(0, 5, 10, 20)``."""
    if total < 1 or rungs < 1:
        raise QPrunerError(f"multi-fidelity trials need steps >= 1 and rungs >= 1, got {total}, {rungs}")
    return (0, *sorted({max(1, round(total / 2**i)) for i in range(rungs)}))


def resource(rung: int) -> int:
    """optuna's step for ``rung``: 1, 2, 4, … (the screen is rung 0)."""
    return 2**rung


#: ``--pruner`` choices: optuna's pruner that stops a multi-fidelity trial early.
PRUNERS = ("halving", "hyperband")


def make_pruner(fidelities: tuple[int, ...] | None, kind: str = "halving", reduction_factor: int = 2):
    """optuna's pruner over the rungs (its own bookkeeping, in the storage), or none.

    ``halving``: successive halving, every trial in one bracket (a plan goes on while it is in the
    better 1/``reduction_factor`` at each rung). ``hyperband``: optuna's Hyperband, which spreads
    trials over brackets that stop early less or more aggressively (the hedge for curves whose early
    ranks mislead); ``benchmarks/pruner_bench.py`` measures the two on the real model's curves.
    """
    import optuna

    if not fidelities:
        return optuna.pruners.NopPruner()
    if kind == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=1, reduction_factor=reduction_factor, min_early_stopping_rate=0
        )
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=1, max_resource=resource(len(fidelities) - 1), reduction_factor=reduction_factor
        )
    raise QPrunerError(f"unknown pruner {kind!r}: choose from {', '.join(PRUNERS)}")


def evaluate(evaluator, trial, plan: Plan, *, fidelities: tuple[int, ...] | None) -> Evaluation:
    """The plan's :class:`Evaluation`: at once, or rung by rung, pruned where optuna says so."""
    import optuna

    if not fidelities:
        return evaluator(plan)
    curve = getattr(evaluator, "curve", None)
    if curve is None:
        raise QPrunerError(
            f"{type(evaluator).__name__} scores no training curve: turn multi-fidelity off "
            "(--no-multi-fidelity, SearchConfig(multi_fidelity=False))"
        )
    trial.set_user_attr(FIDELITIES_ATTR, list(fidelities))
    points = curve(plan, fidelities)
    last = len(fidelities) - 1
    try:
        for rung, ev in enumerate(points):
            trial.report(float(ev.error), resource(rung))
            if rung < last and trial.should_prune():
                trial.set_user_attr("status", Status.PRUNED.value)
                raise optuna.TrialPruned(f"stopped after {fidelities[rung]} training steps")
    finally:
        points.close()  # a pruned trial's fine-tune ends here (its work directory removed)
    return ev


def curve_of(trial) -> list[list[float]]:
    """``[[training steps, error], …]`` of an optuna trial, from its intermediate values."""
    steps = trial.user_attrs.get(FIDELITIES_ATTR) or []
    out = []
    for step, value in sorted(trial.intermediate_values.items()):
        rung = int(step).bit_length() - 1
        known = 0 <= rung < len(steps) and resource(rung) == step
        out.append([int(steps[rung]) if known else int(step), float(value)])
    return out
