"""``qpruner run``: prune -> [search] -> quantize + recover -> evaluate, resumable.

Flag defaults are :class:`~qpruner.pipeline.RunConfig`'s: its pruning config, and the
training and evaluation configs it embeds with shorter defaults (100 steps, batch 16).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from qpruner.cli.common import add_runtime_flags
from qpruner.cli.flags import add_config_flags, config_from_args, factory_defaults
from qpruner.cli.plan import TRAIN_CONFIG, add_plan_flags, plan_source
from qpruner.preflight import Checks

RUN_CONFIG = "qpruner.pipeline:RunConfig"
PRUNE_CONFIG = "qpruner.prune.config:PruneConfig"
EVAL_CONFIG = "qpruner.eval.evaluate:EvalConfig"
RECIPE_FLAGS = ("steps", "batch_size", "micro_batch", "lr", "cutoff_len")
_CPU = factory_defaults(RUN_CONFIG, "train")
RECIPES = (
    f"Recovery by device, unless set by flags: CPU --steps {_CPU['steps']} --batch-size "
    f"{_CPU['batch_size']} --micro-batch {_CPU['micro_batch']} --lr {_CPU['lr']} --cutoff-len 256 "
    "(the default run in 30 minutes on 2 cores); GPU alpaca-lora's recipe: 2 epochs, --batch-size "
    "128 --micro-batch 4 --lr 1e-4 --cutoff-len 256."
)
CHECKS = Checks(
    models=("model",), inputs=("calib_data", "train_data", "eval_data", "plan", "task_dir"), out_dir="out"
)


def add_parser(sub) -> None:
    r = sub.add_parser(
        "run",
        help="prune -> quantize + recover -> evaluate, resumable (SmolLM2-135M by default)",
        epilog=RECIPES,
    )
    r.add_argument(
        "--model",
        help="model dir, hub id, catalog name or .gguf (default: smollm2-135m, fetched on first use, "
        "else the reference model); 'reference': the project's reference model",
    )
    r.add_argument("--out", required=True, help="run directory: pruned/, recovered/, run.json")
    add_config_flags(r, PRUNE_CONFIG, only=("ratio", "importance", "layer_start", "layer_end"))
    add_plan_flags(r)
    r.add_argument(
        "--loftq", action="store_true", help="LoftQ init: LoRA starts at the quantization error's SVD"
    )
    add_config_flags(
        r,
        TRAIN_CONFIG,
        only=RECIPE_FLAGS,
        defaults=dict.fromkeys(RECIPE_FLAGS),  # None: the device's recipe (epilog)
    )
    r.add_argument("--calib-data", help="calibration text (default: the corpus' training text)")
    r.add_argument(
        "--train-data",
        help="recovery data: Alpaca JSON, text, a saved dataset or hf:ID[:CONFIG][@SPLIT] (LLM-Pruner's: "
        "hf:yahma/alpaca-cleaned@train; default: the corpus' training text)",
    )
    r.add_argument("--eval-data", help="perplexity text (default: the corpus' test text)")
    add_config_flags(
        r,
        EVAL_CONFIG,
        only=("max_tokens", "ctx_len", "tasks", "task_dir", "limit"),
        defaults=factory_defaults(RUN_CONFIG, "eval"),
        rename={"max_tokens": "--eval-max-tokens"},
    )
    r.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    add_runtime_flags(r, dtype_help=None)
    from qpruner.cli.search import add_search_options

    add_search_options(r, in_run=True)


def run(args: argparse.Namespace) -> None:
    from qpruner.cli.search import search_config
    from qpruner.device import resolve_device
    from qpruner.eval.evaluate import EvalConfig
    from qpruner.pipeline import REFERENCE, RunConfig, run_pipeline
    from qpruner.prune.config import PruneConfig

    device = resolve_device(args.device)
    cfg = RunConfig(
        model=args.model,
        prune=config_from_args(PruneConfig, args),
        train=recovery_config(args, device),
        plan=plan_source(args, search_config(args) if args.memory_budget else None),
        loftq=args.loftq,
        calib_data=args.calib_data,
        train_data=args.train_data,
        eval_data=args.eval_data,
        eval=config_from_args(EvalConfig, args),
    )
    if args.model == REFERENCE:
        from qpruner.cli.reference import announce_build

        announce_build()
    res = run_pipeline(cfg, args.out, resume=args.resume, device=device, progress=not args.no_progress)
    print(_stage_table(res.stages, res.settings["eval"]["tasks"]))
    print(f"run summary: {Path(args.out) / 'run.json'}")


def recovery_config(args: argparse.Namespace, device):
    """The device's recovery recipe (:func:`qpruner.pipeline.train_recipe`) with the flags given."""
    from qpruner.pipeline import short_run, train_recipe

    given = {k: getattr(args, k) for k in RECIPE_FLAGS if getattr(args, k) is not None}
    return short_run(replace(train_recipe(device), **given))


def _stage_table(stages: dict, tasks: list[str]) -> str:
    head = f"{'stage':<10} {'params':>12} {'weight MiB':>10} {'ppl':>9}"
    rows = [head + "".join(f"  {t + ' acc/acc_norm %':>28}" for t in tasks)]
    for stage in ("dense", "prune", "recover"):
        st = stages.get(stage)
        if not st:
            continue
        row = f"{stage:<10} {st['params']:>12,} {st['weight_bytes'] / 2**20:>10.2f} {st['ppl']:>9.2f}"
        for t in tasks:
            z = st.get("zero_shot", {}).get(t, {})
            acc, norm = z.get("acc"), z.get("acc_norm")
            cell = (
                f"{100 * acc:.1f} / " + ("n/a" if norm is None else f"{100 * norm:.1f}")
                if acc is not None
                else ""
            )
            row += f"  {cell:>28}"
        rows.append(row)
    return "\n".join(rows)
