"""``qpruner eval``: size, shapes, perplexity and zero-shot accuracy of a model in one report."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from qpruner.checkpoint import load_model, load_tokenizer
from qpruner.eval.perplexity import PerplexityResult, load_eval_tokens, perplexity
from qpruner.eval.size import ModelSize, model_size, shape_table
from qpruner.eval.zeroshot import TaskScore, check_tasks, zero_shot


@dataclass
class EvalReport:
    model: str
    size: ModelSize
    shape_table: str
    ppl: dict[str, PerplexityResult] = field(default_factory=dict)
    zeroshot: dict[str, TaskScore] = field(default_factory=dict)  # acc and acc_norm per task

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "size": self.size.to_dict(),
            "ppl": {k: asdict(v) for k, v in self.ppl.items()},
            "zeroshot": {k: v.to_dict() for k, v in self.zeroshot.items()},
        }


def evaluate(
    model_src: str | Path,
    ppl_sources: list[str] = (),
    ctx_len: int | None = None,
    stride: int | None = None,
    batch_size: int = 4,
    max_tokens: int | None = None,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    tasks: list[str] = (),
    task_dir: str | Path | None = None,
    limit: int | None = None,
    num_fewshot: int = 0,
) -> EvalReport:
    """Load ``model_src`` once and report size, shapes, perplexity on each source and
    lm-eval accuracy on each task (see :func:`qpruner.eval.zeroshot.zero_shot`)."""
    if tasks:
        tasks = check_tasks(list(tasks), task_dir)  # a typo fails before a large model is loaded
    model = load_model(model_src, dtype=dtype, device=device)
    report = EvalReport(str(model_src), model_size(model), shape_table(model))
    if ppl_sources or tasks:
        tokenizer = load_tokenizer(model_src)
        for src in ppl_sources:
            ids = load_eval_tokens(src, tokenizer)
            report.ppl[src] = perplexity(model, ids, ctx_len, stride, batch_size, max_tokens, progress)
        if tasks:
            report.zeroshot = zero_shot(
                model, tokenizer, tasks, task_dir, limit, batch_size, num_fewshot, progress
            )
    return report
