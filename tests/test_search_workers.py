"""One search, many workers: a real PostgreSQL server, a journal file, kill -9, a dropped database."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import postgres_server
import pytest
from search_helpers import SyntheticEvaluator, budget_between, make_space, worker

from qpruner.errors import QPrunerError
from qpruner.search.pareto import pareto_front
from qpruner.search.run import load_summary
from qpruner.search.study import make_storage

TESTS = str(Path(__file__).parent)


@pytest.fixture(scope="module")
def pg():
    try:
        server = postgres_server.start_server()
    except (FileNotFoundError, subprocess.CalledProcessError, TimeoutError) as exc:
        if os.environ.get("QPRUNER_REQUIRE_POSTGRES"):
            raise
        pytest.skip(f"no PostgreSQL server can be started here: {exc}")
    yield server
    postgres_server.remove(server)


def _spawn(url: str, trials: int, env: dict | None = None, **kw) -> subprocess.Popen:
    """A worker process; its stderr goes to a file (a pipe nobody reads could fill and block it)."""
    args = ", ".join(f"{k}={v!r}" for k, v in kw.items())
    code = f"import sys; sys.path.insert(0, {TESTS!r}); from search_helpers import worker; "
    code += f"sys.exit(worker({url!r}, {trials}, {args}))"
    fd, path = tempfile.mkstemp(suffix=".stderr")
    env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=fd)
    os.close(fd)
    proc.err_path = path
    return proc


def _err(proc: subprocess.Popen) -> str:
    return Path(proc.err_path).read_text()


def _wait_for(path: Path, procs: list[subprocess.Popen], timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert all(p.poll() is None for p in procs), "a worker died early: " + "".join(
            _err(p) for p in procs if p.poll() is not None
        )
        assert time.time() < deadline, "the hanging trial never started"
        time.sleep(0.1)


def _check_study(url: str, trials: int, killed: int) -> None:
    study = optuna.load_study(study_name="s", storage=make_storage(url))
    ts = study.get_trials()
    states = [t.state.name for t in ts]
    assert "RUNNING" not in states and "WAITING" not in states
    done = [t for t in ts if t.state.name == "COMPLETE" and t.user_attrs.get("status") == "evaluated"]
    assert len(done) == trials  # exactly N, not N per worker, no overshoot
    keys = [tuple(sorted(t.params.items())) for t in done]
    assert len(set(keys)) == len(keys)  # no plan evaluated twice...
    failed = [t for t in ts if t.state.name == "FAIL"]
    assert len(failed) == killed  # ...except the killed one, retried once by a live worker
    for f in failed:
        # Its retry ran to an end: evaluated, or refused over budget (the cut-off trial may have
        # been a refusal), or its plan taken by another worker; a retry that stood down as
        # surplus was queued again and is not counted.
        retries = [
            t
            for t in ts
            if t.user_attrs.get("retry_of", t.system_attrs.get("failed_trial")) == f.number
            and t.user_attrs.get("status") in ("evaluated", "rejected", "duplicate")
        ]
        assert (
            len(retries) == 1 and f.params.items() <= retries[0].params.items()
        )  # a cut-off trial may lack some
    summary = load_summary(url, "s")  # the report's front, from the storage alone
    pts = [(t.user_attrs["error"], float(t.user_attrs["memory_predicted"])) for t in done]
    assert sorted(summary.front()) == sorted(done[i].number for i in pareto_front(pts))


def test_three_workers_on_postgres_survive_a_kill_9(pg, tmp_path):
    url = pg.create_db("three")
    marker = tmp_path / "hanging"
    # The killed worker claims another host, so only the heartbeat can find its trial.
    hb = {"heartbeat": 1, "grace": 3, "delay": 0.2}
    procs = [_spawn(url, 12, env={"QPRUNER_WORKER_HOST": "elsewhere"}, hang_at=1, marker=str(marker), **hb)]
    time.sleep(2)  # the first worker creates the study
    procs += [_spawn(url, 12, log=str(tmp_path / f"w{i}.json"), **hb) for i in (1, 2)]
    _wait_for(marker, procs)
    os.kill(procs[0].pid, signal.SIGKILL)
    for p in procs[1:]:
        assert p.wait(timeout=180) == 0, _err(p)
    _check_study(url, 12, killed=1)
    trained = [
        tuple(map(tuple, k)) for i in (1, 2) for k in json.loads((tmp_path / f"w{i}.json").read_text())
    ]
    assert len(trained) == len(set(trained))  # the live workers never trained the same plan twice


def test_two_processes_on_a_journal_file(tmp_path):
    url = f"journal://{tmp_path / 'study.log'}"
    marker = tmp_path / "hanging"
    procs = [_spawn(url, 8, hang_at=1, marker=str(marker), delay=0.2)]
    time.sleep(2)
    procs.append(_spawn(url, 8, delay=0.2))
    _wait_for(marker, procs)
    os.kill(procs[0].pid, signal.SIGKILL)  # same host: the live worker sees its pid is gone (even unreaped)
    assert procs[1].wait(timeout=180) == 0, _err(procs[1])
    _check_study(url, 8, killed=1)


def test_a_dropped_database_ends_the_worker_cleanly(pg, tmp_path):
    url = pg.create_db("dropped")
    proc = _spawn(url, 40, delay=0.3, db_retries=2, db_backoff=0.3)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if len(optuna.load_study(study_name="s", storage=make_storage(url)).get_trials()) >= 3:
                break
        except KeyError:
            pass
        time.sleep(0.3)
    pg.stop()
    try:
        assert proc.wait(timeout=60) == 1
        err = _err(proc).strip().splitlines()
        assert err[-1].startswith("qpruner: error: lost the database at postgresql://")
        assert "rerun with --resume" in err[-1]
    finally:
        pg.start()
    study = optuna.load_study(
        study_name="s", storage=make_storage(url)
    )  # consistent: it loads and a worker finishes it
    states = [t.state.name for t in study.get_trials()]
    before = states.count("COMPLETE")
    assert before >= 2
    assert worker(url, 6, delay=0.0) == 0
    # The trial cut off by the drop is still RUNNING (its FAIL could not be written): the next
    # worker fails it and runs it once more.
    _check_study(url, 6 if before <= 6 else before, killed=states.count("RUNNING") + states.count("FAIL"))


def test_one_line_errors_before_any_training(pg):
    from qpruner.search.run import run_search
    from qpruner.search.search_run import SearchRun

    space = make_space("joint", 4)

    def run(url, sp=space):
        search = SearchRun(
            space=sp,
            evaluator=SyntheticEvaluator(4),
            budget=budget_between(sp, 0.5),
            storage=url,
            trials=2,
            study_name="s",
        )
        return run_search(search, resume=True, progress=False, log=lambda *_: None)

    with pytest.raises(QPrunerError, match="cannot open storage postgresql://postgres@127.0.0.1:1/"):
        run("postgresql://postgres@127.0.0.1:1/none")
    with pytest.raises(QPrunerError, match="database driver missing"):
        run("mysql://u@127.0.0.1/db")
    url = pg.create_db("identity")
    run(url)
    other = make_space("joint", 5)
    with pytest.raises(QPrunerError, match="other settings"):
        run(url, other)
    assert "p4ss" not in str(pytest.raises(QPrunerError, run, "postgresql://me:p4ss@127.0.0.1:1/x").value)
