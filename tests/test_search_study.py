"""Where a search lives: storage URLs, resuming, settings checks, and surviving kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pytest
from search_helpers import SyntheticEvaluator, budget_between, make_space

from qpruner.errors import QPrunerError
from qpruner.search.run import load_summary, run_search
from qpruner.search.search_run import SearchRun
from qpruner.search.study import make_storage, mask_url

LAYERS = 4


def _run(url, trials, name="s", resume=False, seed=0, method="random", evaluator=None, out=None):
    space = make_space("joint", LAYERS)
    ev = evaluator or SyntheticEvaluator(LAYERS)
    run = SearchRun(
        space=space,
        evaluator=ev,
        budget=budget_between(space, 0.5),
        storage=url,
        method=method,
        trials=trials,
        study_name=name,
        seed=seed,
    )
    return run_search(run, out, resume=resume, progress=False, log=lambda *_: None)


def test_storage_urls(tmp_path):
    assert isinstance(make_storage(f"sqlite:///{tmp_path / 'a.db'}"), optuna.storages.RDBStorage)
    assert isinstance(make_storage(f"journal://{tmp_path / 'a.log'}"), optuna.storages.JournalStorage)
    with pytest.raises(QPrunerError, match="unsupported storage URL"):
        make_storage("study.db")
    with pytest.raises(QPrunerError, match="does not exist"):
        make_storage(f"sqlite:///{tmp_path / 'missing' / 'a.db'}")
    with pytest.raises(QPrunerError, match="cannot open storage|driver missing"):
        make_storage("nosuchdialect://u@h/db")
    assert mask_url("postgresql://me:secret@db/q") == "postgresql://me:***@db/q"


def test_existing_study_needs_resume_and_same_settings(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    _run(url, 2)
    with pytest.raises(QPrunerError, match="already exists.*--resume"):
        _run(url, 3)
    res = _run(url, 4, resume=True)  # continues: 2 more, not 4 more
    assert sum(r.status == "evaluated" for r in res.summary.records) == 4
    assert res.new_trials == 2
    with pytest.raises(QPrunerError, match="other settings"):
        _run(url, 5, resume=True, seed=1)


def test_journal_storage_and_report_from_storage_alone(tmp_path):
    url = f"journal://{tmp_path / 'study.log'}"
    res = _run(url, 3, out=tmp_path / "out")
    again = load_summary(url)  # rebuilt from the storage: same trials, same choice
    assert [r.to_dict() for r in again.records] == [r.to_dict() for r in res.summary.records]
    assert again.chosen == res.summary.chosen
    with pytest.raises(QPrunerError, match="no study 'nope'"):
        load_summary(url, "nope")


SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from search_helpers import SyntheticEvaluator, budget_between, make_space
from qpruner.search.run import run_search
from qpruner.search.search_run import SearchRun
space = make_space("joint", {layers})
ev = SyntheticEvaluator({layers}, hang_at=3, marker={marker!r})
run = SearchRun(space=space, evaluator=ev, budget=budget_between(space, 0.5), storage={url!r},
                method="automixq", trials=6, study_name="s",
                options=dict(n_initial=2, population=8, generations=2))
run_search(run, progress=False)
"""


def test_kill_9_mid_trial_loses_only_that_trial(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    marker = tmp_path / "hanging"
    code = textwrap.dedent(SCRIPT).format(
        tests=str(Path(__file__).parent), layers=LAYERS, marker=str(marker), url=url
    )
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "PYTHONWARNINGS": "ignore"})
    deadline = time.time() + 120
    while not marker.exists():
        assert proc.poll() is None, "the search process died before the trial that hangs"
        assert time.time() < deadline
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    study = optuna.load_study(study_name="s", storage=url)
    states = [t.state.name for t in study.get_trials()]
    assert states.count("COMPLETE") == 3 and states.count("RUNNING") == 1
    hung = next(t for t in study.get_trials() if t.state.name == "RUNNING")

    space = make_space("joint", LAYERS)
    ev = SyntheticEvaluator(LAYERS)
    run = SearchRun(
        space=space,
        evaluator=ev,
        budget=budget_between(space, 0.5),
        storage=url,
        method="automixq",
        trials=6,
        study_name="s",
        options=dict(n_initial=2, population=8, generations=2),
    )
    res = run_search(run, tmp_path / "out", resume=True, progress=False, log=lambda *_: None)
    assert res.failed_recovered == [hung.number]
    recs = res.summary.records
    assert sum(r.status == "evaluated" for r in recs) == 6
    assert [r.number for r in recs if r.status == "failed"] == [hung.number]
    assert not [r for r in recs if r.status in ("running", "waiting")]
    retry = [r for r in recs if r.retry_of == hung.number]
    assert len(retry) == 1 and retry[0].params == hung.params and retry[0].status == "evaluated"
    # Only the retried plan was trained twice (once lost, once here); 3 more done in this process.
    assert len(ev.seen) == 3 and len(set(ev.seen)) == 3


def test_a_cut_off_trial_over_budget_is_retried_and_refused(tmp_path):
    """A trial left RUNNING by a dead worker is failed and queued once more, whatever its plan:
    a plan over budget is retried and refused like any other, so its retry is not evaluated
    (what the multi-worker tests must allow when the database drops mid-refusal)."""
    from qpruner.search.study import WORKER_ATTR, host_name

    url = f"sqlite:///{tmp_path / 'study.db'}"
    _run(url, 2)
    space = make_space("joint", LAYERS)
    dearest = {k: max(v) for k, v in space.param_choices.items()}
    assert space.memory(dearest) > budget_between(space, 0.5)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid of this host that no longer runs
    study = optuna.load_study(study_name="s", storage=url)
    cut = optuna.trial.create_trial(
        state=optuna.trial.TrialState.RUNNING,
        params=dearest,
        distributions=space.distributions(),
        user_attrs={WORKER_ATTR: {"host": host_name(), "pid": gone.pid}},
    )
    study.add_trial(cut)
    number = max(t.number for t in study.get_trials())
    res = _run(url, 4, resume=True)
    assert res.failed_recovered == [number]
    recs = {r.number: r for r in res.summary.records}
    assert recs[number].status == "failed"
    retry = [r for r in recs.values() if r.retry_of == number]
    assert len(retry) == 1 and retry[0].params == dearest and retry[0].status == "rejected"
    assert sum(r.status == "evaluated" for r in recs.values()) == 4


@pytest.mark.parametrize(
    "change,words",
    [
        ({"memory_budget": "1KiB"}, "below the cheapest"),
        ({"memory_budget": "lots"}, "cannot read memory size"),
        ({"trials": 0}, "--trials"),
        ({"storage": "study.db"}, "unsupported storage URL"),
        ({"storage": "nosuchdialect://u@h/db"}, "cannot open storage|driver missing"),
        ({"heartbeat": 0}, "heartbeat"),
        ({"method": "nope"}, "unknown search method"),
        ({"train_data": None}, "--train-data"),  # the real evaluator needs training text
    ],
)
def test_search_model_checks_everything_before_it_creates_its_output(model_dir, tmp_path, change, words):
    """The Python API, like the CLI, leaves no empty output directory behind a failed call."""
    from qpruner.search.from_model import SearchConfig, search_model

    cfg = SearchConfig(**{"memory_budget": "1GiB", "trials": 2, "method": "random", **change})
    ev = None if "train_data" in change else SyntheticEvaluator(6)
    with pytest.raises(QPrunerError, match=words):
        search_model(model_dir, cfg, tmp_path / "a" / "s", evaluator=ev, progress=False)
    assert list(tmp_path.iterdir()) == []
