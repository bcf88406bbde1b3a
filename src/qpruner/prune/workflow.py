"""Prune a checkpoint end to end: load, draw calibration samples, prune, save atomically."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch

from qpruner.atomic_dir import replace_dir
from qpruner.checkpoint import load_base_model, load_tokenizer, save_pruned, stored_layer_shapes
from qpruner.errors import QPrunerError
from qpruner.prune.calibration import calibration_samples
from qpruner.prune.config import PruneConfig, layer_targets
from qpruner.prune.pruner import PruneResult, prune_model


def prepare_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse to clobber earlier results unless asked: a run must never lose finished work."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise QPrunerError(f"output {out} already exists and is not empty; pass --overwrite to replace it")


def prune_checkpoint(
    model_src: str | Path,
    out: str | Path,
    config: PruneConfig,
    calib_data: str | Path | None = None,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    overwrite: bool = False,
    progress: bool = True,
) -> PruneResult:
    """Prune ``model_src`` and write model, tokenizer and ``pruning.json`` to ``out``.

    Everything is validated (config, output dir, calibration text) before the model is
    loaded, and the result is written to a temporary sibling directory that is renamed into
    place, so a crash leaves either the old output or the new one, never half of one.
    """
    out = Path(out)
    prepare_out_dir(out, overwrite)
    if config.needs_gradients and calib_data is None:
        raise QPrunerError(f"importance {config.importance!r} needs calibration text: pass --calib-data FILE")
    shapes = stored_layer_shapes(model_src)
    if shapes is not None:
        layer_targets(config, shapes)  # a ratio that empties a layer fails here, before loading
    model = load_base_model(model_src, dtype=dtype, device=device)
    tokenizer = load_tokenizer(model_src)
    samples = None
    if config.needs_gradients:
        samples = calibration_samples(calib_data, tokenizer, config.n_samples, config.seq_len, config.seed)
    result = prune_model(model, config, samples, progress=progress)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_pruned(model, tmp, tokenizer, extra={"source": str(model_src), "prune_config": config.to_dict()})
        (tmp / "pruning.json").write_text(json.dumps(result.to_dict(), indent=1))
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result
