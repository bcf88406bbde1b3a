"""Multi-fidelity trials: scored as they train, weak plans stopped by optuna's pruner, the curves
stored in the study and learnt from (the training budget a feature of the performance model)."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
from search_helpers import SyntheticEvaluator, budget_between, make_space

from qpruner.errors import QPrunerError
from qpruner.search import study as st
from qpruner.search.fidelity import fidelity_steps
from qpruner.search.records import Status, TrialRecord, budget_share, count, training_points, tried
from qpruner.search.run import load_summary, run_search
from qpruner.search.search_run import SearchRun
from qpruner.search.searchers.automixq import AutoMixQSearcher

LAYERS = 4
STEPS = (0, 5, 10, 20)


def _run(url, trials, *, fidelities=STEPS, resume=False, evaluator=None, method="random", name="s",
         pruner="halving"):  # fmt: skip
    space = make_space("joint", LAYERS)
    ev = evaluator or SyntheticEvaluator(LAYERS)
    opts = {"n_initial": 3, "population": 8, "generations": 2} if method == "automixq" else {}
    run = SearchRun(space=space, evaluator=ev, budget=budget_between(space, 0.6), storage=url, method=method,
                    trials=trials, study_name=name, options=opts, fidelities=fidelities,
                    pruner_kind=pruner)  # fmt: skip
    return run_search(run, resume=resume, progress=False, log=lambda *_: None), ev


def _expected_curve(ev: SyntheticEvaluator, final: float, n: int) -> list[list[float]]:
    return [[s, pytest.approx(final + ev.gap * (1 - budget_share(s, STEPS[-1])))] for s in STEPS[:n]]


def test_fidelity_steps_double_up_to_the_trial():
    assert fidelity_steps(20) == (0, 5, 10, 20)
    assert fidelity_steps(8, rungs=4) == (0, 1, 2, 4, 8)
    assert fidelity_steps(1) == (0, 1)
    with pytest.raises(QPrunerError):
        fidelity_steps(0)


@pytest.mark.parametrize("pruner", ["halving", "hyperband"])
def test_the_pruner_stops_weak_plans_early(pruner, tmp_path):
    res, ev = _run(f"sqlite:///{tmp_path / 'a.db'}", 12, pruner=pruner)
    recs = res.summary.records
    stopped = [r for r in recs if r.status == Status.PRUNED]
    done = [r for r in recs if r.status == Status.EVALUATED]
    assert stopped and done and tried(recs) == 12
    # a stopped plan's fine-tune really ended early: the evaluator was asked for fewer points
    assert sorted(ev.points) == sorted(len(r.curve) for r in stopped + done)
    assert all(len(r.curve) < len(STEPS) and r.error is None for r in stopped)
    assert all(len(r.curve) == len(STEPS) and r.curve[-1][1] == r.error for r in done)
    # successive halving (in Hyperband, within a bracket): a plan stopped at a rung was worse
    # there than a plan that went on
    for r in stopped if pruner == "halving" else []:
        rung = len(r.curve) - 1
        went_on = [o.curve[rung][1] for o in recs if len(o.curve) > rung + 1 and o.number < r.number]
        assert not went_on or r.curve[rung][1] > min(went_on)
    assert res.summary.chosen_trial.status == Status.EVALUATED


@pytest.mark.parametrize("method", ["qpruner", "rankadaptor", "joint"])  # automixq, random: above
def test_every_searcher_searches_with_multi_fidelity(method, tmp_path):
    from test_search import FAST, SPACES
    from test_search import LAYERS as N

    space = make_space(SPACES[method], N)
    opts = dict(FAST[method]) | ({"importance": FAST["qpruner"]["importance"]} if method == "joint" else {})
    run = SearchRun(space=space, evaluator=SyntheticEvaluator(N), budget=budget_between(space, 0.5),
                    storage=f"sqlite:///{tmp_path / 'a.db'}", method=method, trials=8, options=opts,
                    fidelities=STEPS)  # fmt: skip
    recs = run_search(run, progress=False, log=lambda *_: None).summary.records
    assert tried(recs) == 8 or run.searcher.finished(recs)
    assert count(recs) >= 1 and all(r.curve for r in recs if r.status in (Status.EVALUATED, Status.PRUNED))


def test_one_flag_turns_it_off():
    from qpruner.cli import build_parser
    from qpruner.cli.search import search_config
    from qpruner.search.from_model import SearchConfig, fidelities

    argv = ["search", "--model", "m", "--out", "o", "--train-data", "t", "--memory-budget", "nf4"]
    on = search_config(build_parser().parse_args([*argv, "--trial-steps", "8"]))
    assert on.multi_fidelity and fidelities(on) == (0, 2, 4, 8)
    off = search_config(build_parser().parse_args([*argv, "--no-multi-fidelity"]))
    assert not off.multi_fidelity and fidelities(off) is None and SearchConfig().multi_fidelity
    assert (
        on.pruner == "halving"
        and search_config(build_parser().parse_args([*argv, "--pruner", "hyperband"])).pruner == "hyperband"
    )


def test_multi_fidelity_off_scores_each_trial_once(tmp_path):
    res, ev = _run(f"sqlite:///{tmp_path / 'a.db'}", 6, fidelities=None)
    assert count(res.summary.records) == 6 and ev.points == []
    assert all(r.curve == [] for r in res.summary.records)


def test_curves_are_stored_and_read_back_by_a_resumed_study(tmp_path):
    url = f"sqlite:///{tmp_path / 'a.db'}"
    _run(url, 8)
    stored = load_summary(url).records  # from the storage alone
    space, ev = make_space("joint", LAYERS), SyntheticEvaluator(LAYERS)
    for r in stored:
        if r.status in (Status.EVALUATED, Status.PRUNED):
            final = ev(space.plan(r.params)).error
            assert r.curve == _expected_curve(ev, final, len(r.curve)) and r.fidelities == list(STEPS)
    # the pruner's rung values are in the storage: a resumed worker compares against them
    study = optuna.load_study(study_name="s", storage=url)
    assert any("completed_rung_0" in t.system_attrs for t in study.get_trials())
    second, ev2 = _run(url, 14, resume=True)
    recs = second.summary.records
    assert tried(recs) == 14 and [r.curve for r in recs[:8]] == [r.curve for r in stored]
    assert any(r.status == Status.PRUNED for r in recs[8:])
    with pytest.raises(QPrunerError, match="fidelity"):  # the same study, scored once per trial: refused
        _run(url, 16, resume=True, fidelities=None)
    with pytest.raises(QPrunerError, match="fidelity"):  # or stopped by another pruner: refused
        _run(url, 16, resume=True, pruner="hyperband")


def test_a_second_worker_learns_from_the_first_workers_curves(tmp_path):
    url = f"sqlite:///{tmp_path / 'a.db'}"
    _run(url, 8, method="automixq")
    recs = st.records(optuna.load_study(study_name="s", storage=url))
    space = make_space("joint", LAYERS)
    X, y = AutoMixQSearcher(space, budget_between(space, 0.6)).training_data(recs)
    assert len(y) == sum(len(r.curve) for r in recs) > count(recs)  # every point, early ones too
    assert sorted(set(X[:, -1])) == pytest.approx(sorted({budget_share(s, STEPS[-1]) for s in STEPS}))


def _records(space, ev: SyntheticEvaluator, rng, n: int, *, full_every: int) -> list[TrialRecord]:
    """``n`` plans with known curves; one in ``full_every`` trained to the end, the rest stopped
    after the screen and 5 steps (as a pruner leaves a study)."""
    recs = []
    for i in range(n):
        c = space.sample(rng)
        curve = [[s, e.error] for s, e in zip(STEPS, ev.curve(space.plan(c), STEPS), strict=True)]
        full = i % full_every == 0
        status, kept = (Status.EVALUATED, curve) if full else (Status.PRUNED, curve[:2])
        recs.append(TrialRecord(i, status, c, error=curve[-1][1] if full else None, curve=kept,
                                fidelities=list(STEPS)))  # fmt: skip
    return recs


def test_the_performance_model_uses_the_training_budget():
    """Most points are early (stopped plans, far worse than their final error): a model that
    knew nothing of the budget would predict their mix, not the final error asked for."""
    from qpruner.search.performance import PerformanceModelConfig

    space = make_space("joint", LAYERS)
    ev = SyntheticEvaluator(LAYERS)
    rng = np.random.default_rng(0)
    recs = _records(space, ev, rng, 30, full_every=5)
    searcher = AutoMixQSearcher(space, budget_between(space, 1.0), model=PerformanceModelConfig(kind="ridge"))
    assert len(training_points(recs)) == 6 * 4 + 24 * 2
    model = searcher.fit(recs)
    held = [space.sample(rng) for _ in range(20)]
    truth = np.array([ev(space.plan(c)).error for c in held])
    predicted = model.predict(np.stack([searcher.features(c) for c in held]))  # at the full budget
    assert np.abs(predicted - truth).mean() < 0.1 * ev.gap
    at_screen = model.predict(np.stack([searcher.features(c, 0.0) for c in held]))
    assert np.abs(at_screen - truth - ev.gap).mean() < 0.1 * ev.gap
    # the budget stays a feature when the model fits on the plan summary alone
    assert searcher.summary_columns() == [*space.summary_columns, len(searcher.features(held[0])) - 1]


def test_a_real_trial_scored_as_it_trains_ends_where_an_uninterrupted_one_does(model_dir, text_file):
    """The fine-tune stops at each rung, is scored, and goes on from its checkpoint: its last
    point is the uninterrupted trial's error, to the bit."""
    from dataclasses import replace

    from qpruner.plan_sources import uniform_plan
    from qpruner.search.evaluator import FinetuneEvaluator
    from qpruner.search.recipe import trial_training

    train = replace(trial_training(2, micro_batch=2), batch_size=2, cutoff_len=32)
    ev = FinetuneEvaluator(str(model_dir), str(text_file), str(text_file), train, eval_max_tokens=200,
                           ctx_len=32, screen_tokens=64)  # fmt: skip
    plan = uniform_plan(model_dir, 16, 4, dtype="fp32")  # unquantized: fast, and exactness is the point
    points = list(ev.curve(plan, (0, 1, 2)))
    assert [p.metrics["steps"] for p in points] == [0, 1, 2]
    assert [p.memory is None for p in points] == [True, True, False]
    assert all(np.isfinite(p.error) for p in points)
    assert points[1].error != points[0].error  # the first step trains (no zero-lr warm-up step)
    straight = ev(uniform_plan(model_dir, 16, 4, dtype="fp32"))
    assert points[-1].error == straight.error and points[-1].memory > 0
