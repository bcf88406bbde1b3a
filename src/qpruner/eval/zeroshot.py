"""Zero-shot accuracy through lm-evaluation-harness, on the model object already in memory.

LLM-Pruner reports BoolQ, PIQA, HellaSwag, WinoGrande, ARC-e/c and OBQA through lm-eval. We
hand lm-eval the live ``nn.Module`` (``HFLM(pretrained=model)``) rather than a path, so a
pruned, quantized or PEFT-wrapped model is scored exactly as it sits in memory; nothing is
reloaded or merged.

Both ``acc`` (sum of the answer's token log-likelihoods) and ``acc_norm`` (the same divided
by the answer's length in characters, as lm-eval 0.4.13 computes it) are always reported side
by side where the task defines them: papers in this line of
work mix the two per task, and comparing one model's ``acc`` with another's ``acc_norm``
is a silent error.

Tasks are lm-eval task YAMLs. Besides lm-eval's own (whose data comes from the Hugging Face
hub), every call sees the tasks shipped in ``qpruner/eval/tasks`` and those in ``task_dir``
(see :mod:`qpruner.eval.task_index` for where their data is read). The shipped ``qp_*`` tasks
are the papers' benchmarks with lm-eval's prompts over local JSONL files in ``task_data``.

``limit=N`` scores a fixed random sample of N items per task, drawn from ``seed`` and the
task's name only: every model evaluated with the same arguments sees the same items, and the
sample is spread over the whole set rather than its first N (which are often sorted).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qpruner.architecture import model_device
from qpruner.errors import QPrunerError
from qpruner.eval.task_index import BUILTIN_TASK_DIR, load_tasks, local_dirs, task_data_dir, task_manager

__all__ = ["BUILTIN_TASK_DIR", "TaskScore", "check_tasks", "format_scores", "sample_indices", "zero_shot"]

SAMPLE_SEED = 1234  # default seed of the limit=N item sample
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
    *,
    task_data: str | Path | None = None,
    seed: int = SAMPLE_SEED,
) -> dict[str, TaskScore]:
    """Score ``model`` on lm-eval ``tasks``; returns one :class:`TaskScore` per task (and group).

    ``task_data`` is the folder of the benchmark JSONL files the shipped ``qp_*`` tasks read.
    ``limit`` scores a seeded random sample of N items per task (:func:`sample_indices`); the
    standard errors are then those of the sample. The model's train/eval mode is restored.
    """
    names, local, data = _names(tasks), local_dirs(task_dir), task_data_dir(task_data)
    if limit is not None and limit < 1:
        raise QPrunerError(f"limit must be a positive number of documents, got {limit}")
    if batch_size < 1 or num_fewshot < 0:
        raise QPrunerError(f"need batch_size >= 1 and num_fewshot >= 0, got {batch_size}, {num_fewshot}")

    from lm_eval import evaluator

    was_training = model.training
    try:
        with _quiet(progress):
            loaded = load_tasks(task_manager(names, local, data), names)
            samples = {}
            for name, task in loaded["tasks"].items():
                task.set_config(key="num_fewshot", value=num_fewshot)
                task.set_fewshot_seed(seed=FEWSHOT_SEED)
                if limit is not None and limit < len(task.eval_docs):
                    samples[name] = sample_indices(len(task.eval_docs), limit, seed=seed, task=name)
            results = evaluator.evaluate(
                lm=_make_lm(model, tokenizer, batch_size, progress),
                task_dict=loaded,
                samples=samples or None,
                bootstrap_iters=BOOTSTRAP_ITERS,
                log_samples=False,
            )
    finally:
        model.train(was_training)
    return _scores(results, num_fewshot)


def check_tasks(
    tasks: list[str], task_dir: str | Path | None = None, *, task_data: str | Path | None = None
) -> list[str]:
    """Fail early: check the names and read each task's data before a large model is loaded.

    Data read here is cached by ``datasets``, so the later :func:`zero_shot` reads it again cheaply.
    """
    names, local, data = _names(tasks), local_dirs(task_dir), task_data_dir(task_data)
    with _quiet(progress=False):
        load_tasks(task_manager(names, local, data), names)
    return names


def sample_indices(n_items: int, limit: int, *, seed: int = SAMPLE_SEED, task: str = "") -> list[int]:
    """The ``limit`` item indices (sorted, as lm-eval requires) scored out of ``n_items``.

    Depends only on the numbers, ``seed`` and the task's name, so it is the same for every
    model and independent of which other tasks run alongside.
    """
    if limit >= n_items:
        return list(range(n_items))
    return sorted(random.Random(f"{seed}/{task}").sample(range(n_items), limit))


def format_scores(scores: dict[str, TaskScore]) -> str:
    """Plain-text table: acc and acc_norm side by side, in percent, with their stderr; any other
    metric (LAMBADA's perplexity) after them."""

    def cell(value: float | None, stderr: float | None, scale: float = 100.0, fmt: str = "6.2f") -> str:
        if value is None:
            return "n/a"
        return f"{scale * value:{fmt}}" + (f" ± {scale * stderr:{fmt}}" if stderr is not None else "")

    width = max([4, *(len(name) for name in scores)])
    rows = [f"{'task':<{width}}  {'n':>6}  {'shots':>5}  {'acc %':>15}  {'acc_norm %':>15}"]
    for name, s in scores.items():
        row = (
            f"{name:<{width}}  {s.samples:>6}  {s.num_fewshot:>5}  {cell(s.acc, s.acc_stderr):>15}  "
            f"{cell(s.acc_norm, s.acc_norm_stderr):>15}"
        )
        extra = [
            f"{key} {cell(value, s.other.get(f'{key}_stderr'), 1.0, '.3f')}"
            for key, value in s.other.items()
            if not key.endswith("_stderr") and "_stderr[" not in key
        ]
        rows.append(row + ("  " + "; ".join(extra) if extra else ""))
    rows.append("acc: answer log-likelihood; acc_norm: log-likelihood per character of the answer (lm-eval)")
    return "\n".join(rows)


def _names(tasks: list[str]) -> list[str]:
    names = [t.strip() for t in tasks if t and t.strip()]
    if not names:
        raise QPrunerError("no zero-shot tasks given")
    return names


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
    # lm-eval wraps every forward in torch.autocast(enabled=mixed_precision_dtype is not None):
    # left at None it would switch off the caller's autocast (evaluate_model's bf16 compute).
    kind = model_device(model).type
    mixed = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else None
    return _LiveLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, mixed_precision_dtype=mixed)


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
