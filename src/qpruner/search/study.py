"""optuna studies in a storage URL: where a search lives, how it resumes, what it stores.

``sqlite:///PATH`` (the default, ``OUT/study.db``: embedded, nothing to start) and any
SQLAlchemy URL such as ``postgresql://user@host/db`` go to optuna's ``RDBStorage``;
``journal:///PATH`` to its ``JournalStorage`` over a file (several processes, no server).
The study carries its own identity (method, space, evaluator, budget) as a study attribute,
so resuming it with other settings is refused before any training, and every trial's plan
and measurements as trial attributes (:mod:`qpruner.search.records`).
"""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path

from qpruner.errors import QPrunerError
from qpruner.search.fidelity import FIDELITIES_ATTR, curve_of
from qpruner.search.records import Status, TrialRecord

IDENTITY_ATTR = "qpruner"
WORKER_ATTR = "worker"
BUDGET_ATTR = "budget_stated"


def default_storage(out_dir: str | Path) -> str:
    return f"sqlite:///{Path(out_dir).resolve() / 'study.db'}"


def mask_url(url: str) -> str:
    """The URL with any password replaced, for logs and reports."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", url)


def make_storage(url: str, heartbeat: int | None = None, grace: int | None = None):
    """An optuna storage for ``url``; one-line errors for what a user can get wrong.

    ``heartbeat`` (seconds, RDB storages): each running trial's worker beats; a trial whose
    beat is older than ``grace`` (default 2 × heartbeat) is failed by the next live worker
    and queued once more (optuna's ``RetryFailedTrialCallback(max_retry=1)``).
    """
    import optuna

    if url.startswith("journal://"):
        path = Path(url[len("journal://") :])
        if not path.parent.is_dir():
            raise QPrunerError(f"journal storage: directory {path.parent} does not exist")
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if not scheme or scheme.startswith(("http", "file")):
        raise QPrunerError(
            f"unsupported storage URL {mask_url(url)!r}: use sqlite:///PATH, journal:///PATH or "
            "postgresql://USER@HOST/DB"
        )
    if scheme.startswith("sqlite"):
        db = url.split(":///", 1)[-1]
        if db and db != ":memory:" and not Path(db).parent.is_dir():
            raise QPrunerError(f"sqlite storage: directory {Path(db).parent} does not exist")
    kwargs = {}
    check_heartbeat(heartbeat, grace)
    if heartbeat is not None:
        kwargs = {
            "heartbeat_interval": heartbeat,
            "grace_period": grace or 2 * heartbeat,
            "failed_trial_callback": optuna.storages.RetryFailedTrialCallback(max_retry=1),
        }
    try:
        storage = optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True}, **kwargs)
        if scheme.startswith("sqlite"):
            _fast_sqlite(storage.engine)
        return storage
    except ImportError as exc:  # optuna re-raises the dialect's missing module as ImportError
        raise QPrunerError(
            f"storage {mask_url(url)}: database driver missing ({exc.__cause__ or exc}); for PostgreSQL "
            "pip install 'qpruner[postgres]'"
        ) from exc
    except Exception as exc:  # SQLAlchemy: bad dialect, unreachable server, refused login
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise QPrunerError(f"cannot open storage {mask_url(url)}: {first}") from exc


def check_heartbeat(heartbeat: int | None, grace: int | None) -> None:
    """Heartbeat settings a storage can use (checked before a search creates anything)."""
    if heartbeat is not None and (heartbeat < 1 or (grace is not None and grace <= heartbeat)):
        raise QPrunerError(f"need heartbeat >= 1 s and grace > heartbeat, got {heartbeat} and {grace}")


def _fast_sqlite(engine) -> None:
    """Write-ahead log with ``synchronous=NORMAL`` on every connection to the SQLite file.

    optuna commits each parameter and attribute on its own (some 35 commits per trial here),
    and with SQLite's default rollback journal every commit is an fsync: half a second of
    loop per trial on our machine. In WAL mode with NORMAL sync a commit survives the process
    being killed (what resuming relies on); only an OS crash or power loss can drop the
    last few, which a resumed search simply reruns.
    """
    from sqlalchemy import event

    def pragmas(dbapi_connection, _record) -> None:
        cur = dbapi_connection.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    event.listen(engine, "connect", pragmas)
    engine.dispose()  # connections opened while optuna created its tables reconnect with the pragmas


def open_study(storage, name: str, identity: dict, *, resume: bool, sampler=None, pruner=None):
    """Create ``name`` or, with ``resume``, continue it if its identity matches.

    ``pruner``: optuna's, for multi-fidelity trials (a worker's own object; what it compares
    is in the storage)."""
    import optuna

    existing = {s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    if name in existing and not resume:
        raise QPrunerError(
            f"study {name!r} already exists in this storage; pass --resume to continue it "
            "or choose another --study-name"
        )
    study = optuna.create_study(storage=storage, study_name=name, sampler=sampler, pruner=pruner,
                                direction="minimize", load_if_exists=True)  # fmt: skip
    stored = study.user_attrs.get(IDENTITY_ATTR)
    wanted = json.loads(json.dumps(identity, default=str))
    if stored is None:
        study.set_user_attr(IDENTITY_ATTR, wanted)
    elif stored != wanted:
        diff = sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))
        raise QPrunerError(
            f"study {name!r} was made with other settings ({', '.join(diff)} differ); "
            "resume it with the same ones or use another --study-name"
        )
    return study


def host_name() -> str:
    """This machine's name in the study (``QPRUNER_WORKER_HOST`` overrides, e.g. for containers
    that share a hostname)."""
    return os.environ.get("QPRUNER_WORKER_HOST") or socket.gethostname()


def worker_id() -> dict:
    return {"host": host_name(), "pid": os.getpid()}


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (a zombie, killed but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no procfs (macOS): the signal check stands
    return state not in ("Z", "X")


def fail_dead_trials(study) -> list[int]:
    """Fail RUNNING trials whose worker is gone and queue each for one retry.

    What a ``kill -9`` leaves behind: the trial stays RUNNING in the storage. Without
    heartbeats (SQLite, journal) only a worker on the same host can tell its owner is dead.
    Called between trials, so a RUNNING trial of this very process is a leftover too (its
    result could not be stored when the database connection dropped). Trials of other hosts
    are left to the storage's heartbeat (``--heartbeat``).
    """
    import optuna

    me = host_name()
    failed = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        w = t.user_attrs.get(WORKER_ATTR) or {}
        pid = int(w.get("pid", -1))
        if w.get("host") == me and (pid == os.getpid() or not _alive(pid)):
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)
            failed.append(t.number)
            requeue(study, t)
    return failed


def requeue(study, trial) -> None:
    """Queue a failed trial's plan again, once (a retry of a retry is not made)."""
    if trial.user_attrs.get("retry_of") is not None or not trial.params:
        return
    attrs = {k: v for k, v in trial.user_attrs.items() if k in ("proposed_by", "predicted_error")}
    study.enqueue_trial(trial.params, user_attrs={**attrs, "retry_of": trial.number}, skip_if_exists=False)


