"""Which trial a search chooses, and trial statuses read back from studies as stored."""

from __future__ import annotations

import json
import math

import optuna
from search_helpers import SyntheticEvaluator, budget_between, make_space

from qpruner.search.records import Status, TrialRecord, choose_trial
from qpruner.search.report import SearchSummary
from qpruner.search.run import load_summary, run_search
from qpruner.search.search_run import SearchRun

MIB = 2**20


def test_choose_trial_picks_the_best_evaluated_plan_within_budget():
    budget = 100 * MIB
    recs = [
        TrialRecord(0, Status.EVALUATED, {}, error=2.0, memory_predicted=10 * MIB),
        # Lower errors, but not evaluated plans within budget: never chosen.
        TrialRecord(1, Status.REJECTED, {}, error=0.1, memory_predicted=50 * MIB),
        TrialRecord(2, Status.FAILED, {}, error=0.2, memory_predicted=20 * MIB),
        TrialRecord(3, Status.EVALUATED, {}, error=0.5, memory_predicted=200 * MIB),  # over budget
        TrialRecord(4, Status.EVALUATED, {}, error=1.5, memory_predicted=90 * MIB),
        TrialRecord(5, Status.EVALUATED, {}, error=math.nan, memory_predicted=30 * MIB),  # diverged
        TrialRecord(6, Status.RUNNING, {}, memory_predicted=40 * MIB),
        TrialRecord(7, Status.EVALUATED, {}, error=1.5, memory_predicted=80 * MIB),  # a tie: the earlier wins
        TrialRecord(8, "duplicate", {}, error=0.3, memory_predicted=40 * MIB),
    ]
    assert choose_trial(recs, budget).number == 4
    assert choose_trial(recs, 95 * MIB).number == 4
    assert choose_trial(recs, 85 * MIB).number == 7
    assert choose_trial(recs, 5 * MIB) is None  # nothing evaluated fits
    assert choose_trial(recs[1:3], budget) is None and choose_trial([], budget) is None
    summary = SearchSummary("random", "perplexity", budget, recs, chosen=4)
    assert summary.chosen_trial is recs[4]
    summary.chosen = None
    assert summary.chosen_trial is None


def test_status_is_the_stored_string():
    assert Status("rejected") is Status.REJECTED and Status.EVALUATED == "evaluated"
    assert str(Status.FAILED) == "failed" and f"{Status.WAITING}" == "waiting"
    rec = TrialRecord(0, "evaluated", {"bits_0": 4}, error=1.0)
    assert rec.status is Status.EVALUATED
    assert json.loads(json.dumps(rec.to_dict()))["status"] == "evaluated"
    assert TrialRecord.from_dict(json.loads(json.dumps(rec.to_dict()))) == rec


def test_a_resumed_study_reads_old_status_strings(tmp_path):
    """Trials stored as plain strings (what every version writes) load as statuses and count."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    space = make_space("joint", 4)

    def run(trials: int):
        search = SearchRun(space=space, evaluator=SyntheticEvaluator(4), budget=budget_between(space, 0.5),
                           storage=url, trials=trials, study_name="s")  # fmt: skip
        return run_search(search, resume=True, progress=False, log=lambda *_: None)

    first = run(2)
    study = optuna.load_study(study_name="s", storage=url)
    done, n0 = study.trials[0], len(study.trials)
    assert type(done.user_attrs["status"]) is str and done.user_attrs["status"] == "evaluated"
    # Trials written by hand as an older qpruner wrote them: strings, one with no status at all.
    attrs = {k: done.user_attrs[k] for k in ("memory_predicted", "plan", "proposed_by")}
    old = dict(params=done.params, distributions=done.distributions)
    state = optuna.trial.TrialState
    for st, value, stored in (
        (state.COMPLETE, 0.01, {**attrs, "status": "evaluated", "error": 0.01}),
        (state.PRUNED, None, {"status": "rejected", "memory_predicted": 2**40}),
        (state.COMPLETE, 0.02, {**attrs, "error": 0.02}),
    ):
        study.add_trial(optuna.trial.create_trial(state=st, value=value, user_attrs=stored, **old))
    res = run(5)  # 4 evaluated already: one more
    assert res.new_trials == 1
    by_number = {r.number: r for r in res.summary.records}
    statuses = [by_number[n0 + i].status for i in range(3)]
    assert statuses == [Status.EVALUATED, Status.REJECTED, Status.EVALUATED]
    assert all(isinstance(r.status, Status) for r in res.summary.records)
    assert first.summary.chosen < n0
    assert res.summary.chosen == n0 and res.plan.metadata["search"]["trial"] == n0
    assert load_summary(url).chosen == n0
