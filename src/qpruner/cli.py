"""Command line: a thin layer over the Python API. Errors a user caused print one line."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

from qpruner.errors import QPrunerError


def _ratios(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from exc


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _add_runtime(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, ...")
    p.add_argument(
        "--dtype", default="auto", help="auto (bf16 on CUDA, checkpoint dtype on CPU), fp32, bf16, fp16"
    )
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def build_parser() -> argparse.ArgumentParser:
    from qpruner.prune.config import HEAD_MODES, IMPORTANCE_METHODS, PruneConfig

    d = PruneConfig()
    parser = argparse.ArgumentParser(prog="qpruner", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prune", help="structured pruning (LLM-Pruner style) of a LLaMA-layout model")
    p.add_argument("--model", required=True, help="model directory or hub id")
    p.add_argument("--out", required=True, help="output directory (safetensors + config + tokenizer)")
    p.add_argument(
        "--ratio", type=float, default=d.ratio, help="fraction of heads and channels removed per layer"
    )
    p.add_argument("--attn-ratio", type=float, help="override --ratio for attention heads")
    p.add_argument("--mlp-ratio", type=float, help="override --ratio for MLP channels")
    p.add_argument("--layer-start", type=int, default=d.layer_start, help="first pruned layer (default 3)")
    p.add_argument(
        "--layer-end", type=int, default=d.layer_end, help="end of pruned layers, exclusive; <0 from end"
    )
    p.add_argument(
        "--layer-ratios", type=_ratios, help="comma-separated ratio per layer (overrides the above)"
    )
    p.add_argument("--importance", choices=IMPORTANCE_METHODS, default=d.importance)
    p.add_argument("--calib-data", help="calibration text: file, saved dataset dir or hf:NAME/CONFIG@SPLIT")
    p.add_argument("--n-samples", type=int, default=d.n_samples)
    p.add_argument("--seq-len", type=int, default=d.seq_len)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument(
        "--head-mode",
        choices=HEAD_MODES,
        default=d.head_mode,
        help="group: remove a KV head with its query heads; query: query heads within groups",
    )
    p.add_argument(
        "--channel-multiple",
        type=int,
        default=d.channel_multiple,
        help="keep MLP widths a multiple of this (8 or 64 for GPU kernels)",
    )
    p.add_argument(
        "--grad-chunk-layers", type=int, help="score this many layers per gradient pass (less memory)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out directory")
    _add_runtime(p)

    e = sub.add_parser("eval", help="size, per-layer shapes, perplexity and zero-shot accuracy of a model")
    e.add_argument("--model", required=True)
    e.add_argument(
        "--ppl", action="append", default=[], help="text file, saved dataset dir or hf:NAME/CONFIG@SPLIT"
    )
    e.add_argument("--ctx-len", type=int, help="window length (default: model context, at most 2048)")
    e.add_argument("--stride", type=int, help="window step (default: ctx-len, non-overlapping)")
    e.add_argument("--batch-size", type=int, default=4)
    e.add_argument("--max-tokens", type=int, help="score only the first N tokens")
    e.add_argument(
        "--tasks",
        type=_names,
        default=[],
        help="comma-separated lm-eval tasks, e.g. wikitext_cloze (shipped) or boolq,piqa (need the hub)",
    )
    e.add_argument("--task-dir", help="folder of extra lm-eval task YAMLs (data paths relative to each YAML)")
    e.add_argument("--limit", type=int, help="score only the first N documents of each task (quick checks)")
    e.add_argument("--num-fewshot", type=int, default=0, help="in-context examples per question (default 0)")
    e.add_argument("--json", help="also write the report as JSON here")
    _add_runtime(e)

    r = sub.add_parser("reference", help="train (or reuse) the project's small reference LLaMA model")
    r.add_argument("--corpus-dir", help="folder with valid.txt (train) and test.txt (eval)")
    r.add_argument("--cache-dir", help="cache root (default $QPRUNER_CACHE or ~/.cache/qpruner)")
    r.add_argument("--force", action="store_true", help="retrain even if cached")
    r.add_argument("--no-progress", action="store_true")
    _add_recover_parsers(sub)
    return parser


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


def _add_recover_parsers(sub) -> None:
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


def _cmd_prune(args: argparse.Namespace) -> None:
    from qpruner.device import resolve_device, resolve_dtype
    from qpruner.eval.size import format_bytes, format_shape_table
    from qpruner.prune.config import PruneConfig
    from qpruner.prune.workflow import prune_checkpoint

    # Every PruneConfig field that has a flag of the same name comes from that flag.
    config = PruneConfig(
        **{f.name: getattr(args, f.name) for f in fields(PruneConfig) if hasattr(args, f.name)}
    )
    device = resolve_device(args.device)
    result = prune_checkpoint(
        args.model,
        args.out,
        config,
        args.calib_data,
        dtype=resolve_dtype(args.dtype, device),
        device=device,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    pct = 100.0 * (1 - result.params_after / result.params_before)
    print(f"params: {result.params_before:,} -> {result.params_after:,} (-{pct:.1f}%)")
    print(f"weight bytes: {format_bytes(result.bytes_before)} -> {format_bytes(result.bytes_after)}")
    print(format_shape_table([(lp.after, lp.before) for lp in result.layers]))
    print(f"saved to {args.out} in {result.seconds:.1f}s")


def _cmd_eval(args: argparse.Namespace) -> None:
    from qpruner.device import resolve_device, resolve_dtype
    from qpruner.eval.report import evaluate
    from qpruner.eval.size import format_bytes

    device = resolve_device(args.device)
    report = evaluate(
        args.model,
        args.ppl,
        args.ctx_len,
        args.stride,
        args.batch_size,
        args.max_tokens,
        dtype=resolve_dtype(args.dtype, device),
        device=device,
        progress=not args.no_progress,
        tasks=args.tasks,
        task_dir=args.task_dir,
        limit=args.limit,
        num_fewshot=args.num_fewshot,
    )
    print(f"model: {report.model}")
    print(
        f"params: {report.size.params:,}   weight bytes: {report.size.weight_bytes:,} "
        f"({format_bytes(report.size.weight_bytes)})"
    )
    print(report.shape_table)
    for src, r in report.ppl.items():
        print(f"perplexity {r.ppl:.3f} on {src} ({r.tokens:,} tokens, ctx {r.ctx_len}, stride {r.stride})")
    if report.zeroshot:
        from qpruner.eval.zeroshot import format_scores

        print(format_scores(report.zeroshot))
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=1))


def _cmd_reference(args: argparse.Namespace) -> None:
    from qpruner.reference import build_reference

    res = build_reference(
        corpus_dir=args.corpus_dir, cache_dir=args.cache_dir, force=args.force, progress=not args.no_progress
    )
    state = "cached" if res.cached else f"trained in {res.train_seconds:.0f}s"
    print(f"reference model: {res.path} ({res.params:,} params, {state})")
    print(f"corpus: {res.corpus_name} at {res.corpus}")
    if res.corpus_name.startswith("pydoc_data"):
        print("note: WikiText-2 not found; trained on Python's help texts, so figures differ from the README")
    print(f"test perplexity: model {res.test_ppl:.2f}   unigram {res.unigram_ppl:.2f}")


def _plan_from_args(args: argparse.Namespace, device):
    from qpruner.lora.recover import default_dtype, uniform_plan
    from qpruner.plan import Plan

    if args.plan:
        return Plan.load(args.plan)
    dtype = default_dtype(device) if args.dtype == "auto" else args.dtype
    return uniform_plan(args.model, args.bits, args.rank, args.alpha, dtype, args.weight_format)


def _cmd_plan(args: argparse.Namespace) -> None:
    from transformers import AutoConfig

    from qpruner.device import resolve_device
    from qpruner.memory import estimate, format_memory_table

    plan = _plan_from_args(args, resolve_device("auto"))
    config = AutoConfig.from_pretrained(args.model)
    plan.validate(num_layers=config.num_hidden_layers)
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


def _cmd_finetune(args: argparse.Namespace) -> None:
    from qpruner.device import resolve_device
    from qpruner.lora.recover import finetune
    from qpruner.lora.train import TrainConfig

    device = resolve_device(args.device)
    plan = _plan_from_args(args, device)
    config = TrainConfig(
        epochs=args.epochs,
        steps=args.steps,
        batch_size=args.batch_size,
        micro_batch=args.micro_batch,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        cutoff_len=args.cutoff_len,
        train_on_inputs=not args.train_on_outputs_only,
        gradient_checkpointing=args.gradient_checkpointing,
        save_every=args.save_every,
        seed=args.seed,
    )
    res = finetune(
        args.model,
        args.data,
        args.out,
        plan,
        config,
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


COMMANDS = {
    "prune": _cmd_prune,
    "eval": _cmd_eval,
    "reference": _cmd_reference,
    "plan": _cmd_plan,
    "finetune": _cmd_finetune,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "no_progress", False):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    try:
        COMMANDS[args.command](args)
    except QPrunerError as exc:
        print(f"qpruner: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("qpruner: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
