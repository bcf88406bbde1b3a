"""``qpruner prune``: structured pruning (LLM-Pruner style) of a LLaMA-layout model."""

from __future__ import annotations

import argparse

from qpruner.cli.common import add_runtime_flags
from qpruner.cli.flags import add_config_flags, config_from_args
from qpruner.preflight import Checks

PRUNE_CONFIG = "qpruner.prune.config:PruneConfig"
CHECKS = Checks(models=("model",), inputs=("calib_data",), out_dir="out")


def add_parser(sub) -> None:
    p = sub.add_parser("prune", help="structured pruning (LLM-Pruner style) of a LLaMA-layout model")
    p.add_argument("--model", required=True, help="model dir, hub id, catalog name (smollm2-135m) or .gguf")
    p.add_argument("--out", required=True, help="output directory (safetensors + config + tokenizer)")
    p.add_argument("--calib-data", help="calibration text: file, saved dataset dir or hf:ID[:CONFIG][@SPLIT]")
    add_config_flags(p, PRUNE_CONFIG, exclude=("micro_batch",))
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out directory")
    add_runtime_flags(p)


def run(args: argparse.Namespace) -> None:
    from qpruner.device import resolve_device, resolve_dtype
    from qpruner.eval.size import format_shape_table
    from qpruner.prune.config import PruneConfig
    from qpruner.prune.workflow import prune_checkpoint
    from qpruner.units import format_bytes

    config = config_from_args(PruneConfig, args)
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
