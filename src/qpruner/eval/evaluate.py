"""One way to score a model: size, perplexity on each text source, lm-eval accuracy on each task.

``qpruner eval``, the pipeline's stages, the search's trials and the benchmarks all call
:func:`evaluate_model`, so a number in any report was measured the same way as the others.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from qpruner.architecture import model_device
from qpruner.compute import autocast, prepared
from qpruner.data_sources import load_tokens
from qpruner.device import resolve_compute_dtype
from qpruner.eval.perplexity import PerplexityResult, perplexity
from qpruner.eval.size import ModelSize, model_size, shape_table
from qpruner.eval.zeroshot import TaskScore, check_tasks, zero_shot


@dataclass
class EvalConfig:
    """What to measure and how. Perplexity windows are ``ctx_len`` tokens every ``stride``
    (defaults: the model's context, at most 2048, non-overlapping); ``max_tokens`` scores only
    the first N tokens of each source; ``limit`` scores a fixed sample of N items per task."""

    ppl_sources: list[str] = field(
        default_factory=list,
        metadata={
            "help": "perplexity text: a file, a saved dataset dir or hf:ID[:CONFIG][@SPLIT] (repeatable)",
            "flag": "--ppl",
            "repeat": True,
        },
    )
    ctx_len: int | None = field(
        default=None, metadata={"help": "perplexity window (default: the model's context, at most 2048)"}
    )
    stride: int | None = field(
        default=None, metadata={"help": "perplexity window step (default: --ctx-len, non-overlapping)"}
    )
    batch_size: int = field(
        default=8, metadata={"help": "windows or task requests per forward pass", "flag": "--eval-batch-size"}
    )
    max_tokens: int | None = field(
        default=None, metadata={"help": "score only the first N tokens of each text"}
    )
    tasks: list[str] = field(
        default_factory=list,
        metadata={"help": "lm-eval tasks, e.g. wikitext_cloze (shipped) or qp_piqa (with --task-data)"},
    )
    task_dir: str | None = field(
        default=None, metadata={"help": "folder of extra lm-eval task YAMLs (data paths relative to each)"}
    )
    task_data: str | None = field(
        default=None, metadata={"help": "folder of the shipped qp_* tasks' JSONL files"}
    )
    limit: int | None = field(
        default=None, metadata={"help": "score a fixed random sample of N items per task (quick checks)"}
    )
    num_fewshot: int = field(default=0, metadata={"help": "in-context examples per question"})
    compute_dtype: str = field(
        default="auto",
        metadata={
            "help": "matmul dtype: auto (bf16 on CUDA and AVX512-BF16/AMX CPUs, else fp32), fp32, bf16",
            "flag": "--eval-compute-dtype",
        },
    )
    progress: bool = True

    def check(self) -> list[str]:
        """Fail early: task names and data are checked before a large model is loaded."""
        return check_tasks(list(self.tasks), self.task_dir, task_data=self.task_data) if self.tasks else []


@dataclass
class ModelScores:
    size: ModelSize
    shape_table: str
    ppl: dict[str, PerplexityResult] = field(default_factory=dict)
    zeroshot: dict[str, TaskScore] = field(default_factory=dict)  # acc and acc_norm per task
    model: str | None = None

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "size": self.size.to_dict(),
            "ppl": {k: asdict(v) for k, v in self.ppl.items()},
            "zeroshot": {k: v.to_dict() for k, v in self.zeroshot.items()},
        }

    def summary(self) -> dict:
        """Flat figures for run and benchmark tables: the first source's perplexity, size, tasks."""
        out: dict = {"params": self.size.params, "weight_bytes": self.size.weight_bytes}
        if self.ppl:
            first = next(iter(self.ppl.values()))
            out.update(ppl=first.ppl, ctx_len=first.ctx_len, tokens=first.tokens)
        if self.zeroshot:
            out["zero_shot"] = {k: v.to_dict() for k, v in self.zeroshot.items()}
        return out


def evaluate_model(
    model: nn.Module, tokenizer, cfg: EvalConfig, *, tokens: dict[str, torch.Tensor] | None = None
) -> ModelScores:
    """Score ``model`` as ``cfg`` says; ``tokens`` supplies already tokenized sources by name
    (a search scores the same text every trial and tokenizes it once)."""
    scores = ModelScores(model_size(model), shape_table(model))
    sources: dict[str, torch.Tensor | str] = {s: s for s in cfg.ppl_sources} | dict(tokens or {})
    for name, src in sources.items():
        ids = load_tokens(src, tokenizer) if isinstance(src, str | Path) else src
        scores.ppl[str(name)] = perplexity(
            model,
            ids,
            ctx_len=cfg.ctx_len,
            stride=cfg.stride,
            batch_size=cfg.batch_size,
            max_tokens=cfg.max_tokens,
            progress=cfg.progress,
            compute_dtype=cfg.compute_dtype,
        )
    if cfg.tasks:
        device = model_device(model)
        compute = resolve_compute_dtype(cfg.compute_dtype, device)
        with prepared(model, compute, device), autocast(compute, device):  # as perplexity computes
            scores.zeroshot = zero_shot(
                model,
                tokenizer,
                cfg.tasks,
                task_dir=cfg.task_dir,
                limit=cfg.limit,
                batch_size=cfg.batch_size,
                num_fewshot=cfg.num_fewshot,
                progress=cfg.progress,
                **({"task_data": cfg.task_data} if cfg.task_data else {}),
            )
    return scores
