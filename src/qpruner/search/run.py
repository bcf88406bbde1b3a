"""Running a search: the loop every searcher shares, its outputs, and resuming it.

Each iteration reads the study's trials, asks the searcher for a plan (queued into the
study) or lets the study's sampler choose, prices the plan, refuses it before any training
when its predicted memory is over budget, otherwise evaluates it and stores everything in
the trial. A trial is one ``study.optimize(..., n_trials=1)``, so optuna's own machinery
(heartbeats where the storage has them, failing a trial whose objective raised) applies.
``trials`` counts evaluated trials in the whole study, whichever worker ran them.

Outputs in ``out_dir``: ``plan.json`` (the best plan within budget, with its predicted and
measured memory), ``search.json`` (every trial) and ``report.html`` with its PNGs.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from qpruner.errors import QPrunerError
from qpruner.plan import Plan
from qpruner.search import study as st
from qpruner.search.evaluator import Evaluator
from qpruner.search.records import EVALUATED, REJECTED, RUNNING, TrialRecord, evaluated
from qpruner.search.report import SearchSummary, write_report
from qpruner.search.searchers.base import Searcher
from qpruner.search.space import SearchSpace

SUMMARY_FILE = "search.json"
PLAN_FILE = "plan.json"
#: Plans refused in a row (over budget) before the search gives up on its sampler.
MAX_REJECTED_IN_A_ROW = 500
#: How often a worker with nothing to start looks at the study again.
POLL_SECONDS = 0.5


@dataclass
class SearchResult:
    summary: SearchSummary
    plan: Plan | None
    out_dir: Path | None
    stopped_early: bool = False
    new_trials: int = 0
    failed_recovered: list[int] = field(default_factory=list)


def _objective(
    space: SearchSpace, searcher: Searcher, evaluator: Evaluator, budget: int, model: str | None, trials: int
):
    import optuna
    from optuna.trial import TrialState

    def objective(trial) -> float:
        trial.set_user_attr(st.WORKER_ATTR, st.worker_id())
        earlier = trial.study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.COMPLETE))
        ahead = [
            t for t in earlier if t.number < trial.number and t.user_attrs.get("status") in (None, EVALUATED)
        ]
        if len(ahead) >= trials:
            # Trial numbers are handed out atomically by the storage: of workers that started at
            # once, the later ones stand down, so the study ends with exactly ``trials``.
            trial.set_user_attr("status", "surplus")
            st.requeue_if_retry(trial.study, trial)
            raise optuna.TrialPruned("the study already has enough trials running or done")
        if "proposed_by" not in trial.user_attrs:
            trial.set_user_attr("proposed_by", f"sampler ({type(trial.study.sampler).__name__})")
        choices = space.suggest(trial)
        mem = space.memory(choices)
        trial.set_user_attr("memory_predicted", int(mem))
        trial.set_constraint("memory_over_budget", float(mem - budget))
        if mem > budget:
            # Refused before any training. The sampler is told a value worse than any seen,
            # and the constraint, so it learns where the budget lies.
            trial.set_user_attr("status", REJECTED)
            trials_so_far = trial.study.get_trials(deepcopy=False)
            errors = [r.error for r in evaluated([st.record_of(t) for t in trials_so_far])]
            if not errors:
                raise optuna.TrialPruned("over budget")
            return max(errors) * 1.25 if max(errors) > 0 else max(errors) + 1.0
        key = space.key(choices)
        for other in trial.study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.COMPLETE)):
            same = (
                other.number < trial.number
                and space.complete(other.params)
                and space.key(other.params) == key
            )
            if same and other.user_attrs.get("status") in (None, EVALUATED):
                # Another worker runs or ran this plan (two proposed it at once): take another.
                trial.set_user_attr("status", "duplicate")
                raise optuna.TrialPruned(f"trial {other.number} has this plan")
        plan = space.plan(choices)
        plan.model = model
        ev = evaluator(plan)
        measured = ev.metrics.get("memory_measured")
        plan.memory = {"predicted": ev.metrics.get("memory_predicted", {"total": int(mem)})}
        if measured:
            plan.memory["measured"] = measured
        trial.set_user_attr("plan", plan.to_dict())
        trial.set_user_attr("memory_measured", ev.memory)
        trial.set_user_attr("metrics", {k: v for k, v in ev.metrics.items() if not k.startswith("memory_")})
        trial.set_user_attr("error", float(ev.error))
        trial.set_user_attr("status", EVALUATED)
        return float(ev.error)

    return objective


def best_record(records: list[TrialRecord], budget: int) -> TrialRecord | None:
    """The lowest error among evaluated plans whose predicted memory fits ``budget``."""
    fits = [r for r in evaluated(records) if r.memory_predicted is None or r.memory_predicted <= budget]
    return min(fits, key=lambda r: (r.error, r.number)) if fits else None


def run_search(
    space: SearchSpace,
    evaluator: Evaluator,
    searcher: Searcher,
    trials: int,
    storage: str,
    study_name: str,
    out_dir: str | Path | None = None,
    resume: bool = False,
    model: str | None = None,
    heartbeat: int | None = None,
    progress: bool = True,
    log=print,
    grace: int | None = None,
    db_retries: int = 5,
    db_backoff: float = 2.0,
) -> SearchResult:
    """Search until the study holds ``trials`` evaluated plans (or the searcher converges).

    Any number of workers may run this on the same storage URL and study name: ``trials``
    counts the whole study, proposals are registered in it before they are trained, and a
    worker skips a plan another worker is already running or has done.
    """
    import optuna

    if trials < 1:
        raise QPrunerError(f"--trials must be at least 1, got {trials}")
    budget = searcher.budget
    space.check_budget(budget)  # one-line error before anything is created
    identity = {
        "method": searcher.name,
        "space": space.describe(),
        "searcher": searcher.describe(),
        "evaluator": evaluator.describe(),
        "budget": budget,
        "seed": searcher.seed,
        "model": model,
    }
    storage_obj = st.make_storage(storage, heartbeat, grace)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    state = _LoopState()
    try:
        study = st.open_study(storage_obj, study_name, identity, resume, searcher.sampler())
        searcher.setup(study)
        objective = _objective(space, searcher, evaluator, budget, model, trials)
        done0 = st.count(st.records(study))
        bar = tqdm(
            total=trials,
            initial=min(done0, trials),
            desc=f"search ({searcher.name})",
            unit="trial",
            disable=not progress,
        )
        while True:
            outcome = _with_retries(
                lambda: _step(study, searcher, objective, trials, budget, bar, state, log),
                storage,
                db_retries,
                db_backoff,
                log,
            )
            if outcome == "converged":
                state.stopped_early = True
            if outcome is not None:
                break
        bar.close()
        recs = _with_retries(lambda: st.records(study), storage, db_retries, db_backoff, log)
    finally:
        optuna.logging.set_verbosity(verbosity)
    return finish(
        study,
        recs,
        searcher,
        evaluator,
        budget,
        storage,
        out_dir,
        state.stopped_early,
        st.count(recs) - done0,
        state.recovered,
    )


@dataclass
class _LoopState:
    recovered: list[int] = field(default_factory=list)
    rejected_in_a_row: int = 0
    stopped_early: bool = False


def _step(
    study, searcher: Searcher, objective, trials: int, budget: int, bar, state: _LoopState, log
) -> str | None:
    """One iteration: recover dead workers' trials, stop if done, propose, run one trial."""
    failed = st.fail_dead_trials(study)
    if failed:
        state.recovered += failed
        log(f"trials {failed} were left running by a dead worker: marked failed, queued once more")
    recs = st.records(study)
    done = st.count(recs)
    bar.n = min(done, trials)
    best = best_record(recs, budget)
    if best is not None:
        bar.set_postfix(best=f"{best.error:.4g}", refused=st.count(recs, REJECTED))
    bar.refresh()
    if done >= trials:
        return "done"
    if done + st.count(recs, RUNNING) >= trials:
        # Other workers are finishing the last trials: wait for them rather than overshoot N
        # (a trial of theirs that fails is failed, requeued and picked up here).
        time.sleep(POLL_SECONDS)
        return None
    if searcher.finished(recs):
        log(f"{searcher.name}: converged after {done} evaluated plans")
        return "converged"
    if state.rejected_in_a_row >= MAX_REJECTED_IN_A_ROW:
        raise QPrunerError(
            f"{searcher.name}: {state.rejected_in_a_row} plans in a row were over budget; raise the budget"
        )
    # A plan queued by any worker (or a retry) is run first; otherwise this worker proposes one,
    # registering it in the study before its fine-tune starts.
    if not any(r.status == "waiting" for r in recs):
        proposal = searcher.propose(recs)
        if proposal is not None:
            attrs = {"proposed_by": proposal.proposed_by}
            if proposal.predicted_error is not None:
                attrs["predicted_error"] = float(proposal.predicted_error)
            study.enqueue_trial(proposal.choices, user_attrs=attrs, skip_if_exists=False)
    n_before = max((r.number for r in recs), default=-1)
    study.optimize(objective, n_trials=1, catch=(), gc_after_trial=False)
    mine = [t for t in study.get_trials(deepcopy=False) if t.number > n_before]
    rejected = any(t.user_attrs.get("status") == REJECTED for t in mine)
    state.rejected_in_a_row = state.rejected_in_a_row + 1 if rejected else 0
    return None


