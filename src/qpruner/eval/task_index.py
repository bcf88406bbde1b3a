"""Finding lm-eval tasks: the shipped folder, the user's ``task_dir``, and where their data is.

lm-eval 0.4.13 passes ``dataset_kwargs.data_files`` to ``datasets.load_dataset`` untouched, so
a relative path would be read from the working directory; we resolve relative ``data_files``
(and a ``dataset_path`` starting with ``./`` or ``../``) against the directory of the YAML
that defines the task, so a task folder works from anywhere.

A data file written ``"{task_data}/NAME.jsonl"`` lives in the user's task data folder
(``task_data=`` / ``--task-data DIR``) rather than beside the YAML: the shipped BoolQ, PIQA,
ARC, WinoGrande, OpenBookQA, COPA and LAMBADA tasks read the benchmark files that way, since
their data may not be redistributed with the package.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
from pathlib import Path
from typing import Any

from qpruner.errors import QPrunerError

BUILTIN_TASK_DIR = Path(__file__).resolve().parent / "tasks"
TASK_DATA_MARK = "{task_data}"  # data_files prefix: the user's task data folder


def task_data_dir(task_data: str | Path | None) -> Path | None:
    """The user's task data folder, checked to exist (None: not given)."""
    if task_data is None:
        return None
    path = Path(task_data).expanduser()
    if not path.is_dir():
        raise QPrunerError(f"task data folder not found: {path}")
    return path.resolve()


def task_data_files(names: list[str]) -> list[str]:
    """The files the shipped tasks ``names`` read from the task data folder (``piqa.jsonl``, ...),
    from their own YAMLs: what a folder must hold for them to run."""
    from lm_eval.tasks._yaml_loader import load_yaml

    wanted, files = set(names), []
    for path in sorted(BUILTIN_TASK_DIR.rglob("*.yaml")):
        cfg = load_yaml(path, resolve_func=False)
        if cfg.get("task") not in wanted:
            continue
        found = _resolve_files(cfg.get("dataset_kwargs", {}).get("data_files"), path.parent, None)
        for value in found.values() if isinstance(found, dict) else [found]:
            for f in [value] if isinstance(value, str) else value or []:
                if f.startswith(TASK_DATA_MARK):
                    files.append(f[len(TASK_DATA_MARK) :].lstrip("/"))
    return files


def local_dirs(task_dir: str | Path | None) -> list[Path]:
    """The shipped task folder, then the user's (its tasks win on a name clash)."""
    if task_dir is None:
        return [BUILTIN_TASK_DIR]
    path = Path(task_dir).expanduser()
    if not path.is_dir():
        raise QPrunerError(f"task directory not found: {path}")
    if not any(path.rglob("*.yaml")):
        raise QPrunerError(f"no task YAML files (*.yaml) under {path}")
    return [BUILTIN_TASK_DIR, path.resolve()]


def task_manager(names: list[str], local: list[Path], task_data: Path | None = None):
    """A TaskManager that knows every name: local tasks only when that suffices (indexing
    lm-eval's ~15k built-in YAMLs takes seconds), else built-in plus local."""
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=[str(d) for d in local], include_defaults=False)
    _localize(manager, local, task_data)
    if all(name in manager.task_index for name in names):
        return manager
    stamp = tuple((str(p), p.stat().st_mtime_ns) for d in local for p in sorted(d.rglob("*.yaml")))
    manager = _full_manager(tuple(str(d) for d in local), stamp, str(task_data) if task_data else None)
    for name in names:
        if name not in manager.task_index:
            raise QPrunerError(_unknown_task_message(name, manager, local))
    return manager


@functools.lru_cache(maxsize=2)
def _full_manager(dirs: tuple[str, ...], stamp: tuple, task_data: str | None):
    """Built-in + local index, cached per set of local YAMLs (``stamp``: their paths and mtimes)
    and task data folder."""
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=list(dirs))
    _localize(manager, [Path(d) for d in dirs], Path(task_data) if task_data else None)
    return manager


def _localize(manager, local: list[Path], task_data: Path | None) -> None:
    """Make the tasks defined under ``local`` read their files relative to their own YAML
    (or from ``task_data`` for paths starting with ``{task_data}``).

    The index entry of each such task is replaced by its fully loaded config with relative
    paths made absolute (lm-eval builds a task from ``entry.cfg`` when ``yaml_path`` is None),
    so groups and tags naming the task get the resolved config too.
    """
    from lm_eval.tasks._index import Kind
    from lm_eval.tasks._yaml_loader import load_yaml

    for entry in manager.task_index.values():
        path = entry.yaml_path
        if entry.kind is not Kind.TASK or path is None:
            continue
        path = Path(path).resolve()
        if not any(path.is_relative_to(d.resolve()) for d in local):
            continue
        cfg = load_yaml(path, resolve_func=True)
        kwargs = cfg.get("dataset_kwargs")
        if isinstance(kwargs, dict) and "data_files" in kwargs:
            files = _resolve_files(kwargs["data_files"], path.parent, task_data)
            cfg["dataset_kwargs"] = {**kwargs, "data_files": files}
        dataset_path = cfg.get("dataset_path")
        if isinstance(dataset_path, str) and dataset_path.startswith(("./", "../")):
            cfg["dataset_path"] = str((path.parent / dataset_path).resolve())
        entry.cfg, entry.yaml_path = cfg, None


