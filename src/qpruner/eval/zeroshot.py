"""Zero-shot accuracy through lm-evaluation-harness, on the model object already in memory.

LLM-Pruner reports BoolQ, PIQA, HellaSwag, WinoGrande, ARC-e/c and OBQA through lm-eval. We
hand lm-eval the live ``nn.Module`` (``HFLM(pretrained=model)``) rather than a path, so a
pruned, quantized or PEFT-wrapped model is scored exactly as it sits in memory; nothing is
reloaded or merged.

Both ``acc`` (sum of the answer's token log-likelihoods) and ``acc_norm`` (the same divided
by the answer's length in bytes) are always reported side by side: papers in this line of
work mix the two per task, and comparing one model's ``acc`` with another's ``acc_norm``
is a silent error.

Tasks are lm-eval task YAMLs. Besides lm-eval's own (whose data comes from the Hugging Face
hub), every call sees the tasks shipped in ``qpruner/eval/tasks`` and those in ``task_dir``.
lm-eval 0.4.13 passes ``dataset_kwargs.data_files`` to ``datasets.load_dataset`` untouched, so
a relative path would be read from the working directory; we resolve relative
``data_files`` (and a ``dataset_path`` starting with ``./`` or ``../``) against the directory
of the YAML file that defines the task, so a task folder works from anywhere.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from qpruner.errors import QPrunerError

BUILTIN_TASK_DIR = Path(__file__).resolve().parent / "tasks"
FEWSHOT_SEED = 1234  # lm-eval's default, so few-shot contexts match a plain lm-eval run
BOOTSTRAP_ITERS = 1000  # acc/acc_norm stderr is closed-form; this only bounds other metrics' cost


@dataclass(frozen=True)
class TaskScore:
    """One task's accuracy: ``acc`` and ``acc_norm`` (fractions in [0, 1]) with their stderr.

    A value is None when the task does not compute that metric (many tasks have no
    ``acc_norm``); ``other`` holds any further metrics (``name`` or ``name[filter]``).
    """

    task: str
    samples: int
    acc: float | None
    acc_stderr: float | None
    acc_norm: float | None
    acc_norm_stderr: float | None
    num_fewshot: int = 0
    other: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def zero_shot(
    model: nn.Module,
    tokenizer,
    tasks: list[str],
    task_dir: str | Path | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    num_fewshot: int = 0,
    progress: bool = True,
) -> dict[str, TaskScore]:
    """Score ``model`` on lm-eval ``tasks``; returns one :class:`TaskScore` per task (and group).

    ``limit`` scores only the first N documents of each task (for quick checks: the score is
    then not comparable to published numbers). The model's train/eval mode is restored.
    """
    names, local = _names(tasks), _local_dirs(task_dir)
    if limit is not None and limit < 1:
        raise QPrunerError(f"limit must be a positive number of documents, got {limit}")
    if batch_size < 1 or num_fewshot < 0:
        raise QPrunerError(f"need batch_size >= 1 and num_fewshot >= 0, got {batch_size}, {num_fewshot}")

    from lm_eval import evaluator

    was_training = model.training
    try:
        with _quiet(progress):
            manager = _task_manager(names, local)
            loaded = _load_tasks(manager, names)
            for task in loaded["tasks"].values():
                task.set_config(key="num_fewshot", value=num_fewshot)
                task.set_fewshot_seed(seed=FEWSHOT_SEED)
            results = evaluator.evaluate(
                lm=_make_lm(model, tokenizer, batch_size, progress),
                task_dict=loaded,
                limit=limit,
                bootstrap_iters=BOOTSTRAP_ITERS,
                log_samples=False,
            )
    finally:
        model.train(was_training)
    return _scores(results, num_fewshot)


def check_tasks(tasks: list[str], task_dir: str | Path | None = None) -> list[str]:
    """Fail early: check the names and read each task's data before a large model is loaded.

    Data read here is cached by ``datasets``, so the later :func:`zero_shot` reads it again cheaply.
    """
    names, local = _names(tasks), _local_dirs(task_dir)
    with _quiet(progress=False):
        _load_tasks(_task_manager(names, local), names)
    return names


def format_scores(scores: dict[str, TaskScore]) -> str:
    """Plain-text table: acc and acc_norm side by side, in percent, with their stderr."""

    def cell(value: float | None, stderr: float | None) -> str:
        if value is None:
            return "n/a"
        return f"{100 * value:6.2f}" + (f" ± {100 * stderr:5.2f}" if stderr is not None else "")

    width = max([4, *(len(name) for name in scores)])
    rows = [f"{'task':<{width}}  {'n':>6}  {'shots':>5}  {'acc %':>15}  {'acc_norm %':>15}"]
    for name, s in scores.items():
        rows.append(
            f"{name:<{width}}  {s.samples:>6}  {s.num_fewshot:>5}  {cell(s.acc, s.acc_stderr):>15}  "
            f"{cell(s.acc_norm, s.acc_norm_stderr):>15}"
        )
    rows.append("acc: answer log-likelihood; acc_norm: log-likelihood per byte of the answer (lm-eval)")
    return "\n".join(rows)


def _names(tasks: list[str]) -> list[str]:
    names = [t.strip() for t in tasks if t and t.strip()]
    if not names:
        raise QPrunerError("no zero-shot tasks given")
    return names


def _local_dirs(task_dir: str | Path | None) -> list[Path]:
    """The shipped task folder, then the user's (its tasks win on a name clash)."""
    if task_dir is None:
        return [BUILTIN_TASK_DIR]
    path = Path(task_dir).expanduser()
    if not path.is_dir():
        raise QPrunerError(f"task directory not found: {path}")
    if not any(path.rglob("*.yaml")):
        raise QPrunerError(f"no task YAML files (*.yaml) under {path}")
    return [BUILTIN_TASK_DIR, path.resolve()]


