"""Running a search (:class:`~qpruner.search.search_run.SearchRun`) and what it leaves behind.

:class:`SearchRun` owns everything one search needs — the space, the memory budget, the
evaluator, the searcher (by name, seed and options), the trial count and the storage URL
and study name — so each lives in exactly one place: the searcher is built from the run's
budget and seed, the study's identity is the run's, and the loop
(:mod:`qpruner.search.loop`) reads all of it from the run. ``trials`` counts evaluated
trials in the whole study (evaluated, or stopped early by the multi-fidelity pruner), whichever
worker ran them.

Outputs in ``out_dir``: ``plan.json`` (the best plan within budget, with its predicted and
measured memory), ``search.json`` (every trial) and ``report.html`` with its PNGs.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from qpruner.errors import QPrunerError
from qpruner.plan import Plan
from qpruner.search import study as st
from qpruner.search.loop import LoopState, run_trial, step, with_retries
from qpruner.search.records import TrialRecord, choose_trial, tried
from qpruner.search.report import SearchSummary, write_report
from qpruner.search.search_run import SearchRun

SUMMARY_FILE = "search.json"
PLAN_FILE = "plan.json"


@dataclass
class SearchResult:
    summary: SearchSummary
    plan: Plan | None
    out_dir: Path | None
    stopped_early: bool = False
    new_trials: int = 0
    failed_recovered: list[int] = field(default_factory=list)
    out_of_time: bool = False  # stopped by the run's time budget


def run_search(
    run: SearchRun,
    out_dir: str | Path | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
    log: Callable = print,
) -> SearchResult:
    """Search until the study has tried ``run.trials`` plans (or the searcher converges).

    Any number of workers may run this on the same storage URL and study name: ``trials``
    counts the whole study, proposals are registered in it before they are trained, and a
    worker skips a plan another worker is already running or has done.
    """
    import optuna

    if run.trials < 1:
        raise QPrunerError(f"--trials must be at least 1, got {run.trials}")
    run.space.check_budget(run.budget, run.stated_budget.stated())  # one line, before anything is made
    identity = run.identity()
    storage = st.make_storage(run.storage, run.heartbeat, run.grace)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    state = LoopState()
    try:
        study = _open(run, storage, identity, resume=resume)
        objective = functools.partial(run_trial, run)
        done0 = tried(st.records(study))
        bar = tqdm(
            total=run.trials,
            initial=min(done0, run.trials),
            desc=f"search ({run.searcher.name})",
            unit="trial",
            disable=not progress,
        )
        while (
            outcome := with_retries(
                lambda: step(run, study, objective, bar=bar, state=state, log=log), run, log
            )
        ) is None:
            pass
        state.stopped_early = outcome == "converged"
        state.out_of_time = outcome == "out of time"
        bar.close()
        recs = with_retries(lambda: st.records(study), run, log)
    finally:
        optuna.logging.set_verbosity(verbosity)
    result = SearchResult(
        summary_of(study, recs, run.storage),
        None,
        None,
        state.stopped_early,
        tried(recs) - done0,
        state.recovered,
        state.out_of_time,
    )
    return finish(result, run, study_name=study.study_name, out_dir=out_dir)


def _open(run: SearchRun, storage, identity: dict, *, resume: bool):
    """The run's study, opened or joined, its searcher set up on it."""
    study = st.open_study(storage, run.study_name, identity, resume=resume, sampler=run.searcher.sampler(),
                          pruner=run.pruner())  # fmt: skip
    # How the budget was stated ("nf4", "70%"): shown beside its bytes, not part of the identity
    # (a worker stating the same bytes another way joins the study).
    study.set_user_attr(st.BUDGET_ATTR, run.stated_budget.to_dict())
    run.searcher.setup(study)
    return study


def summary_of(study, recs: list[TrialRecord], storage: str) -> SearchSummary:
    """Everything the report needs, from the study alone (no worker's files)."""
    ident = study.user_attrs.get(st.IDENTITY_ATTR, {})
    budget = ident.get("budget")
    best = choose_trial(recs, budget) if budget is not None else None
    metric = (ident.get("evaluator") or {}).get("metric_name", "error")
    extra = {k: v for k, v in study.user_attrs.items() if k != st.IDENTITY_ATTR}
    space = ident.get("space") or {}
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
        memory_at=f"{space['batch']} × {space['seq_len']} tokens" if "batch" in space else None,
        memory_measure=space.get("measure", "finetune"),
    )


def finish(
    result: SearchResult, run: SearchRun, *, study_name: str, out_dir: str | Path | None
) -> SearchResult:
    """The chosen plan (with where it came from) and, given ``out_dir``, every output file."""
    summary = result.summary
    if hasattr(run.evaluator, "metric"):
        summary.metric = run.evaluator.metric
    best = summary.chosen_trial
    if best is not None and best.plan is not None:
        result.plan = Plan.from_dict(best.plan)
        result.plan.metadata = {
            "search": {
                "method": run.searcher.name,
                "trial": best.number,
                "error": best.error,
                "metric": summary.metric,
                "study": study_name,
                "budget": run.budget,
            }
        }
    if out_dir is not None:
        out = result.out_dir = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / (SUMMARY_FILE + ".tmp")
        tmp.write_text(json.dumps(summary.to_dict(), indent=1, default=str))
        tmp.replace(out / SUMMARY_FILE)
        if result.plan is not None:
            result.plan.save(out / PLAN_FILE)
        write_report(summary, out)
    return result


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
