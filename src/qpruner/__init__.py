"""qpruner: prune, quantize and recover LLaMA-layout language models."""

from qpruner.checkpoint import load_model, load_pruned, load_tokenizer, save_pruned
from qpruner.errors import QPrunerError
from qpruner.prune import PruneConfig, PruneResult, calibration_samples, prune_model

__version__ = "0.1.0"

__all__ = [
    "PruneConfig",
    "PruneResult",
    "QPrunerError",
    "calibration_samples",
    "load_model",
    "load_pruned",
    "load_tokenizer",
    "prune_model",
    "save_pruned",
]
