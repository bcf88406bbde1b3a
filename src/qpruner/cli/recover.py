"""Command line for stages 2-3 and the pipeline: ``plan``, ``finetune``, ``run``."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_run_parser(sub) -> None:
    from qpruner.cli import _names  # called from qpruner.cli.build_parser: the package is loaded
    from qpruner.prune.config import IMPORTANCE_METHODS

    r = sub.add_parser(
        "run", help="prune -> quantize + recover -> evaluate, resumable (reference model by default)"
    )
    r.add_argument("--model", help="model dir or hub id (default: the reference model, built on first use)")
    r.add_argument("--out", required=True, help="run directory: pruned/, recovered/, run.json")
    r.add_argument("--ratio", type=float, default=0.2, help="pruning ratio (heads and channels per layer)")
    r.add_argument("--importance", choices=IMPORTANCE_METHODS, default="taylor")
    r.add_argument("--layer-start", type=int, default=3)
    r.add_argument("--layer-end", type=int, default=-2)
    _add_plan_source(r)
    r.add_argument("--loftq", action="store_true")
    r.add_argument("--steps", type=int, default=100, help="recovery optimizer steps")
    r.add_argument("--batch-size", type=int, default=16)
    r.add_argument("--micro-batch", type=int, default=4)
    r.add_argument("--lr", type=float, default=1e-4)
    r.add_argument("--cutoff-len", type=int, default=256)
    r.add_argument("--calib-data", help="calibration text (default: the corpus' training text)")
    r.add_argument(
        "--train-data", help="recovery data, Alpaca JSON or text (default: the corpus' training text)"
    )
    r.add_argument("--eval-data", help="perplexity text (default: the corpus' test text)")
    r.add_argument("--eval-max-tokens", type=int, default=100_000)
    r.add_argument("--ctx-len", type=int, help="perplexity window (default: model context, at most 2048)")
    r.add_argument(
        "--tasks", type=_names, default=[], help="comma-separated lm-eval tasks to score at every stage"
    )
    r.add_argument("--task-dir", help="folder of local lm-eval task YAMLs")
    r.add_argument("--limit", type=int, help="score at most N examples per task")
    r.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    r.add_argument("--device", default="auto")
    r.add_argument("--no-progress", action="store_true")
    from qpruner.cli.search import add_search_options

    add_search_options(r, in_run=True)


def _add_plan_source(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plan", help="plan JSON (per-layer formats and LoRA ranks); overrides --bits/--rank")
    p.add_argument(
        "--bits", type=int, default=4, help="uniform plan: 2, 3, 4 (NF4), 8 (int8) or 16 (no quant)"
    )
    p.add_argument(
        "--format", dest="weight_format", help="uniform plan: exact format (nf4, fp4, int8, hqq3, ...)"
    )
    p.add_argument("--rank", type=int, default=8, help="uniform plan: LoRA rank (default 8)")
    p.add_argument("--alpha", type=float, help="uniform plan: LoRA alpha (default 2 x rank)")


def add_recover_parsers(sub) -> None:
    from qpruner.lora.train import TrainConfig

    t = TrainConfig()
    p = sub.add_parser("plan", help="write a uniform plan for a model and price its fine-tuning memory")
    p.add_argument("--model", required=True, help="pruned model directory (or any LLaMA-layout model)")
    _add_plan_source(p)
    p.add_argument(
        "--dtype", default="auto", help="unquantized dtype: auto (bf16 on CUDA, else fp32), bf16, fp32"
    )
    p.add_argument("--micro-batch", type=int, default=t.micro_batch)
    p.add_argument("--cutoff-len", type=int, default=t.cutoff_len)
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--out", help="write the plan JSON here")

    f = sub.add_parser("finetune", help="quantize per a plan and recover with LoRA (per-layer ranks)")
    f.add_argument("--model", required=True, help="pruned model directory (or any LLaMA-layout model)")
    f.add_argument("--data", required=True, help="Alpaca .json/.jsonl, or a plain text file")
    f.add_argument("--out", required=True, help="output: adapter/, plan.json, merged/, checkpoints/")
    _add_plan_source(f)
    f.add_argument(
        "--loftq", action="store_true", help="LoftQ init: LoRA starts at the quantization error's SVD"
    )
    f.add_argument("--epochs", type=float, default=t.epochs)
    f.add_argument("--steps", type=int, help="optimizer steps (overrides --epochs)")
    f.add_argument("--batch-size", type=int, default=t.batch_size, help="examples per optimizer step")
    f.add_argument("--micro-batch", type=int, default=t.micro_batch, help="examples per forward/backward")
    f.add_argument("--lr", type=float, default=t.lr)
    f.add_argument("--warmup-steps", type=int, default=t.warmup_steps)
    f.add_argument("--cutoff-len", type=int, default=t.cutoff_len, help="tokens per example")
    f.add_argument("--train-on-outputs-only", action="store_true", help="no loss on Alpaca prompts")
    f.add_argument("--gradient-checkpointing", action="store_true")
    f.add_argument("--save-every", type=int, default=t.save_every, help="checkpoint every N steps")
    f.add_argument("--seed", type=int, default=t.seed)
    f.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    f.add_argument("--overwrite", action="store_true", help="discard an existing --out")
    f.add_argument("--no-export", action="store_true", help="skip the merged (dequantized) export")
    f.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, ...")
    f.add_argument(
        "--dtype", default="auto", help="uniform plan: unquantized dtype (auto: bf16 on CUDA, else fp32)"
    )
    f.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _plan_source(args: argparse.Namespace, search=None):
    """The plan the flags ask for: searched (``--memory-budget``), a file, or uniform."""
    from qpruner.plan_sources import PlanSource

    if search is not None:
        return PlanSource(kind="searched", search=search)
    if args.plan:
        return PlanSource.from_file(args.plan)
    dtype = getattr(args, "dtype", "auto")
    return PlanSource(
        bits=args.bits,
        weight_format=args.weight_format,
        rank=args.rank,
        alpha=args.alpha,
        dtype=None if dtype == "auto" else dtype,
    )


def _cmd_plan(args: argparse.Namespace) -> None:
    from qpruner.device import resolve_device
    from qpruner.memory import estimate, format_memory_table
    from qpruner.plan_sources import model_config

    plan = _plan_source(args).load(args.model, resolve_device("auto"))
    config = model_config(args.model)
    predicted = estimate(config, plan, args.micro_batch, args.cutoff_len, args.gradient_checkpointing)
    plan.memory = {"predicted": predicted.to_dict(), "batch": args.micro_batch, "seq_len": args.cutoff_len}
    print(_plan_table(plan))
    print(format_memory_table(predicted))
    if args.out:
        print(f"plan written to {plan.save(args.out)}")


def _plan_table(plan) -> str:
    rows = [f"{'layer':>5}  {'pruned':>7}  {'format':>7}  {'bits':>5}  {'rank':>5}  {'alpha':>6}"]
    for i, lp in enumerate(plan.layers):
        pr = "" if lp.prune_ratio is None else f"{100 * lp.prune_ratio:.1f}%"
        fmt = lp.weight_format + ("*" if lp.module_formats else "")
        rank = f"{lp.lora_rank}" + ("*" if lp.module_ranks else "")
        rows.append(
            f"{i:>5}  {pr:>7}  {fmt:>7}  {plan.bits_per_layer()[i]:>5.1f}  {rank:>5}  {lp.lora_alpha:>6g}"
        )
    return "\n".join(rows) + ("\n(* per-module overrides)" if any("*" in r for r in rows) else "")


def _train_config(args: argparse.Namespace, **fixed):
    """Every ``TrainConfig`` field that has a flag of the same name comes from that flag."""
    from dataclasses import fields

    from qpruner.lora.train import TrainConfig

    flags = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
    return TrainConfig(**{**flags, **fixed})


def _cmd_finetune(args: argparse.Namespace) -> None:
    from qpruner.device import resolve_device
    from qpruner.lora.recover import finetune

    device = resolve_device(args.device)
    config = _train_config(args, train_on_inputs=not args.train_on_outputs_only)
    res = finetune(
        args.model,
        args.data,
        args.out,
        plan=_plan_source(args),
        train_config=config,
        loftq=args.loftq,
        resume=args.resume,
        overwrite=args.overwrite,
        device=device,
        export=not args.no_export,
        progress=not args.no_progress,
    )
    t = res.train
    if t.resumed_from:
        print(f"resumed from step {t.resumed_from}")
    first = f"{t.losses[0]:.4f} -> " if len(t.losses) > 1 else ""
    print(f"trained {t.steps} steps: loss {first}{t.losses[-1]:.4f}" if t.losses else "nothing left to train")
    print(f"trainable params: {res.trainable_params:,}   {t.tokens_per_second:.0f} tok/s")
    print(_plan_table(res.plan))
    print(res.memory_table())
    print(f"saved to {res.out_dir} (adapter/, plan.json{'' if args.no_export else ', merged/'})")


def _cmd_run(args: argparse.Namespace) -> None:
    from qpruner.cli.search import search_config
    from qpruner.device import resolve_device
    from qpruner.eval.evaluate import EvalConfig
    from qpruner.pipeline import RunConfig, run_pipeline
    from qpruner.prune.config import PruneConfig

    cfg = RunConfig(
        model=args.model,
        prune=PruneConfig(
            ratio=args.ratio,
            importance=args.importance,
            layer_start=args.layer_start,
            layer_end=args.layer_end,
        ),
        train=_train_config(args, warmup_steps=max(1, args.steps // 10), save_every=max(1, args.steps // 4)),
        plan=_plan_source(args, search_config(args) if args.memory_budget else None),
        loftq=args.loftq,
        calib_data=args.calib_data,
        train_data=args.train_data,
        eval_data=args.eval_data,
        eval=EvalConfig(
            max_tokens=args.eval_max_tokens,
            ctx_len=args.ctx_len,
            tasks=args.tasks,
            task_dir=args.task_dir,
            limit=args.limit,
        ),
    )
    res = run_pipeline(
        cfg, args.out, resume=args.resume, device=resolve_device(args.device), progress=not args.no_progress
    )
    tasks = cfg.eval.tasks
    head = f"{'stage':<10} {'params':>12} {'weight MiB':>10} {'ppl':>9}"
    rows = [head + "".join(f"  {t + ' acc/acc_norm %':>28}" for t in tasks)]
    for stage in ("dense", "prune", "recover"):
        st = res.stages.get(stage)
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
    print("\n".join(rows))
    print(f"run summary: {Path(args.out) / 'run.json'}")


RECOVER_COMMANDS = {"plan": _cmd_plan, "finetune": _cmd_finetune, "run": _cmd_run}
