"""``qpruner eval``: size, per-layer shapes, perplexity and zero-shot accuracy of a model."""

from __future__ import annotations

import argparse
import json

from qpruner.cli.common import add_runtime_flags, write_atomically
from qpruner.cli.flags import add_config_flags, config_from_args
from qpruner.preflight import Checks

EVAL_CONFIG = "qpruner.eval.evaluate:EvalConfig"
CHECKS = Checks(models=("model",), inputs=("ppl", "task_dir", "task_data"), out_files=("json",))


def add_parser(sub) -> None:
    e = sub.add_parser("eval", help="size, per-layer shapes, perplexity and zero-shot accuracy of a model")
    e.add_argument(
        "--model",
        required=True,
        help="model dir (pruned, recovered, HF), hub id, catalog name or .gguf",
    )
    add_config_flags(e, EVAL_CONFIG)
    e.add_argument("--json", help="also write the report as JSON here")
    add_runtime_flags(e)


def run(args: argparse.Namespace) -> None:
    from qpruner.checkpoint import load_tokenizer
    from qpruner.device import resolve_device, resolve_dtype
    from qpruner.eval.evaluate import EvalConfig, evaluate_model
    from qpruner.loader import load_model
    from qpruner.units import format_bytes

    device = resolve_device(args.device)
    cfg = config_from_args(EvalConfig, args, progress=not args.no_progress)
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
        write_atomically(args.json, json.dumps(report.to_dict(), indent=1))
