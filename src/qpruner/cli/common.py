"""Flags several commands share, so each has one name and one meaning everywhere."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

DTYPE_HELP = "weights' dtype: auto (bf16 on CUDA, the checkpoint's on CPU), fp32, bf16, fp16"


def add_runtime_flags(
    p: argparse.ArgumentParser, *, dtype_help: str | None = DTYPE_HELP, loads_weights: bool = True
) -> None:
    """``--device``, ``--dtype`` (where the command has one), ``--no-progress``, ``--allow-pickle``."""
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, ...")
    if dtype_help:
        p.add_argument("--dtype", default="auto", help=dtype_help)
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    if loads_weights:
        p.add_argument(
            "--allow-pickle",
            action="store_true",
            help="also load pytorch_model.bin / adapter_model.bin where a directory has no safetensors "
            "(a pickle can run code: only for files you trust)",
        )


def write_atomically(path: str | Path, text: str) -> Path:
    """Write ``text`` to a temporary file beside ``path`` and rename it: never half a file."""
    final = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", dir=final.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return final