def _task_manager(names: list[str], local: list[Path]):
    """A TaskManager that knows every name: local tasks only when that suffices (indexing
    lm-eval's ~15k built-in YAMLs takes seconds), else built-in plus local."""
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=[str(d) for d in local], include_defaults=False)
    _localize(manager, local)
    if all(name in manager.task_index for name in names):
        return manager
    stamp = tuple((str(p), p.stat().st_mtime_ns) for d in local for p in sorted(d.rglob("*.yaml")))
    manager = _full_manager(tuple(str(d) for d in local), stamp)
    for name in names:
        if name not in manager.task_index:
            raise QPrunerError(_unknown_task_message(name, manager, local))
    return manager


@functools.lru_cache(maxsize=2)
def _full_manager(dirs: tuple[str, ...], stamp: tuple):
    """Built-in + local index, cached per set of local YAMLs (``stamp``: their paths and mtimes)."""
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=list(dirs))
    _localize(manager, [Path(d) for d in dirs])
    return manager


def _localize(manager, local: list[Path]) -> None:
    """Make the tasks defined under ``local`` read their files relative to their own YAML.

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
            files = _resolve_files(kwargs["data_files"], path.parent)
            cfg["dataset_kwargs"] = {**kwargs, "data_files": files}
        dataset_path = cfg.get("dataset_path")
        if isinstance(dataset_path, str) and dataset_path.startswith(("./", "../")):
            cfg["dataset_path"] = str((path.parent / dataset_path).resolve())
        entry.cfg, entry.yaml_path = cfg, None


def _resolve_files(value: Any, base: Path) -> Any:
    """``data_files`` (a path, a list, or a split -> path(s) mapping) with relative paths under ``base``."""
    if isinstance(value, str):
        if "://" in value or Path(value).expanduser().is_absolute():
            return str(Path(value).expanduser()) if "://" not in value else value
        return str(base / value)
    if isinstance(value, (list, tuple)):
        return [_resolve_files(v, base) for v in value]
    if isinstance(value, dict):
        return {k: _resolve_files(v, base) for k, v in value.items()}
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


def _load_tasks(manager, names: list[str]) -> dict:
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
    text = " <- ".join(f"{type(x).__name__}: {x}" for x in chain)[:400]
    hub = any(isinstance(x, ConnectionError) for x in chain) or any(
        word in text for word in ("OfflineModeIsEnabled", "Couldn't reach", "LocalEntryNotFound")
    )
    if hub:
        return QPrunerError(
            f"task {name!r} needs its data from the Hugging Face hub, which cannot be reached here ({text}); "
            "evaluate a local task instead (--task-dir; README 'Zero-shot evaluation')"
        )
    return QPrunerError(f"task {name!r}: cannot load its data: {text}")


def _make_lm(model: nn.Module, tokenizer, batch_size: int, progress: bool):
    """lm-eval's HF wrapper around the live model; progress bars follow ``progress``."""
    from lm_eval.models.huggingface import HFLM

    class _LiveLM(HFLM):
        def loglikelihood(self, requests, disable_tqdm: bool = False):
            return super().loglikelihood(requests, disable_tqdm=disable_tqdm or not progress)

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            return super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm or not progress)

        def generate_until(self, requests, disable_tqdm: bool = False):
            return super().generate_until(requests, disable_tqdm=disable_tqdm or not progress)

    if tokenizer is None:
        raise QPrunerError("zero-shot evaluation needs the model's tokenizer")
    return _LiveLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)


@contextlib.contextmanager
def _quiet(progress: bool) -> Iterator[None]:
    """lm-eval warns on every in-memory model ("pretrained is not a str"); keep its log to
    errors, and without ``progress`` also hide the datasets and request-building bars."""
    import datasets
    import lm_eval.api.task as lm_task

    logger = logging.getLogger("lm_eval")
    level = logger.level
    logger.setLevel(logging.ERROR)
    bars = datasets.utils.logging.is_progress_bar_enabled()
    task_tqdm = lm_task.tqdm
    if not progress:
        datasets.utils.logging.disable_progress_bar()
        lm_task.tqdm = functools.partial(task_tqdm, disable=True)  # lm-eval offers no switch for this bar
    try:
        yield
    finally:
        logger.setLevel(level)
        lm_task.tqdm = task_tqdm
        if bars:
            datasets.utils.logging.enable_progress_bar()


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _scores(results: dict, num_fewshot: int) -> dict[str, TaskScore]:
    """lm-eval's ``{"results": {task: {"acc,none": ..}}}`` as TaskScores, in lm-eval's order."""
    n_samples = results.get("n-samples", {})
    children = results.get("group_subtasks", {})

    def samples(name: str) -> int:
        if name in n_samples:
            return int(n_samples[name]["effective"])
        return sum(samples(c) for c in children.get(name, []))

    out: dict[str, TaskScore] = {}
    for name, row in results["results"].items():
        metrics: dict[str, float] = {}
        for key, value in row.items():
            metric, sep, filt = key.partition(",")
            if sep and _float(value) is not None:
                metrics[metric if filt == "none" else f"{metric}[{filt}]"] = float(value)
        main = ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr")
        out[name] = TaskScore(
            task=name,
            samples=samples(name),
            **{k: metrics.pop(k, None) for k in main},
            num_fewshot=num_fewshot,
            other=metrics,
        )
    return out
