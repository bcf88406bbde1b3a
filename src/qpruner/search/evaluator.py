"""Scoring a plan: apply it, fine-tune briefly, measure quality and memory.

A searcher only ever sees :class:`Evaluation` — an *error* to minimise (perplexity, or
1 − accuracy for an lm-eval task) and the measured fine-tuning memory — so tests swap in a
cheap synthetic evaluator and the benchmark the real one. The real one
(:class:`FinetuneEvaluator`) goes through exactly the code ``qpruner finetune`` runs
(:func:`qpruner.lora.recover.train_plan`), so a plan is measured as it will be recovered.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from qpruner.errors import QPrunerError
from qpruner.lora.train import TrainConfig
from qpruner.plan import Plan
from qpruner.search.recipe import trial_training


@dataclass
class Evaluation:
    error: float  # lower is better
    memory: int | None  # measured fine-tuning bytes (None: not measured, the prediction stands)
    metrics: dict = field(default_factory=dict)


class Evaluator(Protocol):
    """What scores a plan. A multi-fidelity search also asks for ``curve(plan, steps)``: an
    :class:`Evaluation` after each number of training steps, the last one the full trial's
    (:meth:`FinetuneEvaluator.curve`)."""

    metric: str  # how the error reads in reports, e.g. "perplexity"

    def __call__(self, plan: Plan) -> Evaluation: ...

    def describe(self) -> dict:
        """JSON-able settings; a study resumed with different ones is refused."""
        ...


@dataclass
class FinetuneEvaluator:
    """Quantize the pruned model per plan, train LoRA for ``train.steps``, score held-out data.

    ``metric`` is ``"ppl"`` (perplexity on ``eval_data``, the default) or an lm-eval task name
    (error = 1 − acc, with ``task_dir`` for local tasks). The tokenizer, training examples and
    evaluation tokens are loaded once; the model is reloaded per trial (it is quantized in
    place) from ``model_src``.
    """

    model_src: str
    train_data: str
    eval_data: str | None = None
    train: TrainConfig = field(default_factory=trial_training)
    metric_name: str = "ppl"
    task_dir: str | None = None
    task_limit: int | None = None
    eval_max_tokens: int | None = 20_000
    ctx_len: int | None = 128
    device: str = "cpu"
    loftq: bool = False
    progress: bool = False
    screen_tokens: int | None = 4096  # held-out tokens scoring a multi-fidelity trial's early points

    def __post_init__(self) -> None:
        from qpruner.checkpoint import load_tokenizer
        from qpruner.lora.data import load_examples

        if self.metric_name == "ppl" and self.eval_data is None:
            raise QPrunerError("the perplexity metric needs evaluation text (--eval-data)")
        if self.metric_name != "ppl":
            from qpruner.eval.zeroshot import check_tasks

            check_tasks([self.metric_name], self.task_dir)
        self._tokenizer = load_tokenizer(self.model_src)
        self._examples = load_examples(
            self.train_data, self._tokenizer, self.train.cutoff_len, self.train.train_on_inputs
        )
        self._eval_ids = None
        if self.metric_name == "ppl":
            from qpruner.data_sources import load_tokens

            self._eval_ids = load_tokens(self.eval_data, self._tokenizer)

    @property
    def metric(self) -> str:
        return "perplexity" if self.metric_name == "ppl" else f"1 - acc ({self.metric_name})"

    def describe(self) -> dict:
        # screen_tokens: part of the run's fidelity settings (SearchRun.identity), not of every study's
        d = {k: v for k, v in asdict(self).items() if k not in ("progress", "device", "screen_tokens")}
        skip = ("save_every", "keep_checkpoints")
        d["train"] = {k: v for k, v in asdict(self.train).items() if k not in skip}
        return d

    def __call__(self, plan: Plan) -> Evaluation:
        return list(self.curve(plan, (None,)))[-1]

    def curve(self, plan: Plan, steps: Sequence[int | None]) -> Iterator[Evaluation]:
        """The trial's one fine-tune, scored after each of ``steps`` training steps (ascending;
        0: the quantized model before any training; None: the end of ``train``).

        The run stops at each point (checkpointed), is scored and goes on from its checkpoint,
        so its last point is exactly what an uninterrupted trial measures; a caller that stops
        iterating (the study pruned the trial) ends the run there. Points before the last are
        scored on ``screen_tokens`` held-out tokens: they only rank plans against each other.
        """
        from qpruner.lora.recover import continue_plan, train_plan

        t0 = time.perf_counter()
        work = Path(tempfile.mkdtemp(prefix="qpruner-trial-"))
        identity = {"plan": plan.to_dict() | {"memory": {}, "metadata": {}}}
        kwargs = {"tokenizer": self._tokenizer, "identity": identity, "progress": self.progress}
        trained = None
        try:
            for i, stop in enumerate(steps):
                if trained is None:
                    trained = train_plan(
                        self.model_src, plan, self._examples, self.train, work,
                        device=self.device, loftq=self.loftq, stop_at=stop, **kwargs,
                    )  # fmt: skip
                else:
                    trained = continue_plan(trained, self._examples, self.train, work, stop_at=stop, **kwargs)
                yield self._evaluation(trained, t0, final=i == len(steps) - 1)
        finally:
            shutil.rmtree(work, ignore_errors=True)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def _evaluation(self, trained, t0: float, *, final: bool) -> Evaluation:
        done = trained.train.resumed_from + len(trained.train.losses)
        metrics: dict = {"steps": done, "train_seconds": time.perf_counter() - t0}
        if not final:
            return Evaluation(float(self._score(trained.model, metrics, screen=True)), None, metrics)
        metrics |= {
            "final_loss": trained.train.losses[-1] if trained.train.losses else None,
            "trainable_params": trained.trainable_params,
            "memory_predicted": trained.predicted.to_dict(),
            "memory_measured": trained.measured.to_dict(),
        }
        error = self._score(trained.model, metrics)
        metrics["seconds"] = time.perf_counter() - t0
        return Evaluation(float(error), int(trained.measured.total), metrics)

    def _score(self, model, metrics: dict, *, screen: bool = False) -> float:
        """The trial's error, measured by the one evaluation path every report uses (``screen``:
        on the first ``screen_tokens`` only)."""
        from qpruner.eval.evaluate import EvalConfig, evaluate_model

        on_text = self._eval_ids is not None
        max_tokens = self.eval_max_tokens
        if screen and self.screen_tokens:
            max_tokens = min(max_tokens or self.screen_tokens, self.screen_tokens)
        cfg = EvalConfig(
            ctx_len=self.ctx_len,
            max_tokens=max_tokens,
            tasks=[] if on_text else [self.metric_name],
            task_dir=self.task_dir,
            limit=self.task_limit,
            progress=False,
        )
        scores = evaluate_model(
            model, self._tokenizer, cfg, tokens={"eval": self._eval_ids} if on_text else None
        )
        if on_text:
            metrics["ppl"] = scores.ppl["eval"].ppl
            return metrics["ppl"]
        score = scores.zeroshot[self.metric_name]
        if score.acc is None:
            raise QPrunerError(f"task {self.metric_name} has no acc; choose a multiple-choice task")
        metrics["acc"], metrics["acc_norm"] = score.acc, score.acc_norm
        return 1.0 - score.acc