def requeue_if_retry(study, trial) -> None:
    """A retry that stood down (see the objective's surplus check) is queued again, not lost."""
    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number)  # with system attrs
    retry_of = trial.user_attrs.get("retry_of", trial.system_attrs.get("failed_trial"))
    params = trial.params or trial.system_attrs.get("fixed_params")
    if retry_of is None or not params:
        return
    attrs = {k: v for k, v in trial.user_attrs.items() if k in ("proposed_by", "predicted_error")}
    study.enqueue_trial(params, user_attrs={**attrs, "retry_of": retry_of}, skip_if_exists=False)


def record_of(trial) -> TrialRecord:
    """A :class:`TrialRecord` from an optuna ``FrozenTrial``."""
    import optuna

    s = optuna.trial.TrialState
    a = trial.user_attrs
    # The stored strings are the enum's values, whichever version wrote them.
    if trial.state == s.COMPLETE:
        status = Status(a.get("status", Status.EVALUATED))
    elif trial.state == s.PRUNED:
        status = Status(a.get("status", Status.PRUNED))  # stopped early; or refused, surplus, a duplicate
    elif trial.state == s.RUNNING:
        status = Status.RUNNING
    elif trial.state == s.WAITING:
        status = Status.WAITING
    else:
        status = Status.FAILED
    params = dict(trial.params) or {k: int(v) for k, v in (a.get("fixed_params") or {}).items()}
    return TrialRecord(
        number=trial.number,
        status=status,
        params={k: int(v) for k, v in params.items()},
        error=a.get("error") if status == Status.EVALUATED else None,
        memory_predicted=a.get("memory_predicted"),
        memory_measured=a.get("memory_measured"),
        predicted_error=a.get("predicted_error"),
        proposed_by=a.get("proposed_by"),
        metrics=a.get("metrics") or {},
        plan=a.get("plan"),
        retry_of=a.get("retry_of", trial.system_attrs.get("failed_trial")),
        curve=curve_of(trial),
        fidelities=a.get(FIDELITIES_ATTR),
    )


def trial_seconds(study) -> float:
    """Seconds the study's finished trials took, summed over every worker: the compute a
    time budget counts. From the storage's own start and end times, so it resumes."""
    total = 0.0
    for t in study.get_trials(deepcopy=False):
        if t.datetime_start is not None and t.datetime_complete is not None:
            total += (t.datetime_complete - t.datetime_start).total_seconds()
    return total


def records(study) -> list[TrialRecord]:
    out = []
    for t in study.get_trials(deepcopy=False):
        r = record_of(t)
        fixed = t.system_attrs.get("fixed_params")
        if t.state.name == "WAITING" and fixed:
            # An enqueued trial: its parameters are only in the system attributes so far.
            r.params = {k: int(v) for k, v in fixed.items()}
        out.append(r)
    return out


__all__ = ["make_storage", "open_study", "record_of", "records"]