def _resolve_files(value: Any, base: Path, task_data: Path | None) -> Any:
    """``data_files`` (a path, a list, or a split -> path(s) mapping) with relative paths under
    ``base``; a ``{task_data}/`` prefix is the task data folder (left as is when there is none,
    for :func:`load_tasks` to explain)."""
    if isinstance(value, str):
        if value.startswith(TASK_DATA_MARK):
            rest = value[len(TASK_DATA_MARK) :].lstrip("/")
            return str(task_data / rest) if task_data is not None else value
        if "://" in value or Path(value).expanduser().is_absolute():
            return str(Path(value).expanduser()) if "://" not in value else value
        return str(base / value)
    if isinstance(value, (list, tuple)):
        return [_resolve_files(v, base, task_data) for v in value]
    if isinstance(value, dict):
        return {k: _resolve_files(v, base, task_data) for k, v in value.items()}
    return value


def _unknown_task_message(name: str, manager, local: list[Path]) -> str:
    close = difflib.get_close_matches(name, manager.all_tasks, n=5, cutoff=0.6)
    own = _local_task_names(manager, local)
    msg = f"unknown task {name!r}: not one of lm-eval's tasks nor in {', '.join(map(str, local))}"
    if close:
        msg += f"; close names: {', '.join(close)}"
    if own:
        msg += f"; local tasks: {', '.join(own[:10])}"
    broken = _unreadable_yamls(local[1:])
    if broken:
        msg += f"; unreadable task YAMLs: {'; '.join(broken[:3])}"
    return msg


def _local_task_names(manager, local: list[Path]) -> list[str]:
    """Names of the tasks defined under ``local`` (entries rewritten by :func:`_localize`)."""
    from lm_eval.tasks._yaml_loader import load_yaml

    names = []
    for d in local:
        for path in sorted(d.rglob("*.yaml")):
            with contextlib.suppress(Exception):
                cfg = load_yaml(path, resolve_func=False)
                name = cfg.get("task") if isinstance(cfg.get("task"), str) else cfg.get("group")
                if isinstance(name, str) and name in manager.task_index:
                    names.append(name)
    return sorted(set(names))


def _unreadable_yamls(dirs: list[Path]) -> list[str]:
    """YAMLs lm-eval's indexer skipped silently, with the reason, so a typo is not a mystery."""
    from lm_eval.tasks._yaml_loader import load_yaml

    bad = []
    for d in dirs:
        for path in sorted(d.rglob("*.yaml")):
            try:
                cfg = load_yaml(path, resolve_func=False)
                if not any(key in cfg for key in ("task", "group", "class")):
                    raise ValueError("no 'task' or 'group' key")
            except Exception as exc:  # any parse failure means lm-eval skipped this file
                reason = " ".join(str(exc).split())
                bad.append(
                    f"{path.name}: {type(exc).__name__}: {reason[:100]}{'...' if len(reason) > 100 else ''}"
                )
    return bad


def load_tasks(manager, names: list[str]) -> dict:
    """Build the tasks (this reads their data) one name at a time, so an error names its task."""
    merged: dict = {"tasks": {}, "groups": {}, "group_map": {}}
    for name in names:
        try:
            part = manager.load([name])
        except QPrunerError:
            raise
        except Exception as exc:  # lm-eval and datasets raise many types for unreadable data
            raise _load_error(name, exc) from exc
        for key in merged:
            merged[key].update(part.get(key, {}))
    return merged


def _load_error(name: str, exc: BaseException) -> QPrunerError:
    chain: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__
    full = " <- ".join(f"{type(x).__name__}: {x}" for x in chain)
    text = full[:400]
    if TASK_DATA_MARK in full:  # a shipped benchmark task, and no task data folder given
        file = full[full.index(TASK_DATA_MARK) + len(TASK_DATA_MARK) :].lstrip("/").split("'")[0]
        return QPrunerError(
            f"task {name!r} reads {file or 'its items'} from a task data folder: give --task-data DIR "
            "(task_data= in Python), e.g. ../shared/data/zeroshot"
        )
    hub = any(isinstance(x, ConnectionError) for x in chain) or any(
        word in text for word in ("OfflineModeIsEnabled", "Couldn't reach", "LocalEntryNotFound")
    )
    if hub:
        return QPrunerError(
            f"task {name!r} needs its data from the Hugging Face hub, which cannot be reached here ({text}); "
            "evaluate a local task instead (--task-dir; README 'Zero-shot evaluation')"
        )
    return QPrunerError(f"task {name!r}: cannot load its data: {text}")
