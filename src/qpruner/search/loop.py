"""One search trial and one iteration of the loop around it, shared by every searcher.

Each iteration reads the study's trials, asks the searcher for a plan (queued into the
study) or lets the study's sampler choose, then runs one trial: the plan is priced, refused
before any training when its predicted memory is over budget, otherwise evaluated (with
multi-fidelity, rung by rung, stopped early where optuna's pruner says:
:mod:`qpruner.search.fidelity`) and everything stored in the trial. A trial is one
``study.optimize(..., n_trials=1)``, so optuna's own machinery (heartbeats where the storage
has them, failing a trial whose objective raised, pruning) applies.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from qpruner.errors import QPrunerError
from qpruner.memory import MemoryReport
from qpruner.search import fidelity
from qpruner.search import study as st
from qpruner.search.evaluator import Evaluation
from qpruner.search.records import (
    Status,
    TrialRecord,
    choose_trial,
    count,
    evaluated,
    tried,
    wasted_in_a_row,
)

if TYPE_CHECKING:
    from qpruner.search.search_run import SearchRun

#: Trials in a row that tried nothing new (over budget, or a plan already tried) before the
#: search gives up on its sampler rather than loop for ever.
MAX_WASTED_IN_A_ROW = 500
#: How often a worker with nothing to start looks at the study again.
POLL_SECONDS = 0.5
#: Statuses of trials that count towards ``trials`` (None: running, not yet told).
_COUNTED = (None, Status.EVALUATED, Status.PRUNED)


def run_trial(run: SearchRun, trial) -> float:
    """optuna's objective: price the plan, refuse it over budget, else evaluate and store it."""
    import optuna

    trial.set_user_attr(st.WORKER_ATTR, st.worker_id())
    _stand_down_if_surplus(trial, run.trials)
    if "proposed_by" not in trial.user_attrs:
        trial.set_user_attr("proposed_by", f"sampler ({type(trial.study.sampler).__name__})")
    choices = run.space.suggest(trial)
    mem = run.space.memory(choices)
    trial.set_user_attr("memory_predicted", int(mem))
    trial.set_constraint("memory_over_budget", float(mem - run.budget))
    if mem > run.budget:
        # Refused before any training. The sampler is told a value worse than any seen,
        # and the constraint, so it learns where the budget lies.
        trial.set_user_attr("status", Status.REJECTED.value)
        errors = [
            r.error for r in evaluated([st.record_of(t) for t in trial.study.get_trials(deepcopy=False)])
        ]
        if not errors:
            raise optuna.TrialPruned("over budget")
        return max(errors) * 1.25 if max(errors) > 0 else max(errors) + 1.0
    known = _skip_if_duplicate(run, trial, choices)
    if known is not None:
        return known
    plan = run.space.plan(choices)
    plan.model = run.model
    ev = fidelity.evaluate(
        run.evaluator, trial, plan, fidelities=run.fidelities
    )  # at once, or rung by rung (may stop it early)
    _store(trial, plan, ev, mem=mem, run=run)
    return float(ev.error)


def _running_or_done(trial) -> list:
    from optuna.trial import TrialState

    states = (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)  # pruned: stopped early
    return trial.study.get_trials(deepcopy=False, states=states)


def _stand_down_if_surplus(trial, trials: int) -> None:
    """Trial numbers are handed out atomically by the storage: of workers that started at
    once, the later ones stand down, so the study ends with exactly ``trials``."""
    import optuna

    ahead = [
        t
        for t in _running_or_done(trial)
        if t.number < trial.number and t.user_attrs.get("status") in _COUNTED
    ]
    if len(ahead) >= trials:
        trial.set_user_attr("status", Status.SURPLUS.value)
        st.requeue_if_retry(trial.study, trial)
        raise optuna.TrialPruned("the study already has enough trials running or done")


def _skip_if_duplicate(run: SearchRun, trial, choices: dict[str, int]) -> float | None:
    """Another worker runs or ran this plan (two proposed it at once): take another.

    A plan stopped early is told to the sampler once more as a completed duplicate with its
    last score (returned): optuna's GPSampler learns from completed trials only, and would
    otherwise propose the stopped plan again and again.
    """
    import optuna
    from optuna.trial import TrialState

    key = run.space.key(choices)
    for other in _running_or_done(trial):
        same = (
            other.number < trial.number
            and run.space.complete(other.params)
            and run.space.key(other.params) == key
        )
        if same and other.user_attrs.get("status") in _COUNTED:
            trial.set_user_attr("status", Status.DUPLICATE.value)
            if other.state == TrialState.PRUNED and other.last_step is not None:
                return float(other.intermediate_values[other.last_step])
            raise optuna.TrialPruned(f"trial {other.number} has this plan")
    return None


def _measured(run: SearchRun, ev: Evaluation) -> int | None:
    """The measured bytes the budget's measure counts (a weight budget: the held weights and
    adapters of the trial's model, not its step peak)."""
    parts = ev.metrics.get("memory_measured")
    if run.space.measure == "finetune" or ev.memory is None:
        return ev.memory
    return run.space.amount(MemoryReport.from_dict(parts)) if parts else None