def _with_retries(fn, storage: str, retries: int, backoff: float, log):
    """Run ``fn``; on a dropped database connection retry with exponential back-off, then give up.

    Giving up is a one-line error: every finished trial is already stored (each is its own
    transaction), a trial cut off mid-way is failed and requeued by the next worker (or by
    this one on ``--resume``), so the study stays consistent.
    """
    import sqlalchemy.exc
    from optuna.exceptions import StorageInternalError

    def database_error(exc: BaseException | None) -> BaseException | None:
        # optuna may raise its own error while handling a dropped connection (e.g. an
        # UnboundLocalError in its trial bookkeeping): look down the chain for the cause.
        seen = 0
        while exc is not None and seen < 10:
            if isinstance(exc, sqlalchemy.exc.DBAPIError | StorageInternalError):
                return exc
            exc, seen = exc.__cause__ or exc.__context__, seen + 1
        return None

    for attempt in range(retries + 1):
        try:
            return fn()
        except Exception as raised:
            exc = database_error(raised)
            if exc is None:
                raise
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            if attempt == retries:
                raise QPrunerError(
                    f"lost the database at {st.mask_url(storage)} ({first}); gave up after {retries} "
                    "retries. Finished trials are stored: rerun with --resume once it is back"
                ) from raised
            wait = backoff * 2**attempt
            log(f"database connection failed ({first}); retry {attempt + 1}/{retries} in {wait:.1f}s")
            time.sleep(wait)


