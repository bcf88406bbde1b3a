"""``qpruner plan``: write a uniform plan for a model and price its fine-tuning memory.

Also the plan flags ``finetune`` and ``run`` share (``--plan``, or a uniform plan from
``--bits``/``--format``/``--rank``/``--alpha``), whose defaults are :class:`PlanSource`'s.
"""

from __future__ import annotations

import argparse

from qpruner.cli.flags import add_config_flags, config_from_args, read_config
from qpruner.preflight import Checks

PLAN_SOURCE = "qpruner.plan_sources:PlanSource"
TRAIN_CONFIG = "qpruner.lora.train:TrainConfig"
CHECKS = Checks(models=("model",), inputs=("plan",), out_files=("out",))


def add_plan_flags(p: argparse.ArgumentParser) -> None:
    d = read_config(PLAN_SOURCE)
    p.add_argument("--plan", help="plan JSON (per-layer formats and LoRA ranks); overrides --bits/--rank")
    p.add_argument(
        "--bits",
        type=int,
        default=d["bits"].default,
        help="uniform plan: every layer's width: 2, 3, 4 (NF4), 8 (int8) or 16 (no quantization)",
    )
    p.add_argument(
        "--format", dest="weight_format", help="uniform plan: exact format (nf4, fp4, int8, hqq3, ...)"
    )
    p.add_argument("--rank", type=int, default=d["rank"].default, help="uniform plan: LoRA rank")
    p.add_argument("--alpha", type=float, help="uniform plan: LoRA alpha (default 2 x rank)")


def plan_source(args: argparse.Namespace, search=None):
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


def plan_table(plan) -> str:
    rows = [f"{'layer':>5}  {'pruned':>7}  {'format':>7}  {'bits':>5}  {'rank':>5}  {'alpha':>6}"]
    for i, lp in enumerate(plan.layers):
        pr = "" if lp.prune_ratio is None else f"{100 * lp.prune_ratio:.1f}%"
        fmt = lp.weight_format + ("*" if lp.module_formats else "")
        rank = f"{lp.lora_rank}" + ("*" if lp.module_ranks else "")
        rows.append(
            f"{i:>5}  {pr:>7}  {fmt:>7}  {plan.bits_per_layer()[i]:>5.1f}  {rank:>5}  {lp.lora_alpha:>6g}"
        )
    return "\n".join(rows) + ("\n(* per-module overrides)" if any("*" in r for r in rows) else "")


def add_parser(sub) -> None:
    p = sub.add_parser("plan", help="write a uniform plan for a model and price its fine-tuning memory")
    p.add_argument("--model", required=True, help="pruned model directory (or any LLaMA-layout model)")
    add_plan_flags(p)
    p.add_argument(
        "--dtype", default="auto", help="unquantized dtype: auto (bf16 on CUDA, else fp32), bf16, fp32"
    )
    add_config_flags(p, TRAIN_CONFIG, only=("micro_batch", "cutoff_len", "gradient_checkpointing"))
    p.add_argument("--out", help="write the plan JSON here")


def run(args: argparse.Namespace) -> None:
    from qpruner.device import resolve_device
    from qpruner.lora.train import TrainConfig
    from qpruner.memory import estimate, format_memory_table
    from qpruner.plan_sources import model_config

    train = config_from_args(TrainConfig, args)
    plan = plan_source(args).load(args.model, resolve_device("auto"))
    config = model_config(args.model)
    predicted = estimate(config, plan, train.micro_batch, train.cutoff_len, train.gradient_checkpointing,
                         accumulation=train.accumulation)  # fmt: skip
    plan.memory = {"predicted": predicted.to_dict(), "batch": train.micro_batch, "seq_len": train.cutoff_len}
    print(plan_table(plan))
    print(format_memory_table(predicted))
    if args.out:
        print(f"plan written to {plan.save(args.out)}")
