"""Command line: a thin layer over the Python API. Errors a user caused print one line."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

from qpruner.cli.recover import RECOVER_COMMANDS, add_recover_parsers, add_run_parser
from qpruner.cli.search import SEARCH_COMMANDS, add_search_parsers
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
    add_recover_parsers(sub)
    add_run_parser(sub)
    add_search_parsers(sub)
    return parser


def _cmd_prune(args: argparse.Namespace) -> None:
    from qpruner.device import resolve_device, resolve_dtype
    from qpruner.eval.size import format_shape_table
    from qpruner.units import format_bytes
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
    from qpruner.checkpoint import load_tokenizer
    from qpruner.device import resolve_device, resolve_dtype
    from qpruner.eval.evaluate import EvalConfig, evaluate_model
    from qpruner.loader import load_model
    from qpruner.units import format_bytes

    device = resolve_device(args.device)
    cfg = EvalConfig(
        ppl_sources=args.ppl,
        ctx_len=args.ctx_len,
        stride=args.stride,
        batch_size=args.batch_size,
        max_tokens=args.max_tokens,
        tasks=args.tasks,
        task_dir=args.task_dir,
        limit=args.limit,
        num_fewshot=args.num_fewshot,
        progress=not args.no_progress,
    )
    cfg.tasks = cfg.check()
    model = load_model(args.model, dtype=resolve_dtype(args.dtype, device), device=device)
    tokenizer = load_tokenizer(args.model) if (cfg.ppl_sources or cfg.tasks) else None
    report = evaluate_model(model, tokenizer, cfg)
    report.model = args.model
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


COMMANDS = {
    "prune": _cmd_prune,
    "eval": _cmd_eval,
    "reference": _cmd_reference,
    **RECOVER_COMMANDS,
    **SEARCH_COMMANDS,
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