def summary_of(study, recs: list[TrialRecord], storage: str) -> SearchSummary:
    """Everything the report needs, from the study alone (no worker's files)."""
    ident = study.user_attrs.get(st.IDENTITY_ATTR, {})
    budget = ident.get("budget")
    best = best_record(recs, budget) if budget is not None else None
    metric = (ident.get("evaluator") or {}).get("metric_name", "error")
    extra = {k: v for k, v in study.user_attrs.items() if k != st.IDENTITY_ATTR}
    extra["space"] = ident.get("space")
    return SearchSummary(
        method=ident.get("method", "?"),
        metric="perplexity" if metric == "ppl" else f"1 - acc ({metric})" if metric != "error" else metric,
        budget=budget,
        records=recs,
        chosen=best.number if best else None,
        study_name=study.study_name,
        storage=st.mask_url(storage),
        extra=extra,
    )


def finish(study, recs, searcher, evaluator, budget, storage, out_dir, stopped_early, new, recovered):
    summary = summary_of(study, recs, storage)
    if hasattr(evaluator, "metric"):
        summary.metric = evaluator.metric
    best = next((r for r in recs if r.number == summary.chosen), None)
    plan = None
    if best is not None and best.plan is not None:
        plan = Plan.from_dict(best.plan)
        plan.metadata = {
            "search": {
                "method": searcher.name,
                "trial": best.number,
                "error": best.error,
                "metric": summary.metric,
                "study": study.study_name,
                "budget": budget,
            }
        }
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / (SUMMARY_FILE + ".tmp")
        tmp.write_text(json.dumps(summary.to_dict(), indent=1, default=str))
        tmp.replace(out / SUMMARY_FILE)
        if plan is not None:
            plan.save(out / PLAN_FILE)
        write_report(summary, out)
    return SearchResult(summary, plan, out, stopped_early, new, recovered)


def load_summary(storage: str, study_name: str | None = None) -> SearchSummary:
    """Rebuild a search's summary from its storage URL (for ``qpruner report``)."""
    import optuna

    storage_obj = st.make_storage(storage)
    names = [s.study_name for s in optuna.get_all_study_summaries(storage_obj, include_best_trial=False)]
    if not names:
        raise QPrunerError(f"storage {st.mask_url(storage)} holds no study")
    if study_name is None:
        if len(names) > 1:
            raise QPrunerError(f"storage holds several studies ({', '.join(names)}); pass --study-name")
        study_name = names[0]
    if study_name not in names:
        raise QPrunerError(f"no study {study_name!r} in {st.mask_url(storage)} (it has {', '.join(names)})")
    study = optuna.load_study(study_name=study_name, storage=storage_obj)
    return summary_of(study, st.records(study), storage)
