"""``qpruner search``: the search over a pruned checkpoint, from a handful of settings.

Builds the pieces the loop needs — the space from the checkpoint's stored shapes, the
fine-tune evaluator, the searcher (with layer importance computed lazily from calibration
text, only for the searchers that use it and only if the study has none stored) — and runs
:func:`qpruner.search.run.run_search` on the :class:`~qpruner.search.run.SearchRun` they make.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from qpruner.errors import QPrunerError
from qpruner.lora.train import TrainConfig
from qpruner.search import study as st
from qpruner.search.budget import parse_budget, resolve_budget
from qpruner.search.evaluator import Evaluator
from qpruner.search.fidelity import PRUNERS, fidelity_steps
from qpruner.search.recipe import trial_training
from qpruner.search.run import SearchResult, run_search
from qpruner.search.search_run import SearchRun
from qpruner.search.searchers import USES_IMPORTANCE, USES_PRIOR, searcher_class
from qpruner.search.space import SearchSpace
from qpruner.units import parse_duration


@dataclass
class SearchConfig:
    method: str = "qpruner"
    memory_budget: str | int = "6GiB"  # a size, a reference plan (nf4, uniform:4:8) or a share (70%)
    # What the budget limits: "finetune" (the whole step at the trials' batch shape, the papers')
    # or "weights" (the packed base plus adapters a served model holds; space.MEASURES).
    memory_measure: str = "finetune"
    space: str | None = None  # bits | ranks | joint; None: the method's own
    bits: tuple[int, ...] = (4, 8, 16)
    ranks: tuple[int, ...] = (2, 4, 8, 16)
    rank: int = 8  # the base rank: every layer's when ranks are not searched; RankAdaptor's budget
    fixed_bits: int = 4  # every layer's bits when bits are not searched
    trials: int = 40
    seed: int = 0
    storage: str | None = None  # default sqlite:///OUT/study.db
    study_name: str | None = None  # default: the method's name
    heartbeat: int | None = None  # RDB storages: seconds between a running trial's beats
    grace: int | None = None  # seconds without a beat before a trial is failed (default 2 x heartbeat)
    train_data: str | None = None
    eval_data: str | None = None
    calib_data: str | None = None
    metric: str = "ppl"  # or an lm-eval task name (error = 1 - acc)
    task_dir: str | None = None
    task_limit: int | None = None
    train: TrainConfig = field(default_factory=trial_training)  # each trial's fine-tune
    eval_max_tokens: int | None = 20_000
    ctx_len: int | None = 128
    # sensitivity | mi | taylor | random. Measured sensitivity by default: on SmolLM2-135M it ranks
    # layers as held-out quantization damage does (Spearman 0.94 at 2 bits), MI and Taylor do
    # not (-0.14, 0.17: benchmarks/sensitivity_bench.py); mi is the QPruner paper's measure.
    importance: str = "sensitivity"
    # With the importance, every layer's measured quantization sensitivity beside MI and Taylor
    # (qpruner.search.sensitivity; stored in the study, a figure in the report).
    layer_profile: bool = True
    # AutoMixQ measures the layer profile too (a few CPU minutes, once per study) and its
    # performance model may rank plans by the sensitivity's additive prior (space.features).
    # The joint search has it whenever its importance profile does.
    performance_prior: bool = False
    n_calib: int = 16
    calib_len: int = 128
    dtype: str | None = None  # plan dtype; None: bf16 on CUDA, fp32 on CPU
    # Multi-fidelity trials (qpruner.search.fidelity): each scored before training and after
    # train.steps/2^(rungs-1), ..., /2 and all its steps; optuna's successive halving stops weak ones.
    multi_fidelity: bool = True
    time_budget: float | str | None = None  # "90m", "2h", seconds of trial time; None: --trials only
    fidelity_rungs: int = 3  # trained rungs after the 0-step screen: 20 steps -> 0, 5, 10, 20
    screen_tokens: int | None = 4096  # held-out tokens scoring the early rungs
    pruner: str = "halving"  # optuna's successive halving, or "hyperband"
    options: dict = field(default_factory=dict)  # searcher keyword arguments (n_initial, tolerance, ...)


def build_space(model_src: str | Path, cfg: SearchConfig, device: str = "cpu") -> SearchSpace:
    from transformers import AutoConfig

    from qpruner.plan_sources import default_dtype, uniform_plan

    method_space = searcher_class(cfg.method).default_space
    dtype = cfg.dtype or default_dtype(torch.device(device))
    base = uniform_plan(model_src, cfg.fixed_bits, cfg.rank, dtype=dtype)
    config = AutoConfig.from_pretrained(str(model_src))
    return SearchSpace(
        base,
        config,
        tuple(cfg.bits),
        tuple(cfg.ranks),
        cfg.space or method_space,
        cfg.fixed_bits,
        cfg.rank,
        batch=cfg.train.micro_batch,
        seq_len=cfg.train.cutoff_len,
        gradient_checkpointing=cfg.train.gradient_checkpointing,
        accumulation=cfg.train.accumulation,
        measure=cfg.memory_measure,
    )


def importance_source(model_src: str | Path, cfg: SearchConfig, dtype: str, *, device: str):
    """A callable computing per-layer importance on the unquantized pruned model (run at most once)."""
    if cfg.calib_data is None:
        return None

    def compute() -> list[float] | dict:
        from qpruner.checkpoint import load_base_model, load_tokenizer
        from qpruner.device import resolve_dtype
        from qpruner.prune.calibration import calibration_samples
        from qpruner.search.layer_importance import layer_importance, layer_profile
        from qpruner.search.sensitivity import Sensitivity

        tok = load_tokenizer(model_src)
        samples = calibration_samples(cfg.calib_data, tok, cfg.n_calib, cfg.calib_len, seed=cfg.seed)
        model = load_base_model(model_src, dtype=resolve_dtype(dtype, torch.device(device)), device=device)
        if not cfg.layer_profile and not cfg.performance_prior:
            return layer_importance(model, samples, cfg.importance, seed=cfg.seed)
        profile = layer_profile(model, samples, seed=cfg.seed)
        if cfg.importance == "sensitivity":
            scores = Sensitivity.from_dict(profile["sensitivity"]).scores()
        elif cfg.importance in profile:
            scores = profile[cfg.importance]
        else:
            scores = layer_importance(model, samples, cfg.importance, seed=cfg.seed)
        return {"scores": scores, "profile": profile}

    return compute


def search_model(
    model_src: str | Path,
    cfg: SearchConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    device: str = "cpu",
    progress: bool = True,
    evaluator: Evaluator | None = None,
    log: Callable = print,
) -> SearchResult:
    """Search a plan for the pruned checkpoint ``model_src`` under ``cfg.memory_budget``.

    Every setting is checked, the space priced and the evaluator built before ``out_dir`` is
    created: a call that fails leaves no empty directory behind.
    """
    out = Path(out_dir)
    _check_settings(cfg)
    if cfg.storage is None and (out / "study.db").exists() and not resume:
        raise QPrunerError(f"{out} already holds a search; pass --resume to continue it or use a new --out")
    space = build_space(model_src, cfg, device)
    budget = resolve_budget(cfg.memory_budget, space)  # a reference plan is priced on the space
    space.check_budget(budget.bytes, budget.stated())  # before the evaluator loads any data
    if cfg.storage is not None:
        st.make_storage(cfg.storage, cfg.heartbeat, cfg.grace)  # reachable, its driver installed
    options = dict(cfg.options)
    if measures_importance(cfg):
        options.setdefault("importance", importance_source(model_src, cfg, space.base.dtype, device=device))
        options.setdefault("importance_method", cfg.importance)
    if evaluator is None:
        evaluator = _finetune_evaluator(model_src, cfg, device=device, progress=progress)
    out.mkdir(parents=True, exist_ok=True)
    run = SearchRun(
        space=space,
        evaluator=evaluator,
        fidelities=fidelities(cfg),
        pruner_kind=cfg.pruner,
        budget=budget,
        storage=cfg.storage or st.default_storage(out),
        method=cfg.method,
        trials=cfg.trials,
        study_name=cfg.study_name,
        seed=cfg.seed,
        options=options,
        model=str(model_src),
        heartbeat=cfg.heartbeat,
        grace=cfg.grace,
        time_budget=None if cfg.time_budget is None else parse_duration(cfg.time_budget),
    )
    # A storage named with --storage is shared: every worker runs this same command and joins
    # the study (its settings must match); the default one in --out needs --resume.
    return run_search(run, out, resume=resume or cfg.storage is not None, progress=progress, log=log)


def measures_importance(cfg: SearchConfig) -> bool:
    """Importance-led searchers always measure the layer profile; AutoMixQ when its performance
    model is to take the measured sensitivity as its prior."""
    return cfg.method in USES_IMPORTANCE or (cfg.performance_prior and cfg.method in USES_PRIOR)


def fidelities(cfg: SearchConfig) -> tuple[int, ...] | None:
    """The training steps a trial is scored at, or None (scored once, at the end)."""
    if not cfg.multi_fidelity or cfg.train.steps is None:  # an epoch count: steps known only with data
        return None
    return fidelity_steps(cfg.train.steps, cfg.fidelity_rungs)


def _check_settings(cfg: SearchConfig) -> None:
    """What can be checked from the settings alone, before any file is read or made."""
    if cfg.trials < 1:
        raise QPrunerError(f"--trials must be at least 1, got {cfg.trials}")
    searcher_class(cfg.method)  # a known method
    st.check_heartbeat(cfg.heartbeat, cfg.grace)
    parse_budget(cfg.memory_budget)
    fidelities(cfg)
    if cfg.performance_prior and cfg.method not in USES_PRIOR:
        raise QPrunerError(f"--performance-prior is for {', '.join(USES_PRIOR)}, not {cfg.method}")
    if cfg.performance_prior and cfg.calib_data is None:
        raise QPrunerError("--performance-prior measures each layer's sensitivity: pass --calib-data")
    if cfg.pruner not in PRUNERS:
        raise QPrunerError(f"unknown pruner {cfg.pruner!r}: choose from {', '.join(PRUNERS)}")
    if cfg.time_budget is not None:
        parse_duration(cfg.time_budget)


def _finetune_evaluator(
    model_src: str | Path, cfg: SearchConfig, *, device: str, progress: bool
) -> Evaluator:
    from qpruner.search.evaluator import FinetuneEvaluator

    if cfg.train_data is None:
        raise QPrunerError("the search fine-tunes every plan briefly: pass --train-data")
    return FinetuneEvaluator(
        str(model_src),
        str(cfg.train_data),
        cfg.eval_data,
        cfg.train,
        metric_name=cfg.metric,
        task_dir=cfg.task_dir,
        task_limit=cfg.task_limit,
        eval_max_tokens=cfg.eval_max_tokens,
        ctx_len=cfg.ctx_len,
        screen_tokens=cfg.screen_tokens,
        device=device,
        progress=progress,  # each trial's fine-tune shows its own bar under the study's
    )
