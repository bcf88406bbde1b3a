"""``qpruner finetune``: quantize per a plan and recover with LoRA (per-layer ranks)."""

from __future__ import annotations

import argparse

from qpruner.cli.common import add_runtime_flags
from qpruner.cli.flags import add_config_flags, config_from_args
from qpruner.cli.plan import TRAIN_CONFIG, add_plan_flags, plan_source, plan_table
from qpruner.preflight import Checks

CHECKS = Checks(models=("model",), inputs=("data", "plan"), out_dir="out")


def add_parser(sub) -> None:
    f = sub.add_parser("finetune", help="quantize per a plan and recover with LoRA (per-layer ranks)")
    f.add_argument("--model", required=True, help="pruned model directory (or any LLaMA-layout model)")
    f.add_argument("--data", required=True, help="Alpaca .json/.jsonl, or a plain text file")
    f.add_argument("--out", required=True, help="output: adapter/, plan.json, merged/, checkpoints/")
    add_plan_flags(f)
    f.add_argument(
        "--loftq", action="store_true", help="LoftQ init: LoRA starts at the quantization error's SVD"
    )
    add_config_flags(f, TRAIN_CONFIG, exclude=("train_on_inputs",))
    f.add_argument("--train-on-outputs-only", action="store_true", help="no loss on Alpaca prompts")
    f.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    f.add_argument("--overwrite", action="store_true", help="discard an existing --out")
    f.add_argument("--no-export", action="store_true", help="skip the merged (dequantized) export")
    add_runtime_flags(f, dtype_help="uniform plan: unquantized dtype (auto: bf16 on CUDA, else fp32)")


def run(args: argparse.Namespace) -> None:
    from qpruner.device import resolve_device
    from qpruner.lora.recover import finetune
    from qpruner.lora.train import TrainConfig

    config = config_from_args(TrainConfig, args, train_on_inputs=not args.train_on_outputs_only)
    res = finetune(
        args.model,
        args.data,
        args.out,
        plan=plan_source(args),
        train_config=config,
        loftq=args.loftq,
        resume=args.resume,
        overwrite=args.overwrite,
        device=resolve_device(args.device),
        export=not args.no_export,
        progress=not args.no_progress,
    )
    t = res.train
    if t.resumed_from:
        print(f"resumed from step {t.resumed_from}")
    first = f"{t.losses[0]:.4f} -> " if len(t.losses) > 1 else ""
    print(f"trained {t.steps} steps: loss {first}{t.losses[-1]:.4f}" if t.losses else "nothing left to train")
    print(f"trainable params: {res.trainable_params:,}   {t.tokens_per_second:.0f} tok/s")
    print(plan_table(res.plan))
    print(res.memory_table())
    print(f"saved to {res.out_dir} (adapter/, plan.json{'' if args.no_export else ', merged/'})")