def _store(trial, plan, ev: Evaluation, *, mem: int, run: SearchRun) -> None:
    """The plan (with its predicted and measured memory), error and metrics, as trial attributes."""
    measured = ev.metrics.get("memory_measured")
    plan.memory = {"predicted": ev.metrics.get("memory_predicted", {"total": int(mem)})}
    if measured:
        plan.memory["measured"] = measured
    trial.set_user_attr("plan", plan.to_dict())
    trial.set_user_attr("memory_measured", _measured(run, ev))
    trial.set_user_attr("metrics", {k: v for k, v in ev.metrics.items() if not k.startswith("memory_")})
    trial.set_user_attr("error", float(ev.error))
    trial.set_user_attr("status", Status.EVALUATED.value)


@dataclass
class LoopState:
    recovered: list[int] = field(default_factory=list)
    stopped_early: bool = False
    out_of_time: bool = False


def step(run: SearchRun, study, objective: Callable, *, bar, state: LoopState, log: Callable) -> str | None:
    """One iteration: recover dead workers' trials, stop if done, propose, run one trial.

    Returns ``"done"``, ``"converged"`` or ``"out of time"`` to stop, None to go on.
    """
    failed = st.fail_dead_trials(study)
    if failed:
        state.recovered += failed
        log(f"trials {failed} were left running by a dead worker: marked failed, queued once more")
    recs = st.records(study)
    done = tried(recs)
    _show(bar, recs, run)
    if done >= run.trials:
        return "done"
    if run.time_budget is not None and (spent := st.trial_seconds(study)) >= run.time_budget:
        allowed = run.time_budget
        log(
            f"{run.searcher.name}: time budget used ({spent:.0f} s of trials, {allowed:.0f} s allowed) "
            f"after {done} plans"
        )
        return "out of time"
    if done + count(recs, Status.RUNNING) >= run.trials:
        # Other workers are finishing the last trials: wait for them rather than overshoot N
        # (a trial of theirs that fails is failed, requeued and picked up here).
        time.sleep(POLL_SECONDS)
        return None
    searcher = run.searcher
    if searcher.finished(recs):
        log(f"{searcher.name}: converged after {done} evaluated plans")
        return "converged"
    if (wasted := wasted_in_a_row(recs)) >= MAX_WASTED_IN_A_ROW:
        raise QPrunerError(
            f"{searcher.name}: {wasted} plans in a row were over budget or tried already; "
            "raise the budget or widen --search-bits/--ranks"
        )
    # A plan queued by any worker (or a retry) is run first; otherwise this worker proposes one,
    # registering it in the study before its fine-tune starts.
    if not any(r.status == Status.WAITING for r in recs):
        proposal = searcher.propose(recs)
        if proposal is not None:
            attrs = {"proposed_by": proposal.proposed_by}
            if proposal.predicted_error is not None:
                attrs["predicted_error"] = float(proposal.predicted_error)
            study.enqueue_trial(proposal.choices, user_attrs=attrs, skip_if_exists=False)
    study.optimize(objective, n_trials=1, catch=(), gc_after_trial=False)
    return None


def _show(bar, recs: list[TrialRecord], run: SearchRun) -> None:
    bar.n = min(tried(recs), run.trials)
    best = choose_trial(recs, run.budget)
    if best is not None:
        stopped = count(recs, Status.PRUNED)
        bar.set_postfix(best=f"{best.error:.4g}", stopped=stopped, refused=count(recs, Status.REJECTED))
    bar.refresh()


def with_retries(fn: Callable, run: SearchRun, log: Callable):
    """Run ``fn``; on a dropped database connection retry with exponential back-off, then give up.

    Giving up is a one-line error: every finished trial is already stored (each is its own
    transaction), a trial cut off mid-way is failed and requeued by the next worker (or by
    this one on ``--resume``), so the study stays consistent.
    """
    retries = run.db_retries
    for attempt in range(retries + 1):
        try:
            return fn()
        except Exception as raised:
            exc = _database_error(raised)
            if exc is None:
                raise
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            if attempt == retries:
                raise QPrunerError(
                    f"lost the database at {st.mask_url(run.storage)} ({first}); gave up after {retries} "
                    "retries. Finished trials are stored: rerun with --resume once it is back"
                ) from raised
            wait = run.db_backoff * 2**attempt
            log(f"database connection failed ({first}); retry {attempt + 1}/{retries} in {wait:.1f}s")
            time.sleep(wait)


def _database_error(exc: BaseException | None) -> BaseException | None:
    """optuna may raise its own error while handling a dropped connection (e.g. an
    UnboundLocalError in its trial bookkeeping): look down the chain for the cause."""
    import sqlalchemy.exc
    from optuna.exceptions import StorageInternalError

    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, sqlalchemy.exc.DBAPIError | StorageInternalError):
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None
